"""Sweeps: every point of a hyperparameter grid, trained as few compiled programs as possible.

    python -m polyjax.sweep --config=configs/digits_poly.py --workdir=DIR \\
        --grid=lr=0.01,0.1 --grid=seed=0,1,2 [--config.<field>=<value> ...]

Each point of the grid (a *member*, `polyjax.grid`) is the base config with some
fields changed. Members that differ only in the fields of `grid.STACKABLE` share
one program: they train together in the training loop of a single run
(`train.train_members`), their states stacked along a member axis
(`programs.Stacked`), split over the devices, and on a CPU the sweep makes one
device per core for this (`--cpu_devices`). `--member_batch=N`: N members side by
side at a time on each device, the rest in turn inside the same program, to bound
memory; `--member_batch=1` runs each member's step as a single run's program does.
Any other field splits the grid into groups that run one after another. Before
training, the sweep says which fields split its grid and how many members each
group has (`grid.describe_groups`), and when a group leaves CPU cores or devices
idle, how to use them (`idle_note`).

Every member writes an ordinary run directory, `DIR/<field>=<value>,...`, with the
files `polyjax.main` writes for that member's config, through the same loop, so
analysis treats members as ordinary runs; each member logs to its own wandb run,
grouped under the sweep directory's name. A diverged member stops alone. Running
the same command again resumes: finished members are skipped, the others restore
their latest checkpoint; a member directory whose config differs in a field that
matters is refused before anything is written.
"""

from __future__ import annotations

import math
import os
import pathlib
import sys
from typing import Any, Mapping, Sequence

import jax

from polyjax import (analysis, checkpointing, cli, data, distributed, grid, launch, lifecycle,
                     programs, run_dir, xla_runtime)
from polyjax import config as config_lib
# Training a sweep directory's members; their names are this module's too.
from polyjax.sweep_run import (check_groups, cpu_count_set, cpu_device_count,  # noqa: F401
                               process_deterministic, run_sweep, split_cpu, usable_cores,
                               with_checkpoint_every)

# ----------------------------------------------------------------------------
# Command line.


def idle_note(group_sizes: Sequence[int], batch_sizes: Sequence[int], *, devices: int,
              platform: str, cores: int, count_from: str) -> str | None:
  """A note for the user when a group leaves devices (or, on a CPU, cores) idle,
  with how to use them; None when none is.

  Args:
    group_sizes, batch_sizes: each group's number of members and batch size.
    devices: JAX's device count; platform: theirs ('cpu', 'gpu', 'tpu').
    cores: the cores this process may use (a CPU device trains its members with
      about one core's worth of threads: `cpu_device_count`).
    count_from: what set the CPU device count: 'auto' (`cpu_device_count`), 'flag'
      (--cpu_devices) or 'environment' (XLA_FLAGS, JAX_NUM_CPU_DEVICES).
  """
  used = [programs.devices_used(n, devices, b) for n, b in zip(group_sizes, batch_sizes)]
  numbered = len(group_sizes) > 1
  for number, (n, b, u) in enumerate(zip(group_sizes, batch_sizes, used), 1):
    where = f"group {number}/{len(group_sizes)}'s " if numbered else ""
    on = f"{where}{n} member{'s' if n > 1 else ''} train on {u} {platform.upper()} device"
    on += "s" if u > 1 else ""
    if platform != "cpu":
      if u < devices:
        return (f"{on} of {devices}: members split over as many devices as divide "
                f"their number, each member's batch ({b}) over as many of the rest as "
                f"divide it; a number of members divisible by {devices} uses them all")
      continue
    if min(u, cores) >= cores:
      continue
    idle = cores - u
    fixes = [f"make every group's number of members divisible by {cores}"
             + (f" (e.g. {n - n % cores or cores} or {n - n % cores + cores} here)"
                if n % cores else "")]
    with_cores = programs.devices_used(n, cores, b)
    if count_from != "environment" and devices != cores and with_cores > u:
      fixes.append(f"pass --cpu_devices={cores} (each member's batch is then split over "
                   f"{with_cores // math.gcd(n, cores)} devices)")
    if count_from == "environment":
      fixes.append(f"set XLA_FLAGS/JAX_NUM_CPU_DEVICES to {cores} devices (now {devices})")
    return (f"{on}, leaving {idle} of the {cores} CPU cores this process may use "
            f"mostly idle (a CPU device trains its members with about one core); to use "
            f"them, {', or '.join(fixes)}")
  return None


