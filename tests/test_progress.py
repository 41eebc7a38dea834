"""What runs and sweeps show while they train (polyjax.progress): a tqdm bar on a
terminal, plain per-epoch lines in a pipe or a log; the sweep's account of its groups
and of the CPU cores it leaves idle."""

import fcntl
import io
import os
import pathlib
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from polyjax import grid as grid_lib
from polyjax import progress, sweep
import subprocess_env

REPO = pathlib.Path(__file__).resolve().parents[1]
MAIN = [sys.executable, "-m", "polyjax.main", "--config=configs/digits_poly.py",
        "--config.num_epochs=3", "--config.model.hidden=16"]
# The bar's last frame: count, percentage, elapsed<ETA, rate, then the metrics.
FINAL_BAR = re.compile(
    r"epoch 3/3 100%\|\S+\| \[\d\d:\d\d<00:00, +[\d.]+(epoch/s|s/epoch), "
    r"train/objective=[\d.]+, val/reweighted_acc=[\d.]+, test/reweighted_acc=[\d.]+\]")
# A line at the start of a line, or after tqdm has cleared the bar ("\r" + spaces + "\r").
EPOCH_LINE = re.compile(r"(?:^|\r)epoch (\d+)/3  step \d+  train/objective", re.M)


def _env(**overrides):
  return subprocess_env.env(WANDB_MODE="disabled", **overrides)


def _terminal(columns=200, rows=40):
  """A pseudo-terminal of that size: (master fd, slave fd)."""
  master, slave = os.openpty()
  fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
  return master, slave


def _read_all(master: int, proc: subprocess.Popen, timeout: float) -> str:
  """Everything written to the terminal until the process has exited and closed it."""
  chunks, deadline = [], time.monotonic() + timeout
  while time.monotonic() < deadline:
    ready, _, _ = select.select([master], [], [], 1.0)
    if not ready:
      if proc.poll() is not None:
        break
      continue
    try:
      chunk = os.read(master, 65536)
    except OSError:  # EIO: every writer has closed the terminal.
      break
    if not chunk:
      break
    chunks.append(chunk)
  else:
    proc.kill()
    raise TimeoutError(b"".join(chunks).decode(errors="replace")[-2000:])
  os.close(master)
  proc.wait(timeout=60)
  # The terminal turns "\n" into "\r\n"; what is left as "\r" is the bar redrawing.
  return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


def _drain(master: int) -> bytes:
  """What is waiting on the terminal (its writers done), then closes it."""
  out = b""
  try:
    while select.select([master], [], [], 0.5)[0]:
      chunk = os.read(master, 65536)
      if not chunk:
        break
      out += chunk
  except OSError:  # EIO: the writing side is closed and everything has been read.
    pass
  os.close(master)
  return out


def _run_in_terminal(cmd, env, *, timeout=600, preexec_fn=None):
  """Runs `cmd` with stdout and stderr on a pseudo-terminal: (status, output)."""
  master, slave = _terminal()
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=slave,
                          stderr=slave, preexec_fn=preexec_fn)
  os.close(slave)
  out = _read_all(master, proc, timeout)
  return proc.returncode, out


# ----------------------------------------------------------------------------
# The Progress class alone.


def test_lines_without_a_terminal_every_evaluated_epoch_or_every_nth():
  out = io.StringIO()
  shown = progress.Progress(6, log_every=0, stream=out)
  assert not shown.interactive
  for epoch in range(1, 7):
    shown.epoch(epoch, bar_text="x", line=f"epoch {epoch}/6")
  shown.close()
  assert out.getvalue() == "".join(f"epoch {e}/6\n" for e in range(1, 7))

  out = io.StringIO()  # Every 2nd evaluated epoch (evaluated every 2) and the last.
  with progress.Progress(7, log_every=2, eval_every=2, stream=out) as shown:
    for epoch in range(1, 8):
      evaluated = epoch % 2 == 0 or epoch == 7
      shown.epoch(epoch, line=f"epoch {epoch}/7" if evaluated else None)
  assert out.getvalue() == "epoch 4/7\nepoch 7/7\n"


def test_a_resumed_run_prints_the_epochs_an_uninterrupted_one_prints():
  out = io.StringIO()
  with progress.Progress(9, start_epoch=4, log_every=3, stream=out) as shown:
    for epoch in range(5, 10):
      shown.epoch(epoch, line=f"epoch {epoch}/9")
  assert out.getvalue() == "epoch 6/9\nepoch 9/9\n"


def test_other_processes_show_nothing():
  out = io.StringIO()
  with progress.Progress(2, enabled=False, stream=out) as shown:
    shown.epoch(1, line="epoch 1/2")
    shown.write("a message")
  assert out.getvalue() == ""


