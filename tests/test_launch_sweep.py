"""scripts/launch_sweep.py: grid -> polyjax.main commands, and a wandb sweep file."""

import importlib.util
import json
import pathlib
import shlex
import subprocess
import sys

import pytest
import yaml
import subprocess_env

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
                      "--grid=lr=0.01,0.1", "--grid=loss.alpha=1,2",
                      "--config.data.data_dir=a dir: with 'quotes'"]) == 0
  sweep = yaml.safe_load(out.read_text())
  assert sweep["method"] == "grid" and sweep["name"] == "sweep"
  assert sweep["command"] == ["${env}", "python", "-m", "polyjax.main",
                              f"--config={CONFIG}",
                              "--config.data.data_dir=a dir: with 'quotes'", "${args}"]
  assert sweep["parameters"] == {"config.lr": {"values": [0.01, 0.1]},
                                 "config.loss.alpha": {"values": [1.0, 2.0]}}


def test_local_mode_is_gone_in_favour_of_the_sweep_launchers(launch, capsys):
  with pytest.raises(SystemExit):
    launch.main([f"--config={CONFIG}", "--mode=local"])
  assert "invalid choice: 'local'" in capsys.readouterr().err


def test_commands_share_a_compilation_cache_and_its_runs_equal_uncached_ones(
    launch, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(REPO)
  assert launch.main([f"--config={CONFIG}", f"--workdir={tmp_path}", "--grid=seed=0"]) == 0
  assert f"--compilation_cache_dir={tmp_path}/.compilation_cache" in \
      shlex.split(capsys.readouterr().out.splitlines()[0])
  assert launch.main([f"--config={CONFIG}", "--grid=seed=0", "--compilation_cache_dir="]) == 0
  assert "compilation_cache" not in capsys.readouterr().out
  # The real CLI: a run that fills the cache, one that reads it, one without it.
  monkeypatch.setenv("PYTHONPATH", subprocess_env.pythonpath())
  cache = tmp_path / "cache"
  common = [sys.executable, "-m", "polyjax.main", f"--config={CONFIG}",
            "--config.num_epochs=2", "--config.model.hidden=16"]
  for name, extra in (("a", [f"--compilation_cache_dir={cache}"]),
                      ("b", [f"--compilation_cache_dir={cache}"]), ("c", [])):
    subprocess.run(common + [f"--workdir={tmp_path / name}"] + extra, cwd=REPO, check=True,
                   capture_output=True, timeout=300)
    if name == "a":
      filled = sorted(p.name for p in cache.iterdir())
      assert filled  # The first run's programs.
  assert sorted(p.name for p in cache.iterdir()) == filled  # The second compiled nothing new.
  rows = {n: [json.loads(r) for r in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
          for n in "abc"}
  assert rows["a"] == rows["b"] == rows["c"] and len(rows["a"]) == 6  # Bit for bit.


def test_an_unwritable_compilation_cache_is_a_one_line_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  out = subprocess.run(
      [sys.executable, "-m", "polyjax.main", f"--config={CONFIG}",
       f"--workdir={tmp_path / 'run'}", f"--compilation_cache_dir={blocker / 'cache'}"],
      cwd=REPO, env=subprocess_env.env(), capture_output=True, text=True,
      timeout=300)
  assert out.returncode == 2
  assert out.stderr.strip().count("\n") == 0 and "--compilation_cache_dir" in out.stderr
  assert not (tmp_path / "run").exists()
