"""`collect`: runs a task over the chosen runs and appends its rows to a results CSV.

Rows already in the CSV are skipped before any checkpoint is loaded, so a second
collect costs one directory walk. Each run's rows are appended as soon as they
are computed (an interrupted collect keeps what it did). A damaged run, or one
without the checkpoint asked for, is skipped with a `RunSkipped` warning naming it.
`Counts` says how many runs were collected and how many were left out for each
reason (a filter, or the warning's), e.g. "collected 3 runs (3 rows added, 0
already present); left out 2: 1 diverged, 1 without a checkpoint".
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Iterable, Sequence

from polyjax.analysis import results, runs, tasks
from polyjax.config import flatten
from polyjax.stage1 import RECORD_KEYS

# Config fields never copied into rows: where data lives, how evaluation was batched, wandb.
_NOT_COPIED = ("data.data_dir", "eval_batch_size", "eval_every_epochs")


class RunSkipped(UserWarning):
  """A run left out of a collect; the message names it and says why."""


def config_columns(run: runs.Run) -> dict[str, Any]:
  """The run's scalar config fields under their dotted names (no wandb, no tuples)."""
  out = {}
  for name, value in flatten(run.config).items():
    if name.startswith("wandb.") or name in _NOT_COPIED or isinstance(value, (tuple, list)):
      continue
    out[name] = value
  return out


def record_columns(run: runs.Run) -> dict[str, Any]:
  """What stage 1 gave a two-stage run (summary.json's `RECORD_KEYS` sections: the
  estimated priors' error, JTT's error set, DFR's L2, ...), its scalars under dotted
  names such as `label_shift.prior_error_l1`; {} for other runs."""
  summary = run.summary or {}
  sections = {k: summary[k] for k in RECORD_KEYS if isinstance(summary.get(k), dict)}
  return {name: value for name, value in flatten(sections).items()
          if isinstance(value, (str, int, float, bool))}


def _identity(run: runs.Run, task: str, rule: str, split: str, epoch: int,
              selected_by: str) -> dict[str, Any]:
  return {"run": str(run.path), "task": task, "checkpoint": rule, "split": split,
          "run_id": run.run_id, "epoch": epoch, "selected_by": selected_by,
          "status": run.status, "epochs_completed": run.epochs_completed}


def _selected_by(run: runs.Run, rule: str) -> str:
  if rule == "last":
    return "last checkpoint"
  metric = (run.summary or {}).get("best_metric")
  return f"best {metric}" if metric else "best (metric not recorded)"


def _plural(n: int, noun: str) -> str:
  return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@dataclasses.dataclass
class Counts:
  runs: int = 0  # Runs collected: all their rows are in the CSV, added now or before.
  added: int = 0  # Rows appended.
  present: int = 0  # Rows skipped because the CSV already had them.
  skipped: int = 0  # Runs left out with a warning (damaged, or the task failed on them).
  # Runs left out (filtered, or skipped) per reason, as a count reads it: {'diverged': 1}.
  left_out: dict[str, int] = dataclasses.field(default_factory=dict)

  def leave_out(self, reason: str) -> None:
    self.left_out[reason] = self.left_out.get(reason, 0) + 1

  def summary(self) -> str:
    """'collected 3 runs (3 rows added, 0 already present); left out 2: 1 diverged, ...'."""
    text = (f"collected {_plural(self.runs, 'run')} ({_plural(self.added, 'row')} added, "
            f"{self.present} already present); left out ")
    if not self.left_out:
      return text + "none"
    reasons = sorted(self.left_out.items(), key=lambda kv: (-kv[1], kv[0]))
    return (text + f"{sum(self.left_out.values())}: " +
            ", ".join(f"{n} {reason}" for reason, n in reasons))


def _skip(counts: Counts, error: runs.RunError) -> None:
  counts.skipped += 1
  counts.leave_out(error.reason)
  warnings.warn(str(error), RunSkipped, stacklevel=3)


def collect(roots: Sequence[str | os.PathLike], out: str | os.PathLike, *,
            task: str = "evaluate", checkpoint: str = "last",
            splits: Sequence[str] | None = None, where: Iterable[runs.Where] = (),
            statuses: Iterable[str] | None = ("completed",), min_epochs: int = 0,
            mesh=None) -> Counts:
  """Appends `task`'s rows for every chosen run under `roots` to the CSV `out`.

  Args:
    roots: directories to search for runs.
    out: the results CSV (created if missing).
    task: a name in `tasks.TASKS`.
    checkpoint: 'last' or 'best' for checkpoint tasks; the `logged` task always
      writes one row per rule of `tasks.LOGGED_RULES`.
    splits: splits to analyse (default: the task's own default split).
    where, statuses, min_epochs: run filters (see `runs.select`).
    mesh: device mesh for checkpoint tasks (default: all devices).

  Returns:
    Counts of runs collected and left out (and why), rows added and already there.
  """
  if task not in tasks.TASKS:
    raise ValueError(f"--task {task!r}: must be one of {', '.join(tasks.TASKS)}")
  if checkpoint not in runs.CHECKPOINT_RULES:
    raise ValueError(f"--checkpoint {checkpoint!r}: must be one of "
                     f"{', '.join(runs.CHECKPOINT_RULES)}")
  spec = tasks.TASKS[task]
  splits = list(splits) if splits else [spec.default_split]
  bad = [s for s in splits if s not in spec.splits]
  if bad:
    raise ValueError(f"--split {bad[0]!r}: task {task} takes {', '.join(spec.splits)}")
  rules = list(tasks.LOGGED_RULES) if not spec.uses_checkpoint else [checkpoint]
  counts = Counts()
  done = results.existing_keys(out)
  paths = runs.find_runs(roots)
  # Damaged runs: `select` warns (and RunSkipped counts them) through `warn`, then
  # reports the reason through `left_out` like any other run it does not yield.
  def damaged(message):
    counts.skipped += 1
    warnings.warn(message, RunSkipped, stacklevel=4)

  for run in runs.select(paths, where=where, statuses=statuses, min_epochs=min_epochs,
                         warn=damaged, left_out=counts.leave_out):
    todo = [s for s in splits
            if any((str(run.path), task, r, s) not in done for r in rules)]
    present = (len(splits) - len(todo)) * len(rules)
    if todo:
      try:
        rows = _rows(run, task, spec, checkpoint, todo, mesh)
      except runs.RunError as e:
        _skip(counts, e)
        continue
      config = {**config_columns(run), **record_columns(run)}
      rows = [{**row, **config, **metrics} for row, metrics in rows]
      added = results.append(out, rows)
      counts.added += added
      present += len(rows) - added
    counts.present += present
    counts.runs += 1
  return counts


def _rows(run, task, spec, checkpoint, splits, mesh):
  out = []
  if not spec.uses_checkpoint:
    for split in splits:
      for rule, epoch, selected_by, metrics in spec.fn(run, split):
        out.append((_identity(run, task, rule, split, epoch, selected_by), metrics))
    return out
  loaded = tasks.load_checkpoint(run, checkpoint, mesh=mesh)
  for split in splits:
    metrics = spec.fn(loaded, split)
    out.append((_identity(run, task, checkpoint, split, loaded.epoch,
                          _selected_by(run, checkpoint)), metrics))
  return out