_ONE_PROCESS = ("a sweep trains every member in one process, but this is one of "
                "several ({}), which would all write the same member directories: run "
                "it as a single process, or run the members as polyjax.main runs "
                "(scripts/launch_sweep.py)")


def check_one_process(environ: Mapping[str, str]) -> None:
  """Raises ConfigError if the environment launches several processes of this
  command (an srun step of several tasks, an Open MPI job of several ranks)."""
  reason = distributed.decide(mode="auto", coordinator_address=None, num_processes=None,
                              process_id=None, environ=environ, tpu_vm=False)
  if reason is not None:
    raise config_lib.ConfigError(_ONE_PROCESS.format(reason))


def _sweep_here(members, points) -> dict[str, dict[str, Any]]:
  """Trains the members in this process: devices made of the CPU, what will
  happen said, then `run_sweep`."""
  count_from = "environment" if cpu_count_set(os.environ) else "auto"
  if _CPU_DEVICES.value:
    split_cpu(_CPU_DEVICES.value)
    count_from = "flag"
  elif count_from == "auto" and _MEMBER_BATCH.value != 1:
    # --member_batch=1 runs each member on the devices polyjax.main would use.
    count = cpu_device_count(usable_cores(), [len(g) for g in grid.groups(members)])
    if count > 1:
      split_cpu(count)
  if jax.process_count() > 1:  # E.g. a runtime started by the platform.
    raise config_lib.ConfigError(_ONE_PROCESS.format(f"{jax.process_count()} processes"))
  # What will happen, before the first (long) compilation.
  fields = list(dict.fromkeys(f for g in points for f in g))
  for line in grid.describe_groups(members, fields):
    print(f"polyjax.sweep: {line}", flush=True)
  note = None if _MEMBER_BATCH.value == 1 else idle_note(
      [len(g) for g in grid.groups(members)],
      [g[0][1].batch_size for g in grid.groups(members)],
      devices=jax.device_count(), platform=jax.devices()[0].platform,
      cores=usable_cores(), count_from=count_from)
  if note:
    print(f"polyjax.sweep: note: {note}", flush=True)
  if _COMPILATION_CACHE.value:
    xla_runtime.use_compilation_cache(_COMPILATION_CACHE.value)
  return run_sweep(members, _WORKDIR.value, checkpoint_every_epochs=_CHECKPOINT_EVERY.value,
                   member_batch=_MEMBER_BATCH.value or None, log_every=_LOG_EVERY.value)


def _launch_groups(members, options: launch.Options, points
                   ) -> dict[str, dict[str, Any]] | None:
  """Trains the members' groups in processes of their own (`launch`): this process
  holds the sweep directory's lock and never starts JAX. None if a group's task did
  not finish (each is reported)."""
  if _CHECKPOINT_EVERY.value is not None:
    members = [(n, with_checkpoint_every(c, _CHECKPOINT_EVERY.value)) for n, c in members]
  check_groups(grid.groups(members))
  count = _CPU_DEVICES.value
  if not count and not cpu_count_set(os.environ) and _MEMBER_BATCH.value != 1:
    count = cpu_device_count(options.cpus_per_task or usable_cores(),
                             [len(g) for g in grid.groups(members)])
  fields = list(dict.fromkeys(f for g in points for f in g))
  for line in grid.describe_groups(members, fields):
    print(f"polyjax.sweep: {line}", flush=True)
  workdir = pathlib.Path(_WORKDIR.value)
  lock = run_dir.RunDir(workdir)
  lock.lock()
  try:
    outcome = launch.train([launch.Sweep(str(workdir), workdir, tuple(members))], options,
                           root=workdir, deterministic=process_deterministic(members),
                           cpu_devices=count, member_batch=_MEMBER_BATCH.value or None,
                           log_every=_LOG_EVERY.value,
                           out=lambda line: print(f"polyjax.sweep: {line}", flush=True))
  finally:
    lock.unlock()
  for line in outcome.failed:
    print(f"polyjax.sweep: did not finish: {line}", file=sys.stderr)
  if outcome.failed:
    print("polyjax.sweep: rerun the same command to train what is missing", file=sys.stderr)
    return None
  return {pathlib.Path(path).name: s for path, s in outcome.summaries.items()}


