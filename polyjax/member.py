"""A member of the training loop: one run directory, opened, checked, restored and
closed (`polyjax.train` trains members; a single run is one).

`open_member` locks the directory and checks what it holds against the config
(`resume_check`; a finished run is left as it is: `finished_summary`); `restore`
opens its checkpoints and restores the latest, repairs its metrics to that epoch
and writes config.json with the run record; `close` ends it: summary, checkpoints,
wandb.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from typing import Any

import jax
import ml_collections

from polyjax import (checkpointing, experiment, lifecycle, run_dir, tensorboard_logger,
                     wandb_logger)
from polyjax import config as config_lib
from polyjax.errors import ConfigError


@dataclasses.dataclass
class Member:
  """One run directory of the loop, and the host-side record of its training."""
  name: str
  config: ml_collections.ConfigDict
  run: run_dir.RunDir
  wandb_group: str | None = None  # A sweep's members are grouped under its name.
  saved_config: dict[str, Any] | None = None  # config.json of the run it resumes.
  changed: list[str] = dataclasses.field(default_factory=list)  # `resume_check`.
  active: bool = True  # Still to train: not finished before, not diverged now.
  exp: experiment.Experiment | None = None
  checkpoints: checkpointing.Checkpoints | None = None
  state: Any = None  # Initial or restored, until placed with the group's.
  start_epoch: int = 0
  best_epoch: int | None = None
  best_value: float | None = None
  steps_done: int = 0
  prior_seconds: float = 0.0  # wall_seconds of the runs this one resumes.
  record: dict[str, Any] = dataclasses.field(default_factory=dict)  # `run_record`.
  values: dict[str, float] = dataclasses.field(default_factory=dict)  # Last evaluation.
  summary: dict[str, Any] = dataclasses.field(default_factory=dict)
  wandb: wandb_logger.WandbLogger | None = None
  events: tensorboard_logger.TensorBoardLogger | None = None  # TensorBoard event files.
  diverged: str | None = None  # Why, once it has.


def run_record(config: ml_collections.ConfigDict, workdir) -> dict[str, Any]:
  """What config.json holds beside the config: identity of the run and its machine."""
  return {
      "seed": config.seed,
      "workdir": str(workdir),
      "data_dir": config.data.data_dir,
      "host": platform.node(),
      "versions": run_dir.versions(),
      "device_count": jax.device_count(),
      "device_kind": jax.devices()[0].device_kind,
      "process_count": jax.process_count(),
      # What XLA was started with (the GPU determinism flag of `config.deterministic`).
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def resume_check(config, saved: dict | None, workdir: str, allow_change: bool) -> list[str]:
  """The fields that matter and differ from the run in `workdir`; raises unless allowed."""
  if saved is None:
    return []
  current = config.to_dict()
  # config.json also holds the run record (host, versions, ...): compare config fields only.
  changed = config_lib.resume_changes({k: v for k, v in saved.items() if k in current}, current)
  if changed and not allow_change:
    raise ConfigError(
        f"workdir {workdir} holds a run whose config differs in {', '.join(changed)}; "
        f"resuming it would mix two experiments (use another --workdir, or pass "
        f"--allow_config_change to resume anyway)")
  return changed


def finished_summary(config, run: run_dir.RunDir) -> dict[str, Any] | None:
  """The summary of the run in `run` if it has already done all that `config` asks
  (rerunning its command then changes nothing): completed, or diverged; else None."""
  summary = run.read_summary()
  if not summary or summary.get("status") not in ("completed", "diverged"):
    return None
  if summary["status"] == "diverged":
    return summary  # The same config replays the same divergence.
  if summary.get("epochs_completed") != config.num_epochs:
    return None  # num_epochs was raised: train on.
  if config.test_on_best and summary.get("best_epoch") is not None and not summary.get("best"):
    return None  # test_on_best was switched on: the best checkpoint is still to test.
  return summary


def open_member(member: Member, *, allow_config_change: bool = False) -> Member:
  """Locks the member's run directory (if it exists) and checks what it holds: a run
  of a config that differs in a field that matters raises ConfigError (unless
  allowed); a finished run of the same config leaves the member inactive, with its
  summary. The caller unlocks `member.run`."""
  run = member.run
  if run.path.exists():
    run.lock()  # Before reading it: another writer would change it under us.
  member.saved_config = run.read_config()
  member.changed = resume_check(member.config, member.saved_config, str(run.path),
                                allow_config_change)
  if member.saved_config is not None and not member.changed:
    done = finished_summary(member.config, run)
    if done is not None:
      member.summary, member.active = done, False
  return member


def restore(m: Member, *, prefix: str) -> None:
  """Opens the member's checkpoints, restores its latest one (if any), repairs its
  metrics to that epoch and writes its config.json."""
  config = m.config
  m.checkpoints = checkpointing.Checkpoints(
      m.run.checkpoints, every_epochs=config.checkpoint_every_epochs,
      best_mode=config.best_mode, defer_while_writing=jax.process_count() == 1)
  m.state = m.exp.state
  resumes = list((m.saved_config or {}).get("resumes", []))
  latest = m.checkpoints.latest_epoch()
  if latest is not None:
    if latest > config.num_epochs:
      raise ConfigError(f"config.num_epochs={config.num_epochs} is below the {latest} "
                        f"epochs already done in {m.run.path}")
    try:
      restored = m.checkpoints.restore_latest(like=m.exp.state)
    except checkpointing.CheckpointMismatch as e:
      raise ConfigError(str(e)) from e
    if restored is not None:
      m.start_epoch, m.state, meta = restored
      m.best_epoch, m.best_value = meta["best_epoch"], meta["best_value"]
      m.steps_done = int(meta["step"])
      m.prior_seconds = float((m.run.read_summary() or {}).get("wall_seconds", 0.0))
      resumes.append({"epoch": m.start_epoch, "changed_fields": m.changed,
                      "time": time.time()})
  if m.saved_config is not None:
    repair = m.run.truncate_metrics(m.start_epoch, eval_every=config.eval_every_epochs)
    if m.run.is_writer:
      print(f"{prefix}: resuming {m.run.path} at epoch {m.start_epoch}"
            + (f" (dropped {repair.dropped} metrics rows written after that checkpoint)"
               if repair.dropped else "")
            + (f"; changed: {', '.join(m.changed)}" if m.changed else ""), flush=True)
      warning = repair.warning(m.run.path / run_dir.METRICS, m.start_epoch)
      if warning:
        print(f"{prefix}: warning: {warning}", file=sys.stderr, flush=True)
  m.record = run_record(config, m.run.path)
  m.run.write_config(config.to_dict(), **m.record, resumes=resumes)
  m.summary = {"status": "running", "epochs_completed": m.start_epoch, "final": {},
               "best": {}, "best_metric": config.best_metric, "best_epoch": m.best_epoch,
               **m.exp.record}


def close(m: Member, status: str, *, stop: lifecycle.StopSignals | None, start: float,
           timed: bool = True, write: bool = True) -> None:
  """Ends a member's run: its summary's status (unless completed), time and steps,
  then the checkpoints (committed), summary.json and wandb."""
  if m.summary.get("status") not in ("completed", "diverged"):
    m.summary["status"] = status
    if status == "interrupted" and stop is not None and stop.name is not None:
      m.summary["signal"] = stop.name
  if timed:
    m.summary["wall_seconds"] = m.prior_seconds + time.time() - start
    m.summary["steps"] = m.steps_done
  checkpoints, m.checkpoints = m.checkpoints, None
  try:
    if checkpoints is not None:
      checkpoints.close()
  finally:
    try:
      if write:
        m.run.write_summary(m.summary)
    finally:
      if m.events is not None:
        m.events.close()
      if m.wandb is not None:
        m.wandb.finish(m.summary)
