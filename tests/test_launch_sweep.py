"""scripts/launch_sweep.py: grid -> polyjax.main commands, local runs, wandb sweep file."""

import importlib.util
import json
import pathlib
import shlex

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/digits_poly.py"


@pytest.fixture(scope="module")
def launch():
  spec = importlib.util.spec_from_file_location("launch_sweep",
                                                REPO / "scripts" / "launch_sweep.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_print_expands_the_grid(launch, capsys, monkeypatch):
  monkeypatch.chdir(REPO)
  assert launch.main([f"--config={CONFIG}", "--workdir=/tmp/x", "--grid=lr=0.01,0.1",
                      "--grid=seed=0,1,2", "--config.num_epochs=3"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 6
  argv = shlex.split(lines[-1])
  assert argv[1:3] == ["-m", "polyjax.main"]
  assert "--workdir=/tmp/x/lr=0.1,seed=2" in argv
  assert {"--config.lr=0.1", "--config.seed=2", "--config.num_epochs=3"} <= set(argv)


def test_config_sweep_and_bad_grid(launch, capsys, monkeypatch):
  monkeypatch.chdir(REPO)
  assert launch.main([f"--config={CONFIG}"]) == 0  # digits_poly.sweep(): 2 x 2 x 4.
  assert len(capsys.readouterr().out.splitlines()) == 16
  assert launch.main([f"--config={CONFIG}", "--grid=lr=fast"]) == 2
  assert "config.lr" in capsys.readouterr().err


def test_wandb_sweep_file(launch, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  out = tmp_path / "sweep.yaml"
  assert launch.main([f"--config={CONFIG}", "--mode=wandb", f"--wandb_file={out}",
                      "--grid=lr=0.01,0.1", "--grid=loss.alpha=1,2"]) == 0
  text = out.read_text()
  assert "method: grid" in text and "  - ${args}" in text
  assert "  config.lr:\n    values: [0.01, 0.1]" in text
  assert "  config.loss.alpha:\n    values: [1.0, 2.0]" in text


def test_local_runs_each_point_and_skips_finished(launch, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(REPO)
  monkeypatch.setenv("PYTHONPATH", str(REPO))
  args = [f"--config={CONFIG}", f"--workdir={tmp_path}", "--mode=local", "--parallel=2",
          "--grid=seed=0,1", "--config.num_epochs=1", "--config.model.hidden=16"]
  assert launch.main(args) == 0
  for seed in (0, 1):
    summary = json.loads((tmp_path / f"seed={seed}" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 1
    config = json.loads((tmp_path / f"seed={seed}" / "config.json").read_text())
    assert config["seed"] == seed and config["model"]["hidden"] == 16
  capsys.readouterr()
  assert launch.main(args) == 0
  assert capsys.readouterr().out.count("already finished") == 2
