"""Command line: `python -m polyjax.main --config=configs/<name>.py [--workdir=DIR]`.

Any config field can be overridden, e.g. `--config.lr=0.01 --config.loss.alpha=2`.
Without `--workdir`, a fresh directory `runs/<config name>-<time>` is made. The
same command on an existing workdir resumes it from its latest checkpoint; a
config that differs in a field that matters is refused (exit 2, naming the
fields) unless `--allow_config_change` is given.

Exit status: 0 completed; 2 bad input (a config field, a changed config on resume,
an unwritable run directory), one line, before anything is written; 1 diverged;
128 + the signal number (143 SIGTERM, 130 SIGINT) when a signal stopped the run
after saving a checkpoint: rerun the command to resume.
Multi-process runs add `--coordinator_address=HOST:PORT --num_processes=N
--process_id=I` (or rely on cluster detection, see `polyjax.distributed` and
docs/multihost.md); every process runs the same command.
"""

from __future__ import annotations

import datetime
import pathlib
import re
import signal
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from polyjax import checkpointing, cli, data, lifecycle, run_dir, train, weighting, xla_runtime
from polyjax import config as config_lib
from polyjax import distributed
from polyjax.data import DataMissing

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory; default: a fresh one under runs/.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", list(distributed.MODES),
    "Start JAX's distributed runtime: 'auto' when the flags below are given or the "
    "environment is a multi-process SLURM/Open MPI job or a Cloud TPU VM; 'on' always "
    "(JAX's cluster detection fills in unset flags); 'off' never.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0's coordinator (multi-process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, N).")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache_dir", None,
    "Keep compiled programs here and reuse them in later runs of the same shapes "
    "(xla_runtime.use_compilation_cache): runs one after another skip most compilation.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume a workdir even if its config differs in fields that matter.")
_LOG_EVERY = flags.DEFINE_integer(
    "log_every", 0, "Print the per-epoch line of every Nth evaluated epoch (and the "
    "last). 0: a live progress bar only when stdout is a terminal, every epoch's line "
    "otherwise (a pipe, a log file); N > 0 on a terminal: the lines above the bar.",
    lower_bound=0)
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False,
    "Print the resolved, validated config (and, for data on disk or needing no download, "
    "the split sizes, class and group counts and importance weights it implies) and exit "
    "without writing anything.")
flags.DEFINE_bool("config_help", False, "List every config field with its default and "
                  "meaning, and exit.")
flags.mark_flags_as_required(["config"])


def default_workdir(config_spec: str) -> pathlib.Path:
  """runs/<file>[_<argument>]-<time>, e.g. runs/table_cifar10_poly_iw-20261204-101500."""
  path, arg = config_lib.split_config_spec(config_spec)
  name = pathlib.Path(path).stem + ("" if arg is None else "_" + re.sub(r"\W+", "_", arg))
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return pathlib.Path("runs") / f"{name}-{stamp}"


def print_config(config) -> None:
  """The resolved config, then what it implies for the data: split sizes, class and
  group counts of the training split and the importance weights (data that must be
  prepared first is loaded only if it is there)."""
  print(config)
  try:
    ds = data.load_config(config)
  except DataMissing as e:
    print(f"# data: not loaded ({e})")
    return
  sizes = ", ".join(f"{split} {len(s)}" for split, s in ds.splits().items())
  iw = weighting.importance_weights(ds.train_group_counts, exponent=config.weighting.exponent)
  kind = f"exponent {config.weighting.exponent}, mean 1 over train"
  if config.weighting.cb_beta is not None:
    iw = weighting.effective_number_weights(ds.train_group_counts, beta=config.weighting.cb_beta)
    kind = f"effective number, beta {config.weighting.cb_beta}, sum = number of groups"
  print(f"# data {config.data.name}: {sizes} examples; {ds.num_classes} classes, {ds.num_groups} groups")
  print(f"# train class counts: {list(map(int, ds.train_class_counts))}; "
        f"group counts: {list(map(int, ds.train_group_counts))}")
  print(f"# importance weights per group ({kind}): {[round(float(w), 4) for w in iw]}; "
        f"used as: {config.weighting.mode}")


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_logs()
  config = _CONFIG.value
  xla_runtime.set_deterministic(config.deterministic)  # Before JAX starts its backends.
  try:  # Before any other JAX call (the device count below is one).
    distributed.initialize(mode=_DISTRIBUTED.value, coordinator_address=_COORDINATOR.value,
                           num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  except distributed.DistributedError as e:
    print(f"polyjax: error: {e}", file=sys.stderr)
    return 2
  try:
    config_lib.validate(config, device_count=jax.device_count())
    if _PRINT_CONFIG.value:
      print_config(config)
      return 0
    if _COMPILATION_CACHE.value:
      xla_runtime.use_compilation_cache(_COMPILATION_CACHE.value)
  except (config_lib.ConfigError, checkpointing.CheckpointDirError, DataMissing) as e:
    print(f"polyjax: error: {e}", file=sys.stderr)
    return 2
  if _WORKDIR.value is None and jax.process_count() > 1:
    # A time-stamped default could differ between processes.
    print("polyjax: error: --workdir is required when running several processes",
          file=sys.stderr)
    return 2
  workdir = _WORKDIR.value or str(default_workdir(flags.FLAGS["config"].config_filename))
  if distributed.is_writer():
    print(f"polyjax: run directory {workdir} ({jax.process_count()} processes, "
          f"{jax.device_count()} devices)", flush=True)
  try:
    summary = train.train_and_evaluate(config, workdir,
                                       allow_config_change=_ALLOW_CONFIG_CHANGE.value,
                                       log_every=_LOG_EVERY.value)
  except (config_lib.ConfigError, checkpointing.CheckpointDirError, run_dir.RunDirBusy,
          DataMissing) as e:
    print(f"polyjax: error: {e}", file=sys.stderr)
    return 2
  except run_dir.DiskFull as e:
    print(f"polyjax: error: {e}", file=sys.stderr)
    return 1
  except train.Diverged as e:
    print(f"polyjax: diverged: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:  # A second SIGINT: stopped at once, without a new checkpoint.
    print("polyjax: interrupted; rerun the same command to resume from the last "
          f"checkpoint; run directory: {workdir}", file=sys.stderr)
    return 128 + signal.SIGINT.value
  if summary["status"] == "interrupted":
    print(f"polyjax: interrupted by {summary['signal']} after "
          f"{summary['epochs_completed']} epochs (checkpoint saved); rerun the same "
          f"command to resume; run directory: {workdir}", file=sys.stderr)
    return 128 + signal.Signals[summary["signal"]].value
  final = summary["final"]
  if not distributed.is_writer():
    return 0
  print(f"polyjax: {summary['status']} {summary['epochs_completed']} epochs in "
        f"{summary['wall_seconds']:.1f}s; test/reweighted_acc "
        f"{final.get('test/reweighted_acc', float('nan')):.4f}; run directory: {workdir}")
  return 0


def run() -> None:
  app.run(lambda argv: lifecycle.exit(main(argv)),
          flags_parser=lambda argv: cli.parse_flags(argv, "polyjax"))


if __name__ == "__main__":
  run()
