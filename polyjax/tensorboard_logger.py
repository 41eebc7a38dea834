"""TensorBoard event files in every run directory, beside metrics.jsonl, so that
`tensorboard --logdir runs/` compares runs offline.

The values are the ones metrics.jsonl holds (each evaluated epoch's `split/metric`,
`train/objective`, `train/lr`), at the optimizer step. A resumed run starts its
file with a session start at the step it restarts after, which makes TensorBoard
drop the events written after it (as metrics.jsonl is truncated), so its curves
equal an uninterrupted run's.

Events are written in the training loop's thread, with tensorboardX's record
format and protocol buffers: a writer thread that dies (a full disk) would leave
the loop blocked on its queue, where a write here raises the error the run
reports.
"""

from __future__ import annotations

import os
import pathlib
import socket
import struct
import time
import uuid
from typing import Mapping

from tensorboardX.proto import event_pb2, summary_pb2
from tensorboardX.record_writer import masked_crc32c


class TensorBoardLogger:
  """Scalars of one run; every method does nothing when disabled (a process that does
  not write the run)."""

  def __init__(self, workdir: str | os.PathLike, *, resume_step: int | None = None,
               enabled: bool = True):
    """`resume_step`: the optimizer step a resumed run restarts after (0 if it
    restarts from scratch; None for a new run): later events are dropped."""
    self._file = None
    if not enabled:
      return
    # The suffix: names hold the time in seconds, and a resume within the same second
    # must not overwrite the file before it.
    name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
            f"{uuid.uuid4().hex[:8]}")
    self._file = open(pathlib.Path(workdir) / name, "ab")
    self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
    if resume_step is not None:
      self._write(event_pb2.Event(
          wall_time=time.time(), step=resume_step + 1,
          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def _write(self, event: event_pb2.Event) -> None:
    data = event.SerializeToString()
    header = struct.pack("<Q", len(data))
    self._file.write(header + struct.pack("<I", masked_crc32c(header)) + data
                     + struct.pack("<I", masked_crc32c(data)))

  def log(self, step: int, values: Mapping[str, float]) -> None:
    if self._file is None:
      return
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()])
    self._write(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
    self._file.flush()  # Readable while the run trains.

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
