"""The slurm launcher against a real one-node SLURM cluster (tests/slurm_cluster.py).

A small digits study (2 cells, 2 lrs, 1 batch size, 2 seeds) runs once with the
local launcher (`reference`); through SLURM it must end with the same report, a
rerun must submit nothing, a task cancelled mid-way must be reported with its log
and completed, exactly, by the rerun, a task preempted mid-way must be requeued
and end, exactly, as if never stopped, and a rerun after the launcher itself was
killed must wait for its tasks rather than submit them again. Where the cluster cannot be started the tests
fail with the reason.
"""

import json
import pathlib
import subprocess
import sys
import time

import pytest

from polyjax import launch, study
import slurm_cluster
import subprocess_env

REPO = pathlib.Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "configs" / "digits_poly.py")
# Long enough that a task can be cancelled between two of its checkpoints.
SMALL = {"num_epochs": 100, "eval_every_epochs": 10, "checkpoint_every_epochs": 10,
         "model.hidden": 16, "test_on_best": False, "wandb.mode": "disabled"}
STUDY = {
    "title": "digits through a launcher",
    "protocol": {"lrs": [0.03, 0.1], "batch_sizes": [64], "at": "last", "seeds": 2},
    "table": {"columns": ["IW", "IW-ES"], "paired": [["CE", "Poly"]]},
    "cells": [{"name": name, "config": DIGITS, "row": row, "column": "IW",
               "overrides": {**SMALL, "loss.name": name}}
              for name, row in (("ce", "CE"), ("poly", "Poly"))],
}
REPORT_FILES = ("report.md", "report.tex", "table.csv", "ce/selection.json",
                "poly/selection.json")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
  try:
    c = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
  except slurm_cluster.ClusterError as e:
    pytest.fail(f"no SLURM cluster for the slurm launcher's tests: {e}", pytrace=False)
  yield c
  c.stop()


@pytest.fixture(scope="module")
def study_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("study") / "digits_launch.py"
  path.write_text(f"def get_study():\n  return {STUDY!r}\n")
  return str(path)


@pytest.fixture(scope="module")
def reference(study_file, tmp_path_factory):
  """The study with the local launcher, in this process (the tests' 8 CPU devices)."""
  workdir = tmp_path_factory.mktemp("local")
  s = study.load_study(study_file)
  study.run_study(s, workdir, study.prepare(s, {}), out=lambda line: None)
  return workdir


def command(study_file, workdir, *flags):
  return [sys.executable, "-m", "polyjax.study", f"--study={study_file}",
          f"--workdir={workdir}", "--launcher=slurm", *flags]


def run(cluster, argv):
  # The tests' 8 CPU devices (XLA_FLAGS) reach the tasks through sbatch's environment.
  env = {**subprocess_env.env(JAX_PLATFORMS="cpu"), "SLURM_CONF": cluster.env["SLURM_CONF"]}
  return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def same_report(workdir: pathlib.Path, reference: pathlib.Path) -> None:
  for name in REPORT_FILES:
    assert (workdir / name).read_text() == (reference / name).read_text(), name


def submitted(stdout: str) -> list[str]:
  return [line for line in stdout.splitlines() if "submitted" in line]


def test_a_study_through_slurm_reports_what_the_local_launcher_does(cluster, study_file,
                                                                     reference, tmp_path):
  workdir = tmp_path / "slurm"
  done = run(cluster, command(study_file, workdir))
  assert done.returncode == 0, done.stderr[-3000:]
  same_report(workdir, reference)
  # One task per group: per stage, one group per cell (its lrs or seeds stacked).
  lines = submitted(done.stdout)
  assert len(lines) == 2 and all("submitted 2 groups as SLURM job array" in x for x in lines)
  logs = sorted((workdir / launch.LOG_FOLDER).glob("*_log.out"))
  assert len(logs) == 4, logs
  again = run(cluster, command(study_file, workdir))
  assert again.returncode == 0, again.stderr[-3000:]
  assert submitted(again.stdout) == []  # Nothing left to train: nothing submitted.
  same_report(workdir, reference)


def running_task(cluster) -> str | None:
  for line in cluster.run("squeue", "--noheader", "--array", "--format=%i %T").splitlines():
    job, state = line.split()
    if state == "RUNNING":
      return job
  return None


