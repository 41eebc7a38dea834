"""TensorBoard event files: every run directory holds its metrics.jsonl values as
scalars, and a resumed run's curves equal an uninterrupted run's."""

import json
import pathlib
import shutil
import struct

import pytest
from tensorboardX.proto import event_pb2

from polyjax import run_dir, train


def small_config(num_epochs=3):
  from configs import digits_poly
  c = digits_poly.get_config()
  c.model.hidden = 16
  c.num_epochs = num_epochs
  c.checkpoint_every_epochs = 1
  return c


def scalars(workdir: pathlib.Path) -> list[tuple[str, int, float]]:
  """Every (tag, step, value) as TensorBoard reads the directory: event files in order
  of creation, a session start with a purge step dropping the events at or after it
  (without one, a replayed step would show twice)."""
  out: list[tuple[str, int, float]] = []
  files = sorted(workdir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
  for path in files:
    data, i = path.read_bytes(), 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      if event.HasField("session_log") and event.session_log.status == 1:  # START
        out = [e for e in out if e[1] < event.step]
      out.extend((value.tag, event.step, value.simple_value) for value in event.summary.value)
  return sorted(out)


def expected(workdir: pathlib.Path) -> dict[tuple[str, int], float]:
  out = {}
  for line in (workdir / run_dir.METRICS).read_text().splitlines():
    row = json.loads(line)
    for k, v in row.items():
      if k not in ("epoch", "step", "split") and isinstance(v, float):
        out[(f"{row['split']}/{k}", row["step"])] = v
  return out


def test_event_files_hold_the_metrics_of_every_evaluated_epoch(tmp_path):
  train.train_and_evaluate(small_config(), str(tmp_path / "run"))
  events = scalars(tmp_path / "run")
  got = {(tag, step): v for tag, step, v in events}
  assert len(got) == len(events)  # Each (tag, step) once.
  want = expected(tmp_path / "run")
  assert want and all(got[k] == pytest.approx(v, rel=1e-6) for k, v in want.items())
  steps = sorted({s for _, s in want})
  assert len(steps) == 3 and {("train/lr", s) for s in steps} <= set(got)
  assert {("train/objective", s) for s in steps} <= set(got)


def test_a_resumed_run_purges_the_events_after_its_checkpoint(tmp_path):
  train.train_and_evaluate(small_config(), str(tmp_path / "whole"))
  run = tmp_path / "run"
  train.train_and_evaluate(small_config(), str(run))
  # As if killed after epoch 3's events were written, before its checkpoint was
  # (the run resumes from the best checkpoint, or from scratch if that was epoch 3).
  shutil.rmtree(run / "checkpoints" / "3")
  (run / run_dir.SUMMARY).unlink()
  train.train_and_evaluate(small_config(), str(run))
  assert len(list(run.glob("events.out.tfevents.*"))) == 2
  assert scalars(run) == scalars(tmp_path / "whole")