def test_negative_log_every_is_refused():
  with pytest.raises(ValueError, match="log_every"):
    progress.Progress(2, log_every=-1, stream=io.StringIO())


@pytest.mark.parametrize("rows, columns", [(40, 200), (0, 0)])
def test_a_terminal_gets_a_bar_with_lines_above_it_only_when_asked(rows, columns):
  """(0, 0): a pseudo-terminal that reports no size still gets its bar."""
  master, slave = os.openpty()
  fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
  with os.fdopen(slave, "w") as stream:
    for log_every in (0, 2):
      with progress.Progress(4, log_every=log_every, desc="epoch", stream=stream) as shown:
        assert shown.interactive
        for epoch in range(1, 5):
          shown.epoch(epoch, bar_text=progress.metrics_text({"train/objective": 0.5}),
                      line=f"line {log_every}:{epoch}")
  text = _drain(master).decode()
  assert re.search(r"epoch 4/4 100%\|.*\| \[.*epoch.*, train/objective=0.5000\]", text)
  assert "line 0:" not in text  # log_every=0: the bar alone.
  assert [l for l in re.findall(r"line 2:\d", text)] == ["line 2:2", "line 2:4"]


def test_tqdm_disabled_by_the_environment_falls_back_to_lines():
  # tqdm reads TQDM_* when it is imported: a process of its own.
  script = ("from polyjax import progress\n"
            "with progress.Progress(1) as shown:\n"
            "  assert not shown.interactive\n"
            "  shown.epoch(1, bar_text='x', line='epoch 1/1')\n")
  status, out = _run_in_terminal([sys.executable, "-c", script], _env(TQDM_DISABLE="1"),
                                 timeout=120)
  assert status == 0, out
  assert out == "epoch 1/1\n"


# ----------------------------------------------------------------------------
# polyjax.main on a terminal and in a pipe.


def test_main_on_a_terminal_shows_a_bar(tmp_path):
  status, out = _run_in_terminal(MAIN + [f"--workdir={tmp_path / 'run'}"], _env())
  assert status == 0, out
  assert FINAL_BAR.search(out), out
  assert "\r" in out  # Redrawn in place.
  assert not EPOCH_LINE.search(out), out  # --log_every=0: the bar alone.
  assert "polyjax: completed 3 epochs" in out.splitlines()[-1]


def test_main_on_a_terminal_with_log_every_prints_lines_above_the_bar(tmp_path):
  status, out = _run_in_terminal(
      MAIN + [f"--workdir={tmp_path / 'run'}", "--log_every=2"], _env())
  assert status == 0, out
  assert FINAL_BAR.search(out), out
  assert EPOCH_LINE.findall(out) == ["2", "3"]  # The 2nd evaluated epoch and the last.


