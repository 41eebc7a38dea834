"""`collect`: runs a task over the chosen runs and appends its rows to a results CSV.

Rows already in the CSV are skipped before any checkpoint is loaded, so a second
collect costs one directory walk. Each run's rows are appended as soon as they
are computed (an interrupted collect keeps what it did). A damaged run, or one
without the checkpoint asked for, is skipped with a `RunSkipped` warning naming it.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Iterable, Sequence

from polyjax.analysis import results, runs, tasks

# Config fields never copied into rows: where data lives, how evaluation was batched, wandb.
_NOT_COPIED = ("data.data_dir", "eval_batch_size", "eval_every_epochs")


class RunSkipped(UserWarning):
  """A run left out of a collect; the message names it and says why."""


def config_columns(run: runs.Run) -> dict[str, Any]:
  """The run's scalar config fields under their dotted names (no wandb, no tuples)."""
  out = {}
  for name, value in runs.flatten(run.config).items():
    if name.startswith("wandb.") or name in _NOT_COPIED or isinstance(value, (tuple, list)):
      continue
    out[name] = value
  return out


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


@dataclasses.dataclass
class Counts:
  runs: int = 0  # Runs that passed the filters.
  added: int = 0  # Rows appended.
  present: int = 0  # Rows skipped because the CSV already had them.
  skipped: int = 0  # Runs skipped with a warning.


def _skip(counts: Counts, message: str) -> None:
  counts.skipped += 1
  warnings.warn(message, RunSkipped, stacklevel=3)


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
    Counts of runs seen, rows added and rows or runs skipped.
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
  for run in runs.select(paths, where=where, statuses=statuses, min_epochs=min_epochs,
                         warn=lambda m: _skip(counts, m)):
    counts.runs += 1
    todo = [s for s in splits
            if any((str(run.path), task, r, s) not in done for r in rules)]
    counts.present += (len(splits) - len(todo)) * len(rules)
    if not todo:
      continue
    try:
      rows = _rows(run, task, spec, checkpoint, todo, mesh)
    except runs.RunError as e:
      _skip(counts, str(e))
      continue
    config = config_columns(run)
    rows = [{**row, **config, **metrics} for row, metrics in rows]
    added = results.append(out, rows)
    counts.added += added
    counts.present += len(rows) - added
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
