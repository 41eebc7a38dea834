"""What one task of a launcher runs: a group of members, in a process of its own.

`GroupTask` is the callable that `polyjax.launch` hands to submitit, for a task of
a SLURM job array (`SlurmExecutor`) or a process beside the launcher's
(`LocalExecutor`). It sets up the process (device count, GPU, memory fraction)
before JAX starts, then trains the group through `sweep_run.run_sweep`: the members'
run directories, resume and summaries are those of a local sweep.

Preemption and time limits: SLURM sends the task SIGUSR2 (submitit asks for it 90 s
before the time limit; a preempting scheduler sends it too). The members stop after
their current epoch with their checkpoints written, as on SIGTERM; then the task
hands the signal to submitit, which calls `checkpoint` (the same group again) and
requeues the task. The requeued task resumes every member from that checkpoint,
through the same restore path as a local rerun, so the members end as if never
stopped. SIGTERM (scancel) stops the members the same way, and the task returns
their 'interrupted' summaries.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from typing import Any

import submitit


@dataclasses.dataclass(frozen=True)
class Setup:
  """Whole-process settings of a task, applied before JAX starts."""
  deterministic: bool
  cpu_devices: int = 0  # > 1: devices to make of the CPU (sweep.split_cpu).
  gpu: str | None = None  # CUDA_VISIBLE_DEVICES for this process; None: as given.
  memory_fraction: float | None = None  # Of the GPU's memory, for groups sharing one.

  def apply(self) -> None:
    from polyjax import sweep_run, xla_runtime

    if self.gpu is not None:
      os.environ["CUDA_VISIBLE_DEVICES"] = self.gpu
    if self.memory_fraction is not None:
      # Each process takes its share when it starts, not all it may ever use: K
      # processes on one GPU then never race for memory they had preallocated.
      os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
      os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{self.memory_fraction:.3f}"
    xla_runtime.set_deterministic(self.deterministic)
    if self.cpu_devices > 1 and not sweep_run.cpu_count_set(os.environ):
      sweep_run.split_cpu(self.cpu_devices)


def train_groups(work: list[tuple[list[tuple[str, Any]], str]], setup: Setup, *,
                 member_batch: int | None, log_every: int) -> dict[str, dict[str, Any]]:
  """Trains each (members, sweep directory) of `work` in turn, after `setup`;
  returns '<directory>/<name>' -> summary. A stop signal ends it after the group
  it stopped (later groups are not started)."""
  setup.apply()
  from polyjax import cli, sweep_run

  cli.quiet_logs()
  out = {}
  for members, directory in work:
    # The launcher holds the sweep directory's lock; each member locks its own.
    summaries = sweep_run.run_sweep(members, directory, member_batch=member_batch,
                                    log_every=log_every, lock_directory=False,
                                    stop_on=(REQUEUE_SIGNAL,))
    out.update({os.path.join(directory, name): s for name, s in summaries.items()})
    if any(s.get("status") == "interrupted" for s in summaries.values()):
      break
  return out


REQUEUE_SIGNAL = signal.SIGUSR2  # submitit's preemption and time-limit signal on SLURM.


class GroupTask(submitit.helpers.Checkpointable):
  """`train_groups` as a submitit job; on preemption or a time limit it is requeued
  with the same arguments (`Checkpointable.checkpoint`) and resumes."""

  def __call__(self, work, setup, *, member_batch, log_every):
    summaries = train_groups(work, setup, member_batch=member_batch, log_every=log_every)
    if any(s.get("signal") == REQUEUE_SIGNAL.name for s in summaries.values()):
      # Stopped at an epoch's end, checkpoints written: submitit's own handler (back in
      # place) now checkpoints this callable and requeues the task.
      signal.raise_signal(REQUEUE_SIGNAL)
    return summaries
