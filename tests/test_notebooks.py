"""Executes every notebook in notebooks/ top to bottom at small settings.

Each notebook runs in a fresh kernel of this interpreter with POLYJAX_SMOKE=1
(its own switch to tiny settings), started in notebooks/ as Jupyter starts it,
with the repository root on PYTHONPATH, so the notebooks cannot rot while the
code changes. quickstart.ipynb is short enough to run in full, so the result its
text states is checked on its own runs; study.ipynb runs the study command with
one-epoch runs and must show the report it wrote. Their shared setup cell, which finds or installs polyjax, is also
run alone with pip recorded instead of run: from a clone, outside one, with and
without polyjax installed.
"""

import importlib
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import nbclient
import nbformat
import pytest
from jupyter_client.kernelspec import NATIVE_KERNEL_NAME
import subprocess_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
_FIND_SPEC = importlib.util.find_spec  # Before the setup-cell tests patch it.


def test_there_are_notebooks():
  assert {"quickstart.ipynb", "figure1.ipynb", "study.ipynb"} <= {p.name for p in NOTEBOOKS}


def _displayed(nb):
  return [out["data"] for cell in nb.cells if cell.cell_type == "code"
          for out in cell.get("outputs", []) if out.get("output_type") == "display_data"]


def _check_study(nb, tmp_path):
  """The notebook ran the study command (in its temporary directory, one epoch per run)
  and shows the report it wrote: the text, then each figure."""
  (report,) = tmp_path.glob("polyjax-study-*/report.md")
  text = report.read_text().split("\n## Figures\n")[0]
  for part in ("--config.num_epochs=1", "seeds 1, 2, 3, 4, 5, 6, 7, 8, 9, 10",
               "## Results: each cell at its selected", "## Paired t-tests",
               "## Selected hyperparameters"):
    assert part in text
  shown = _displayed(nb)
  assert text in [d.get("text/markdown") for d in shown]
  assert sum("image/png" in d for d in shown) == 3


def _check_quickstart(nb, tmp_path):
  """The result its text states holds for the runs it trained, read from their run
  directories: every run interpolates, and the run it names ends highest."""
  text = "".join(c.source for c in nb.cells if c.cell_type == "markdown")
  (claimed,) = re.findall(r"\*\*([^*]+)\*\* ends with the\s+highest test balanced accuracy", text)
  names = {("poly", "reweighted"): "poly + IW", ("ce", "reweighted"): "CE + IW",
           ("ce", "none"): "CE"}
  acc = {}
  for run in tmp_path.glob("polyjax-quickstart-*/*"):
    config = json.loads((run / "config.json").read_text())
    final = json.loads((run / "summary.json").read_text())["final"]
    assert final["train/acc"] == 1.0
    acc[names[config["loss"]["name"], config["weighting"]["mode"]]] = (
        final["test/reweighted_acc"])
  assert len(acc) == 3 and claimed in acc
  assert acc[claimed] > max(v for k, v in acc.items() if k != claimed)


CHECKS = {"study.ipynb": _check_study, "quickstart.ipynb": _check_quickstart}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path):
  nb = nbformat.read(path, as_version=4)
  # Every notebook trains: its runs must be deterministic on a GPU, as the commands'.
  nb.cells.append(nbformat.v4.new_code_cell(
      "import os\nprint('XLA_FLAGS=' + os.environ.get('XLA_FLAGS', ''))"))
  env = dict(os.environ, POLYJAX_SMOKE="1", MPLBACKEND="Agg", TMPDIR=str(tmp_path),
             PYTHONPATH=subprocess_env.pythonpath())
  # A cell's limit: study.ipynb's study command takes about 80 s on 2 idle cores, and
  # several times that on a loaded machine.
  client = nbclient.NotebookClient(
      nb, timeout=900, kernel_name=NATIVE_KERNEL_NAME,
      resources={"metadata": {"path": str(ROOT / "notebooks")}})
  client.execute(env=env)
  errors = [out for cell in nb.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if out.get("output_type") == "error"]
  assert not errors
  assert all(cell.get("execution_count") for cell in nb.cells if cell.cell_type == "code")
  printed = "".join(out.get("text", "") for out in nb.cells[-1].outputs)
  assert "--xla_gpu_deterministic_ops=true" in printed.split("XLA_FLAGS=")[1]
  if path.name in CHECKS:
    CHECKS[path.name](nb, tmp_path)


def _code_cells(path):
  return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_notebooks_share_one_setup_cell():
  setups = {_code_cells(p)[0] for p in NOTEBOOKS}
  assert len(setups) == 1
  # Stdlib only: it runs before polyjax (and its dependencies) can be imported.
  assert "polyjax import" not in setups.pop()


def _run_setup(monkeypatch, cwd, *, installed, source=""):
  """Runs the setup cell in `cwd` with polyjax installed or not; returns the pip
  commands it ran (recorded, not run) and its namespace."""
  calls = []
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: (
      _FIND_SPEC(name, *args) if name != "polyjax" or installed else None))
  monkeypatch.setattr(subprocess, "check_call", lambda cmd, **_: calls.append(cmd[1:]))
  monkeypatch.setattr(sys, "path", list(sys.path))
  monkeypatch.setenv("POLYJAX_SOURCE", source)
  monkeypatch.chdir(cwd)
  namespace = {}
  exec(_code_cells(NOTEBOOKS[0])[0], namespace)
  return calls, namespace


def test_setup_from_a_clone_installs_it_if_missing(monkeypatch):
  calls, ns = _run_setup(monkeypatch, ROOT / "notebooks", installed=False)
  assert calls == [["-m", "pip", "install", "-q", "-e", str(ROOT)]]
  assert ns["REPO"] == ROOT and pathlib.Path.cwd() == ROOT
  calls, _ = _run_setup(monkeypatch, ROOT / "notebooks", installed=True)
  assert calls == []


def test_setup_outside_a_clone(monkeypatch, tmp_path):
  calls, ns = _run_setup(monkeypatch, tmp_path, installed=True)  # E.g. from a wheel.
  assert calls == [] and ns["REPO"] is None
  with pytest.raises(RuntimeError, match="POLYJAX_SOURCE"):
    _run_setup(monkeypatch, tmp_path, installed=False)
  calls, _ = _run_setup(monkeypatch, tmp_path, installed=False, source="git+https://x/polyjax")
  assert calls == [["-m", "pip", "install", "-q", "git+https://x/polyjax"]]


def test_quickstart_config_without_a_clone_is_the_config_file():
  (cell,) = [s for s in _code_cells(ROOT / "notebooks" / "quickstart.ipynb")
             if "def digits_poly" in s]
  namespace = {"importlib": importlib}
  exec(cell, namespace)
  configs = []
  for repo in (ROOT, None):
    namespace["REPO"] = repo
    configs.append(namespace["digits_poly"]().to_dict())
  assert configs[0] == configs[1]
