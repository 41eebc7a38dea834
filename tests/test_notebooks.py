"""Executes every notebook in notebooks/ top to bottom at small settings.

Each notebook runs in a fresh kernel of this interpreter with POLYJAX_SMOKE=1
(its own switch to tiny settings), the repository root as working directory and
on PYTHONPATH, so the notebooks cannot rot while the code changes.
"""

import os
import pathlib

import nbclient
import nbformat
import pytest
from jupyter_client.kernelspec import NATIVE_KERNEL_NAME
import subprocess_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
  assert {"quickstart.ipynb", "figure1.ipynb"} <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path):
  nb = nbformat.read(path, as_version=4)
  # Every notebook trains: its runs must be deterministic on a GPU, as the commands'.
  nb.cells.append(nbformat.v4.new_code_cell(
      "import os\nprint('XLA_FLAGS=' + os.environ.get('XLA_FLAGS', ''))"))
  env = dict(os.environ, POLYJAX_SMOKE="1", MPLBACKEND="Agg", TMPDIR=str(tmp_path),
             PYTHONPATH=subprocess_env.pythonpath())
  client = nbclient.NotebookClient(
      nb, timeout=300, kernel_name=NATIVE_KERNEL_NAME,
      resources={"metadata": {"path": str(ROOT)}})
  client.execute(env=env)
  errors = [out for cell in nb.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if out.get("output_type") == "error"]
  assert not errors
  assert all(cell.get("execution_count") for cell in nb.cells if cell.cell_type == "code")
  printed = "".join(out.get("text", "") for out in nb.cells[-1].outputs)
  assert "--xla_gpu_deterministic_ops=true" in printed.split("XLA_FLAGS=")[1]
