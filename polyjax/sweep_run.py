"""Training the members of one sweep directory in this process (`run_sweep`), and
the whole-process settings a sweep makes before JAX starts (devices of the CPU,
determinism).

`polyjax.sweep` (the command), `polyjax.study` and the launchers' tasks
(`polyjax.slurm_task`) all train through `run_sweep`; see `polyjax.sweep` for what
a member and a group are.
"""

from __future__ import annotations

import copy
import os
import pathlib
import shutil
from typing import Any, Mapping, Sequence

import jax
import ml_collections

from polyjax import config as config_lib
from polyjax import grid, lifecycle, member as member_lib, placement, run_dir, train


def run_sweep(members: list[tuple[str, ml_collections.ConfigDict]], workdir: str, *,
              mesh=None, checkpoint_every_epochs: int | None = None,
              member_batch: int | None = None, log_every: int = 0,
              lock_directory: bool = True, stop_on: tuple[int, ...] = ()
              ) -> dict[str, dict[str, Any]]:
  """Trains every member (name, config) under `workdir/<name>`; returns name -> summary.

  Args:
    members: from `grid.expand`; configs are validated here before anything is written.
    workdir: the sweep directory; an existing one is resumed.
    mesh: device mesh shared by all members (default: every device).
    checkpoint_every_epochs: if given, sets `config.checkpoint_every_epochs` of every
      member (so config.json records it).
    member_batch: train (and evaluate) this many members side by side at a time
      (`programs.over_members`); None: all members of a group.
    log_every: as for `train.train_and_evaluate`, per group.
    lock_directory: lock `workdir` for this process (False: a launcher that holds
      its lock runs groups of it in other processes; every member is locked anyway).
    stop_on: signals that stop the members after their current epoch, as SIGTERM
      and SIGINT do (`lifecycle.StopSignals`).

  Raises:
    ConfigError: a member config that cannot be trained, or a member directory holding
      a run of a different config (before any training).
  """
  mesh = placement.make_mesh() if mesh is None else mesh
  if checkpoint_every_epochs is not None:
    members = [(name, with_checkpoint_every(cfg, checkpoint_every_epochs))
               for name, cfg in members]
  all_groups = grid.groups(members)
  check_groups(all_groups)
  workdir_path = pathlib.Path(workdir)
  # One sweep process per directory (a second exits naming the first's PID).
  lock = run_dir.RunDir(workdir_path)
  created = not workdir_path.exists() and lock_directory
  if lock_directory:
    lock.lock()
  opened: list[member_lib.Member] = []
  out: dict[str, dict[str, Any]] = {}
  stop = lifecycle.StopSignals(extra=stop_on)
  try:
    todo_groups = []
    for number, group in enumerate(all_groups, 1):  # Every directory is checked first.
      todo = []
      for name, cfg in group:
        m = member_lib.Member(name=name, config=cfg, run=run_dir.RunDir(workdir_path / name),
                         wandb_group=workdir_path.name)
        opened.append(m)
        member_lib.open_member(m)
        if m.active:
          todo.append(m)
        else:
          print(f"polyjax.sweep: {name} already {m.summary['status']}; skipped", flush=True)
          out[name] = m.summary
      if todo:  # Numbered as `grid.describe_groups` lists them.
        todo_groups.append((f"group {number}/{len(all_groups)}" if len(all_groups) > 1
                            else "sweep", todo))
    with stop:
      for label, todo in todo_groups:
        if stop.received_anywhere():
          break  # Stopped during an earlier group: later groups are not started.
        train.train_members(todo, mesh=mesh, stop=stop, member_batch=member_batch,
                            label=label, log_every=log_every, prefix="polyjax.sweep")
        for m in todo:
          out[m.name] = m.summary
  finally:
    for m in opened:
      m.run.unlock()
    if lock_directory:
      lock.unlock()
    if created and [p.name for p in workdir_path.iterdir()] == [run_dir.LOCK]:
      shutil.rmtree(workdir_path)  # Failed before any member started (e.g. missing data).
  return out


def check_groups(all_groups) -> None:
  """ConfigError unless every member of every group (`grid.groups`) can be trained."""
  for group in all_groups:
    for _, cfg in group:
      # Any batch size: each group's mesh splits a batch over only as many devices as
      # divide it (`programs.member_mesh`).
      config_lib.validate(cfg, device_count=1)
      if len(group) > 1 and cfg.data.pipeline == "stream":
        raise config_lib.ConfigError(
            f"data.pipeline='stream' reads batches for one run at a time, but {len(group)} "
            "members share a program here: use data.pipeline='memory', or run them as "
            "polyjax.main runs")


def with_checkpoint_every(config: ml_collections.ConfigDict, every: int
                           ) -> ml_collections.ConfigDict:
  config = copy.deepcopy(config)
  config.checkpoint_every_epochs = every
  return config




def cpu_device_count(cores: int, group_sizes: Sequence[int]) -> int:
  """How many devices a sweep makes of the CPU: the most, up to `cores`, that divide
  every group's number of members, so that each group's members split evenly over
  them (`member_mesh`) and each device trains its own with one core's worth of
  threads. Members split over the devices train faster than all of them vmapped on
  one: XLA:CPU runs the members' small batched products on one device well below
  the rate that each device's block reaches side by side (docs/BENCHMARKS.md,
  "Sweeps")."""
  return max(c for c in range(1, max(cores, 1) + 1) if all(n % c == 0 for n in group_sizes))


def cpu_count_set(environ: Mapping[str, str]) -> bool:
  """Whether the environment already fixes JAX's CPU device count."""
  return ("--xla_force_host_platform_device_count" in environ.get("XLA_FLAGS", "")
          or "JAX_NUM_CPU_DEVICES" in environ)


def usable_cores() -> int:
  """The CPU cores this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def split_cpu(count: int) -> None:
  """Makes JAX's CPU platform `count` devices (`jax_num_cpu_devices`); only the CPU
  platform is affected (a GPU or TPU run's devices are not). Must run before JAX
  starts its backends."""
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:
    raise config_lib.ConfigError(
        f"--cpu_devices={count} cannot take effect: JAX is already running in this "
        "process") from None


def process_deterministic(members: list[tuple[str, ml_collections.ConfigDict]]) -> bool:
  """The members' `deterministic`, which is set for the whole process (XLA_FLAGS);
  raises ConfigError if it differs between them."""
  values = {config.deterministic for _, config in members}
  if len(values) > 1:
    raise config_lib.ConfigError(
        "deterministic applies to the whole process: it cannot vary within a sweep "
        "(run one sweep per value)")
  return values.pop()
