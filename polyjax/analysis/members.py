"""The members of a sweep directory as one text table, best first.

    from polyjax.analysis import members_table
    print(members_table("runs/digits_tune", metric="val/reweighted_acc"))

One row per member directory (every run directory directly under the sweep
directory): its name, status, epochs completed, the validation metric at the last
evaluated epoch and at its best epoch (the best value; ties: the earliest epoch,
as the `logged` task's rules choose), that epoch, and the test metric there (the
early-stopped result). Values come from each member's `metrics.jsonl`, so a
member still running, or stopped, has a row too. Rows are sorted by the best
validation value, best first; members without one, then diverged members, go at
the bottom. Plain text, no pandas and no JAX: a sweep prints it as it ends.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib

from polyjax.analysis import runs

_NONE = "-"


@dataclasses.dataclass
class Member:
  """One member's row (NaN and None where a value is not there)."""
  name: str
  status: str
  epochs: int | None
  final: float = math.nan
  best: float = math.nan
  best_epoch: int | None = None
  test: float = math.nan


def _split_metric(metric: str, what: str) -> tuple[str, str]:
  split, sep, name = metric.partition("/")
  if not sep or not split or not name:
    raise ValueError(f"{what} {metric!r}: expected '<split>/<metric>', e.g. val/reweighted_acc")
  return split, name


def _finite(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value)


def _member(path: pathlib.Path, metric: str, test_metric: str, mode: str) -> Member:
  try:
    run = runs.load_run(path)
  except runs.RunError:  # A damaged config.json or summary.json: listed, at the bottom.
    return Member(path.name, "unreadable", None)
  member = Member(path.name, run.status, run.epochs_completed if run.summary else None)
  try:
    rows = run.metrics_rows()
  except runs.RunError:
    return member  # No metrics.jsonl yet (or an unreadable one): the status says enough.
  split, name = _split_metric(metric, "metric")
  test_split, test_name = _split_metric(test_metric, "test_metric")
  by_split: dict[str, dict[int, dict]] = {}
  for row in rows:
    by_split.setdefault(row.get("split"), {})[int(row["epoch"])] = row
  val, test = by_split.get(split, {}), by_split.get(test_split, {})
  if member.epochs is None and val:
    member.epochs = max(val)
  if val:
    member.final = val[max(val)].get(name, math.nan)
  sign = 1 if mode == "max" else -1
  candidates = [e for e in sorted(val) if _finite(val[e].get(name))]
  if candidates:
    member.best_epoch = max(candidates, key=lambda e: (sign * val[e][name], -e))
    member.best = val[member.best_epoch][name]
    member.test = test.get(member.best_epoch, {}).get(test_name, math.nan)
  return member


def _number(value: float) -> str:
  return f"{value:.4f}" if _finite(value) else (_NONE if value is None or math.isnan(value)
                                               else str(value))


def members_table(sweep_dir: str | os.PathLike, metric: str = "val/reweighted_acc", *,
                  mode: str = "max", test_metric: str = "test/reweighted_acc") -> str:
  """The members of `sweep_dir` as an aligned text table, best first.

  Args:
    sweep_dir: a sweep's --workdir.
    metric: the validation metric that ranks members and picks each one's best
      epoch, '<split>/<name>' (docs/metrics.md).
    mode: 'max' or 'min': which direction of `metric` is better.
    test_metric: the metric reported at each member's best epoch.

  Returns:
    A title line, a header and one line per member.

  Raises:
    FileNotFoundError: `sweep_dir` is not a directory.
    ValueError: a metric not of the form '<split>/<name>', or a mode not max or min.
  """
  sweep_dir = pathlib.Path(sweep_dir)
  if not sweep_dir.is_dir():
    raise FileNotFoundError(f"{sweep_dir}: no such sweep directory")
  if mode not in ("max", "min"):
    raise ValueError(f"mode {mode!r}: must be 'max' or 'min'")
  _split_metric(metric, "metric")
  _split_metric(test_metric, "test_metric")
  members = [_member(p, metric, test_metric, mode) for p in sorted(sweep_dir.iterdir())
             if p.is_dir() and runs.is_run(p)]
  sign = -1 if mode == "max" else 1
  members.sort(key=lambda m: (m.status == "diverged", not _finite(m.best),
                              sign * m.best if _finite(m.best) else 0.0, m.name))
  title = (f"{sweep_dir}: {len(members)} member{'' if len(members) == 1 else 's'}, best "
           f"first by {metric} at each one's best epoch ("
           f"{'highest' if mode == 'max' else 'lowest'} value; ties: the earliest epoch)")
  header = ["member", "status", "epochs", f"{metric} final", f"{metric} best", "best epoch",
            f"{test_metric} at best epoch"]
  lines = [[m.name, m.status, _NONE if m.epochs is None else str(m.epochs), _number(m.final),
            _number(m.best), _NONE if m.best_epoch is None else str(m.best_epoch),
            _number(m.test)] for m in members]
  widths = [max(len(r[i]) for r in [header] + lines) for i in range(len(header))]
  text = [title] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                    for r in [header] + lines]
  return "\n".join(text)
