"""Two processes on loopback, one CPU device each, train through the real CLI and
match one process with two devices; then the same two-process run resumes.

The single-process reference runs in this pytest process on a two-device mesh
(the first two of conftest's eight fake devices), the same global computation as
`XLA_FLAGS=--xla_force_host_platform_device_count=2` in a process of its own.
"""

import contextlib
import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np

from polyjax import checkpointing, experiment, placement, run_dir, train
import subprocess_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "digits_poly.py"
TIMEOUT_S = 240  # Per launch; the machine running the tests may be shared.
ATOL = 1e-4


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _config(num_epochs: int):
  spec = importlib.util.spec_from_file_location("digits_poly", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.num_epochs = num_epochs
  return config


def one_device_env() -> dict[str, str]:
  """The environment of a launched process: one CPU device (overriding, not appending
  to, conftest's eight) and this checkout on the path."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = subprocess_env.pythonpath()
  return env


@contextlib.contextmanager
def two_processes(command: list[str]):
  """Starts `command` + the distributed flags as processes 0 and 1 of one run on
  loopback (output piped, text); yields them; kills any still running at the end."""
  address = f"127.0.0.1:{_free_port()}"
  procs = []
  try:
    for i in range(2):
      procs.append(subprocess.Popen(
          command + [f"--coordinator_address={address}", "--num_processes=2",
                     f"--process_id={i}"],
          cwd=ROOT, env=one_device_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
          text=True))
    yield procs
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def run_two_processes(command: list[str]) -> list[str]:
  """Runs `command` as `two_processes`; asserts both succeed; returns their outputs."""
  with two_processes(command) as procs:
    outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {i} exited with {p.returncode}:\n{out[-3000:]}"
  return outputs


def _launch_two_processes(workdir: pathlib.Path, num_epochs: int) -> list[str]:
  """Runs the CLI as processes 0 and 1 of one run; returns their outputs."""
  return run_two_processes([sys.executable, "-m", "polyjax.main", f"--config={CONFIG}",
                            f"--workdir={workdir}", f"--config.num_epochs={num_epochs}"])


def _rows(workdir: pathlib.Path) -> dict[tuple[int, str], dict]:
  rows = {}
  for line in (workdir / run_dir.METRICS).read_text().splitlines():
    row = json.loads(line)
    key = (row["epoch"], row["split"])
    assert key not in rows, f"{key} written twice"
    rows[key] = row
  return rows


def _assert_close(got: dict, want: dict, what: str) -> None:
  assert got.keys() == want.keys(), what
  for k, v in want.items():
    if isinstance(v, (int, float)):
      np.testing.assert_allclose(got[k], v, rtol=0, atol=ATOL, err_msg=f"{what} {k}")
    else:
      assert got[k] == v, f"{what} {k}"


def test_two_processes_match_one_process_with_two_devices_and_resume(tmp_path):
  ref_dir = tmp_path / "one_process"
  ref = train.train_and_evaluate(_config(3), str(ref_dir),
                                 mesh=placement.make_mesh(jax.devices()[:2]))
  ref_rows = _rows(ref_dir)

  multi = tmp_path / "two_processes"
  outputs = _launch_two_processes(multi, num_epochs=2)
  assert "epoch 2/2" in outputs[0]
  assert "epoch" not in outputs[1], outputs[1]  # Only process 0 reports and writes.
  config = run_dir.read_json(multi / run_dir.CONFIG)
  assert (config["process_count"], config["device_count"]) == (2, 2)
  summary = run_dir.read_json(multi / run_dir.SUMMARY)
  assert summary["status"] == "completed" and summary["epochs_completed"] == 2
  rows = _rows(multi)
  assert sorted(rows) == sorted(k for k in ref_rows if k[0] <= 2)
  for key, row in rows.items():
    _assert_close(row, ref_rows[key], f"epoch {key[0]} {key[1]}")
  assert abs(summary["final"]["test/reweighted_acc"]
             - ref_rows[(2, "test")]["reweighted_acc"]) <= ATOL

  # Resume: both processes restore epoch 2 from Orbax and train epoch 3 only.
  outputs = _launch_two_processes(multi, num_epochs=3)
  assert "epoch 1/3" not in outputs[0] and "epoch 3/3" in outputs[0], outputs[0]
  summary = run_dir.read_json(multi / run_dir.SUMMARY)
  assert summary["epochs_completed"] == 3 and summary["steps"] == ref["steps"]
  rows = _rows(multi)
  assert sorted(rows) == sorted(ref_rows)
  for key, row in rows.items():
    _assert_close(row, ref_rows[key], f"epoch {key[0]} {key[1]}")
  _assert_close(summary["final"], ref["final"], "final")

  # The finished two-process run, reopened by one process with all 8 devices: complete,
  # so nothing is done; its checkpoint restores onto the new layout and evaluates the same.
  again = train.train_and_evaluate(_config(3), str(multi))
  assert again == run_dir.read_json(multi / run_dir.SUMMARY)
  assert again["steps"] == ref["steps"] and len(_rows(multi)) == len(ref_rows)
  exp = experiment.build(_config(3))
  ckpts = checkpointing.Checkpoints(multi / run_dir.CHECKPOINTS, read_only=True)
  epoch, state, _ = ckpts.restore_latest(like=exp.state)
  ckpts.close()
  assert epoch == 3
  _assert_close(experiment.evaluate(exp, state, experiment.eval_data(exp, _config(3))),
                {k: v for k, v in ref["final"].items()
                 if k not in train.TRAIN_ONLY_KEYS},  # training stats, not evaluated
                "re-evaluated")


def test_a_signal_to_one_process_stops_both_after_the_same_epoch(tmp_path):
  # SIGTERM reaches process 1 only (as when one host of a pod is preempted first).
  # Without agreeing, process 1 would stop and process 0 train on into a collective
  # that never completes; both must stop after the same epoch, save, and resume.
  import signal
  workdir = tmp_path / "run"
  with two_processes([sys.executable, "-u", "-m", "polyjax.main", f"--config={CONFIG}",
                      f"--workdir={workdir}", "--config.num_epochs=100000",
                      "--config.model.hidden=16"]) as procs:
    seen = []
    for line in procs[0].stdout:  # Process 0 reports every evaluated epoch.
      seen.append(line)
      if line.startswith("epoch 3/"):
        procs[1].send_signal(signal.SIGTERM)
        break
    outputs = ["".join(seen) + procs[0].communicate(timeout=TIMEOUT_S)[0],
               procs[1].communicate(timeout=TIMEOUT_S)[0]]
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 128 + signal.SIGTERM, f"process {i}: {p.returncode}\n{out[-3000:]}"
  summary = run_dir.read_json(workdir / run_dir.SUMMARY)
  assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
  stopped = summary["epochs_completed"]
  assert stopped >= 3 and f"after {stopped} epochs" in outputs[0], outputs[0][-2000:]
  assert f"after {stopped} epochs" in outputs[1], outputs[1][-2000:]
  epochs = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert epochs[-1] == stopped