def main(argv) -> int:
  from absl import app, flags

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_logs()
  config = _CONFIG.value
  try:
    if _GRID.value:
      points: grid.Grid = [grid.parse_grid_flags(_GRID.value)]
    else:
      points = grid.config_sweep(flags.FLAGS["config"].config_filename)
      if points is None:
        raise config_lib.ConfigError(
            "no grid: pass --grid=field=v1,v2 or define sweep() in the config file")
    members = grid.expand(config, points)
    xla_runtime.set_deterministic(process_deterministic(members))  # Before JAX starts.
    check_one_process(os.environ)
    if _MEMBER_BATCH.value < 0:
      raise config_lib.ConfigError(f"--member_batch must be >= 0, got {_MEMBER_BATCH.value}")
    if _CPU_DEVICES.value < 0:
      raise config_lib.ConfigError(f"--cpu_devices must be >= 0, got {_CPU_DEVICES.value}")
    options = launch.options_from_flags(_LAUNCH)
    if options.in_processes:
      summaries = _launch_groups(members, options, points)
    else:
      summaries = _sweep_here(members, points)
  except (config_lib.ConfigError, checkpointing.CheckpointDirError, run_dir.RunDirBusy,
          data.DataMissing) as e:
    print(f"polyjax.sweep: error: {e}", file=sys.stderr)
    return 2
  except Exception as e:
    if run_dir.is_disk_full(e):
      print(f"polyjax.sweep: error: no space left on the device of {_WORKDIR.value}; free "
            f"some space and rerun the same command to resume", file=sys.stderr)
      return 1
    raise
  if summaries is None:
    return 1
  by_status: dict[str, list[str]] = {}
  for name, s in summaries.items():
    by_status.setdefault(s["status"], []).append(name)
  print("polyjax.sweep: " + "; ".join(f"{len(v)} {k}" for k, v in by_status.items()) +
        f"; run directories under {_WORKDIR.value}")
  for name in by_status.get("diverged", []):
    print(f"polyjax.sweep: diverged: {name}")
  print(analysis.members_table(_WORKDIR.value, metric=config.best_metric,
                               mode=config.best_mode))
  return 0


_CONFIG = _WORKDIR = _GRID = _CHECKPOINT_EVERY = _MEMBER_BATCH = _COMPILATION_CACHE = None
_CPU_DEVICES = _LOG_EVERY = None
_LAUNCH: dict[str, Any] = {}


def run() -> None:
  """Defines the flags (here, so importing this module next to polyjax.main is safe)
  and runs `main`."""
  global _CONFIG, _WORKDIR, _GRID, _CHECKPOINT_EVERY, _MEMBER_BATCH, _COMPILATION_CACHE
  global _CPU_DEVICES, _LOG_EVERY, _LAUNCH
  from absl import app, flags
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file(
      "config", None, "Experiment config file (configs/*.py).", lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory: one run directory "
                                 "per member under it; an existing one is resumed.")
  _GRID = flags.DEFINE_multi_string(
      "grid", [], "field=v1,v2,... (repeatable); the grid is their product. Default: "
      "the config file's sweep().")
  _CHECKPOINT_EVERY = flags.DEFINE_integer(
      "checkpoint_every_epochs", None, "Checkpoint every member this often (default: "
      "the config's checkpoint_every_epochs if it has one, else after the last epoch).")
  _MEMBER_BATCH = flags.DEFINE_integer(
      "member_batch", 0, "Members trained side by side (vmapped) at a time on each "
      "device; the rest wait their turn inside the same program. 0: all. Smaller "
      "values bound memory. 1: each member in turn with the program polyjax.main "
      "compiles for it, on the devices it would use: every member equals its single "
      "run bit for bit (stacked members agree with theirs to float rounding).")
  _CPU_DEVICES = flags.DEFINE_integer(
      "cpu_devices", 0, "Devices to make of the CPU (JAX's CPU platform only), members "
      "split over them. 0: the most, up to the cores this process may use, that divide "
      "every group's number of members (cpu_device_count), unless XLA_FLAGS or "
      "JAX_NUM_CPU_DEVICES set a count.")
  _COMPILATION_CACHE = flags.DEFINE_string(
      "compilation_cache_dir", None, "Keep compiled programs here and reuse them in "
      "later runs of the same shapes (xla_runtime.use_compilation_cache).")
  _LOG_EVERY = flags.DEFINE_integer(
      "log_every", 0, "Print the per-epoch line of every Nth evaluated epoch (and the "
      "last). 0: a live progress bar per group only when stdout is a terminal, every "
      "epoch's line otherwise (a pipe, a log file); N > 0 on a terminal: the lines "
      "above the bar.", lower_bound=0)
  _LAUNCH = launch.define_flags()
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(lambda argv: lifecycle.exit(main(argv)),
          flags_parser=lambda argv: cli.parse_flags(argv, "polyjax.sweep"))


if __name__ == "__main__":
  run()
