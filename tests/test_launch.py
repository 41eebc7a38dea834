"""polyjax.launch without a cluster: groups side by side in processes of their own
(submitit's LocalExecutor), a failed task reported with its log while the rest goes
on, and the launcher's settings checked before anything runs. The slurm launcher
against a real SLURM: tests/test_slurm.py."""

import json
import pathlib
import subprocess
import sys

import pytest

from polyjax import launch, study
from polyjax.errors import ConfigError
import subprocess_env

REPO = pathlib.Path(__file__).resolve().parents[1]
# Two groups (loss.name splits the program), two members each (lr is stacked).
SWEEP = ["--config=configs/digits_poly.py", "--grid=loss.name=ce,poly", "--grid=lr=0.03,0.1",
         "--config.num_epochs=3", "--config.model.hidden=16", "--config.wandb.mode=disabled",
         "--member_batch=1"]


def sweep(workdir, *flags):
  return subprocess.run([sys.executable, "-m", "polyjax.sweep", f"--workdir={workdir}",
                         *SWEEP, *flags], cwd=REPO, capture_output=True, text=True,
                        env=subprocess_env.env(JAX_PLATFORMS="cpu"), timeout=600)


def metrics(workdir: pathlib.Path) -> dict[str, list[dict]]:
  rows = {}
  for path in sorted(workdir.glob("*/metrics.jsonl")):
    rows[path.parent.name] = [{k: v for k, v in json.loads(line).items()
                               if k not in ("wall_seconds", "time")}
                              for line in path.read_text().splitlines()]
  return rows


@pytest.fixture(scope="module")
def one_after_another(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("local")
  done = sweep(workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir


def test_groups_side_by_side_train_what_one_after_another_does(one_after_another, tmp_path):
  done = sweep(tmp_path, "--side_by_side=2")
  assert done.returncode == 0, done.stderr[-3000:]
  assert "submitted 2 groups as 2 local processes side by side" in done.stdout
  assert "4 completed" in done.stdout
  # --member_batch=1: each member runs its own single-run program, wherever it runs.
  expected = metrics(one_after_another)
  assert len(expected) == 4 and metrics(tmp_path) == expected
  assert len(list((tmp_path / launch.LOG_FOLDER).glob("*_log.out"))) == 2


def test_a_failed_task_is_reported_with_its_log_and_the_rerun_trains_only_it(tmp_path):
  blocked = tmp_path / "loss.name=poly,lr=0.1"
  blocked.parent.mkdir(parents=True, exist_ok=True)
  blocked.write_text("not a run directory")  # The poly group's task cannot open it.
  done = sweep(tmp_path, "--side_by_side=2")
  assert done.returncode == 1
  failed = [line for line in done.stderr.splitlines() if "did not finish" in line]
  assert len(failed) == 1 and "group 2/2" in failed[0]  # loss.name=poly's group.
  assert "failed: " in failed[0] and str(tmp_path / launch.LOG_FOLDER) in failed[0], failed
  assert "rerun the same command" in done.stderr
  # The other group went on.
  assert {json.loads((tmp_path / n / "summary.json").read_text())["status"]
          for n in ("loss.name=ce,lr=0.03", "loss.name=ce,lr=0.1")} == {"completed"}
  blocked.unlink()
  again = sweep(tmp_path, "--side_by_side=2")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "submitted 1 group as 1 local process side by side" in again.stdout
  assert "4 completed" in again.stdout


@pytest.mark.parametrize("values, field", [
    ({"launcher": "pbs"}, "launcher"), ({"time_min": 0}, "time_min"),
    ({"gpus_per_task": -1}, "gpus_per_task"), ({"mem_gb": float("inf")}, "mem_gb"),
    ({"side_by_side": 0}, "side_by_side"), ({"partition": ""}, "partition"),
    ({"launcher": "slurm", "side_by_side": 2}, "side_by_side"), ({"nodes": 2}, "nodes")])
def test_bad_launcher_settings_are_one_line_errors_naming_the_field(values, field):
  with pytest.raises(ConfigError, match=f"^launcher.{field} ") as e:
    launch.Options.from_values(values, "launcher.")
  assert "\n" not in str(e.value)


def test_a_study_files_launcher_section_is_checked_before_anything_runs(tmp_path):
  path = tmp_path / "s.py"
  path.write_text("def get_study():\n  return {'protocol': {'lrs': [0.1], 'at': 'last', "
                  "'seeds': 1}, 'launcher': {'launcher': 'slurm', 'time_min': 'long'}, "
                  "'cells': [{'name': 'a', 'config': 'configs/digits_poly.py', 'row': 'r', "
                  "'column': 'c'}]}\n")
  with pytest.raises(study.StudyError, match=f"^study file {path}: launcher.time_min must "
                     "be an integer >= 1, got 'long'$"):
    study.load_study(str(path))
  done = subprocess.run([sys.executable, "-m", "polyjax.sweep", f"--workdir={tmp_path / 'w'}",
                         *SWEEP, "--launcher=slurm", "--side_by_side=2"], cwd=REPO,
                        capture_output=True, text=True, env=subprocess_env.env(), timeout=600)
  assert done.returncode == 2 and done.stderr.strip().splitlines() == [
      "polyjax.sweep: error: --side_by_side is for the local launcher; with slurm, each group "
      "is a task of its own (ask for fewer GPUs per task instead)"], done.stderr
  assert not (tmp_path / "w").exists()
