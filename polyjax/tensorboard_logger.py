"""TensorBoard event files in every run directory, beside metrics.jsonl, so that
`tensorboard --logdir runs/` compares runs offline.

The values are the ones metrics.jsonl holds (each evaluated epoch's `split/metric`,
`train/objective`, `train/lr`), at the optimizer step. A resumed run purges the
events written after the checkpoint it resumes from (`purge_step`), as it truncates
metrics.jsonl, so its curves equal an uninterrupted run's.
"""

from __future__ import annotations

import os
import uuid
from typing import Mapping

import tensorboardX


class TensorBoardLogger:
  """Scalars of one run; every method does nothing when disabled (a process that does
  not write the run)."""

  def __init__(self, workdir: str | os.PathLike, *, resume_step: int | None = None,
               enabled: bool = True):
    """`resume_step`: the optimizer step a resumed run restarts after (0 if it
    restarts from scratch; None for a new run): later events are purged."""
    self._writer = None
    if enabled:
      # flush_secs: events reach the disk while a long run trains, not only at its end.
      # The suffix: file names hold the time in seconds, and a resume in the same
      # second would overwrite the file before it.
      self._writer = tensorboardX.SummaryWriter(
          logdir=str(workdir), purge_step=None if resume_step is None else resume_step + 1,
          flush_secs=30, filename_suffix=f".{uuid.uuid4().hex[:8]}")

  def log(self, step: int, values: Mapping[str, float]) -> None:
    if self._writer is None:
      return
    for key, value in values.items():
      self._writer.add_scalar(key, float(value), global_step=step)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