def start_and_signal(cluster, study_file, workdir, *scancel_flags):
  """Starts the study through SLURM and, once the first task's members have a
  checkpoint and more epochs to go, signals that task (`scancel`); returns the
  study's process and the task's id."""
  env = {**subprocess_env.env(JAX_PLATFORMS="cpu"), "SLURM_CONF": cluster.env["SLURM_CONF"]}
  proc = subprocess.Popen(command(study_file, workdir), cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 600
  while True:
    if proc.poll() is not None or time.time() > deadline:
      proc.kill()
      pytest.fail(f"the study ended before a task was signalled: {proc.communicate()}")
    # Rows of members still training: the running task's (tasks run one at a time).
    rows = [json.loads(line) for p in workdir.glob("*/stage1/*/metrics.jsonl")
            if not (p.parent / "summary.json").exists()
            for line in p.read_text().splitlines() if line.strip()]
    job = running_task(cluster)
    if job and any(r.get("epoch", 0) >= 20 for r in rows):
      cluster.run("scancel", *scancel_flags, job)
      return proc, job
    time.sleep(0.05)


def test_a_cancelled_task_is_reported_and_the_rerun_completes_it_exactly(
    cluster, study_file, reference, tmp_path):
  workdir = tmp_path / "slurm"
  proc, cancelled = start_and_signal(cluster, study_file, workdir)
  try:
    out, err = proc.communicate(timeout=900)
  finally:
    proc.kill()
  assert proc.returncode == 1, err[-3000:]
  failed = [line for line in out.splitlines() if "did not finish" in line]
  assert len(failed) == 1 and f"task {cancelled} was stopped by SIGTERM" in failed[0], out
  assert str(workdir / launch.LOG_FOLDER) in failed[0]  # Its log's path.
  cell = failed[0].split("did not finish: ")[1].split()[0]
  other = ({"ce", "poly"} - {cell}).pop()
  summaries = [json.loads(p.read_text()) for p in workdir.glob(f"{cell}/stage1/*/summary.json")]
  assert {s["status"] for s in summaries} == {"interrupted"}  # Stopped mid-way.
  assert len(list(workdir.glob(f"{other}/stage2/*/summary.json"))) == 2  # The rest went on.
  assert "rerun the same command" in err and not (workdir / "report.md").exists()
  again = run(cluster, command(study_file, workdir))
  assert again.returncode == 0, again.stderr[-3000:]
  # Only the cancelled cell's stage 1, then its stage 2.
  assert [x.split("submitted ")[1].split(" as")[0] for x in submitted(again.stdout)] == [
      "1 group", "1 group"], again.stdout
  same_report(workdir, reference)


def test_a_preempted_task_is_requeued_and_ends_as_if_never_stopped(
    cluster, study_file, reference, tmp_path):
  workdir = tmp_path / "slurm"
  # SIGUSR2: what submitit has SLURM send before a time limit, and on preemption.
  proc, job = start_and_signal(cluster, study_file, workdir, "--signal=USR2")
  try:
    deadline = time.time() + 120
    while "PENDING" not in cluster.run("squeue", "--noheader", "--array", "--format=%T",
                                       f"--jobs={job}"):
      assert time.time() < deadline, "the task was not requeued"
      time.sleep(0.1)
    # SLURM holds a requeued job back for a while; start it now.
    cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    out, err = proc.communicate(timeout=900)
  finally:
    proc.kill()
  assert proc.returncode == 0, err[-3000:]
  log = (workdir / launch.LOG_FOLDER / f"{job}_0_log.err").read_text()
  assert "SIGUSR2 received: stopping at the end of this epoch" in log
  assert f"Requeued job {job}" in log
  resumed = [line for line in (workdir / launch.LOG_FOLDER / f"{job}_0_log.out").read_text()
             .splitlines() if "members together" in line]
  assert len(resumed) == 2 and resumed[0].endswith("from epoch 0"), resumed
  assert not resumed[1].endswith("from epoch 0")  # The requeued task resumed.
  same_report(workdir, reference)


def test_a_rerun_after_the_launcher_was_killed_waits_for_its_tasks(
    cluster, study_file, reference, tmp_path):
  workdir = tmp_path / "slurm"
  proc, job = start_and_signal(cluster, study_file, workdir, "--signal=CONT")  # A no-op.
  proc.kill()  # SIGKILL: the launcher dies; its array stays queued and running.
  proc.communicate()
  assert running_task(cluster) == job
  again = run(cluster, command(study_file, workdir))
  assert again.returncode == 0, again.stderr[-3000:]
  # The signalled task may end while the rerun starts; the second waits for its turn.
  waiting = [x for x in again.stdout.splitlines() if "still queued from an earlier" in x]
  assert len(waiting) == 1 and f"{job.split('_')[0]}_1)" in waiting[0], again.stdout
  assert len(submitted(again.stdout)) == 1  # Stage 2 only: stage 1 was not submitted again.
  same_report(workdir, reference)