def test_main_in_a_pipe_prints_plain_lines(tmp_path):
  proc = subprocess.run(MAIN + [f"--workdir={tmp_path / 'a'}"], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  assert "\r" not in proc.stdout and "\r" not in proc.stderr
  assert EPOCH_LINE.findall(proc.stdout) == ["1", "2", "3"]  # As before the bar.
  assert "val/reweighted_acc" in proc.stdout and "%|" not in proc.stdout

  proc = subprocess.run(MAIN + [f"--workdir={tmp_path / 'b'}", "--log_every=2"], cwd=REPO,
                        env=_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  assert EPOCH_LINE.findall(proc.stdout) == ["2", "3"]


def test_negative_log_every_is_one_line_and_status_2(tmp_path):
  proc = subprocess.run(MAIN + [f"--workdir={tmp_path / 'run'}", "--log_every=-1"],
                        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2
  assert len(proc.stderr.strip().splitlines()) == 1 and "log_every" in proc.stderr
  assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------
# The sweep: what it says before training, and a bar per group.


def _members(grid):
  from configs import digits_poly
  return grid_lib.expand(digits_poly.get_config(), grid)


def test_describe_groups_names_the_fields_that_split_the_grid():
  grid = {"seed": [0, 1, 2], "loss.name": ["poly", "ce"], "lr": [0.1, 0.2]}
  lines = grid_lib.describe_groups(_members(grid), list(grid))
  assert lines[0].startswith("12 members in 2 groups")
  assert "split by loss.name " in lines[0] and "stacked within a group: seed, lr" in lines[0]
  assert lines[1:] == ["group 1/2 (loss.name=poly): 6 members",
                       "group 2/2 (loss.name=ce): 6 members"]

  grid = {"seed": [0, 1], "lr": [0.1, 0.2]}
  assert grid_lib.describe_groups(_members(grid), list(grid)) == [
      "4 members in one compiled program (stacked: seed, lr)"]

  # loss.alpha is stacked for 'poly' but a constant of 'ldam''s program.
  grid = [{"loss.name": ["poly"], "loss.alpha": [1.0, 2.0]},
          {"loss.name": ["ldam"], "loss.alpha": [1.0, 2.0]}]
  lines = grid_lib.describe_groups(_members(grid), ["loss.name", "loss.alpha"])
  assert "split by loss.name, loss.alpha (for some members)" in lines[0]
  assert len(lines) == 1 + 3  # poly (2 members), ldam alpha=1, ldam alpha=2.

  lines = grid_lib.describe_groups(_members({"model.hidden": list(range(8, 20))}),
                                ["model.hidden"], most=3)
  assert len(lines) == 1 + 3 + 1 and lines[-1] == "... and 9 more groups (9 members)"


def test_idle_note_says_which_cores_are_idle_and_how_to_use_them():
  note = sweep.idle_note([9], [32], devices=1, platform="cpu", cores=2, count_from="auto")
  assert note.startswith("9 members train on 1 CPU device, leaving 1 of the 2 CPU cores")
  assert "divisible by 2 (e.g. 8 or 10 here)" in note and "--cpu_devices=2" in note
  # The environment fixed the count: the flag is not the way, the environment is.
  note = sweep.idle_note([3], [32], devices=1, platform="cpu", cores=4,
                         count_from="environment")
  assert "3 of the 4 CPU cores" in note and "JAX_NUM_CPU_DEVICES to 4" in note
  assert "--cpu_devices" not in note
  # Groups of 4 and 3 on 2 cores: 1 device; the second group is named.
  note = sweep.idle_note([4, 3], [32, 32], devices=1, platform="cpu", cores=2,
                         count_from="auto")
  assert note.startswith("group 1/2's 4 members train on 1 CPU device")
  # Every core busy: no note (also with more devices than cores, as in the tests).
  assert sweep.idle_note([8], [32], devices=2, platform="cpu", cores=2,
                         count_from="auto") is None
  assert sweep.idle_note([3], [32], devices=8, platform="cpu", cores=2,
                         count_from="environment") is None
  assert sweep.idle_note([1], [32], devices=1, platform="cpu", cores=1,
                         count_from="auto") is None
  # An accelerator: devices the group's mesh leaves out.
  note = sweep.idle_note([3], [12], devices=8, platform="gpu", cores=16, count_from="auto")
  assert note.startswith("3 members train on 4 GPU devices of 8")
  assert sweep.idle_note([8], [12], devices=8, platform="gpu", cores=16,
                         count_from="auto") is None


def test_sweep_on_a_terminal_explains_its_groups_idle_cores_and_shows_a_bar_per_group(
    tmp_path):
  """Two cores, no device count in the environment: 3 members per group make one CPU
  device (3 is not divisible by 2), which the sweep says, with how to use both."""
  cores = sorted(os.sched_getaffinity(0))
  if len(cores) < 2:
    pytest.skip("needs two usable cores")
  env = {k: v for k, v in _env().items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  status, out = _run_in_terminal(
      [sys.executable, "-m", "polyjax.sweep", "--config=configs/digits_poly.py",
       f"--workdir={tmp_path / 'w'}", "--grid=seed=0,1,2", "--grid=loss.name=poly,ce",
       "--config.num_epochs=1", "--config.model.hidden=16"], env,
      preexec_fn=lambda: os.sched_setaffinity(0, cores[:2]))
  assert status == 0, out
  assert ("polyjax.sweep: 6 members in 2 groups, one compiled program each, trained one "
          "after another: split by loss.name") in out, out
  assert "stacked within a group: seed" in out
  assert "polyjax.sweep: group 1/2 (loss.name=poly): 3 members\n" in out
  assert "polyjax.sweep: group 2/2 (loss.name=ce): 3 members\n" in out
  assert ("polyjax.sweep: note: group 1/2's 3 members train on 1 CPU device, leaving 1 of "
          "the 2 CPU cores this process may use mostly idle") in out, out
  assert "divisible by 2" in out and "--cpu_devices=2" in out
  # Before any training.
  assert out.index("note:") < out.index("training 3 members together")
  for group in ("group 1/2", "group 2/2"):
    assert re.search(group + r" \(3 members\) epoch 1/1 100%\|\S+\| \[.*(epoch/s|s/epoch), "
                     r"median train/objective=[\d.]+, val/reweighted_acc=[\d.]+, "
                     r"test/reweighted_acc=[\d.]+\]", out), out
  assert not re.search(r"(?:^|\r)epoch 1/1  3/3 members", out, re.M)  # The bar alone.
  assert "polyjax.sweep: 6 completed" in out
