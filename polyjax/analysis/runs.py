"""Finding, loading and filtering run directories (README.md, "A run directory").

A run directory is one holding `config.json` or `summary.json`. `find_runs`
follows symbolic links to directories (a run kept elsewhere and linked in belongs
to the tree), saying so for each link, and never follows one back into a directory
already searched, so a link cycle cannot loop. `load_run` reads its JSON files and
raises `RunError` (one line naming the directory and what is wrong, and a short
`reason` for counts) for a damaged one; callers skip it with a warning. `select`
says why it leaves out each run it does not yield. Nothing here imports JAX:
filtering a thousand runs stays cheap.

The config of a run is rebuilt as `base_config()` updated with the saved values.
Top-level keys of `config.json` that are not config fields (workdir, host,
versions, ...) are run-record fields (README.md, "A run directory").
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import warnings
from typing import Any, Callable, Iterable, Iterator

import ml_collections

from polyjax import run_dir
from polyjax.config import base_config, flatten

# Pseudo-fields that `--where` accepts besides config fields.
RUN_FIELDS = ("status", "epochs_completed", "run_id")
CHECKPOINT_RULES = ("last", "best")
_BAD_CONFIG = "with a config.json this polyjax cannot read"


class RunError(ValueError):
  """A run directory that cannot be analysed; the message names it and the reason.

  `reason` is the short form that counts of left-out runs use ("without a
  checkpoint"), read after a count: "2 without a checkpoint".
  """

  def __init__(self, message: str, reason: str = "that cannot be analysed"):
    super().__init__(message)
    self.reason = reason


class SymlinkFound(UserWarning):
  """A symbolic link met while searching for runs; the message names it and says
  whether it was followed."""


def _to_tuples(value: Any) -> Any:
  # JSON turns tuples into lists; the config declares them as tuples.
  if isinstance(value, list):
    return tuple(_to_tuples(v) for v in value)
  return value


def _merge(section: ml_collections.ConfigDict, saved: dict[str, Any], prefix: str,
           path: pathlib.Path) -> None:
  for key, value in saved.items():
    name = f"{prefix}{key}"
    if key not in section:
      raise RunError(f"{path}: config.json field {name!r} is not a field of this polyjax's "
                     "config (made by another version?)", _BAD_CONFIG)
    if isinstance(section[key], ml_collections.ConfigDict):
      if not isinstance(value, dict):
        raise RunError(f"{path}: config.json field {name!r} should be a section, got {value!r}",
                       _BAD_CONFIG)
      _merge(section[key], value, f"{name}.", path)
    else:
      try:
        section[key] = _to_tuples(value)
      except (TypeError, ValueError) as e:
        raise RunError(f"{path}: config.json field {name!r}={value!r}: {e}", _BAD_CONFIG
                       ) from None


def config_from_record(record: dict[str, Any], path: pathlib.Path) -> ml_collections.ConfigDict:
  """`base_config()` updated with the config fields of a saved `config.json`."""
  config = base_config()
  # Top-level keys that the config does not have are run-record fields (workdir, host, ...).
  _merge(config, {k: v for k, v in record.items() if k in config}, "", path)
  return config


def _read_json(path: pathlib.Path, run: pathlib.Path) -> Any:
  try:
    return run_dir.read_json(path)
  except json.JSONDecodeError as e:
    raise RunError(f"{run}: {path.name} is not valid JSON ({e})",
                   f"with an unreadable {path.name}") from None
  except OSError as e:
    raise RunError(f"{run}: cannot read {path.name} ({e.strerror})",
                   f"with an unreadable {path.name}") from None


@dataclasses.dataclass
class Run:
  """One run directory: its record (config.json), summary and checkpoints."""
  path: pathlib.Path
  record: dict[str, Any]
  summary: dict[str, Any] | None

  @property
  def run_id(self) -> str:
    return self.path.name

  @property
  def status(self) -> str:
    return str(self.summary.get("status", "unknown")) if self.summary else "no summary"

  @property
  def epochs_completed(self) -> int:
    return int(self.summary.get("epochs_completed", 0)) if self.summary else 0

  @functools.cached_property
  def config(self) -> ml_collections.ConfigDict:
    return config_from_record(self.record, self.path)

  @functools.cached_property
  def fields(self) -> dict[str, Any]:
    """Flat config fields plus the pseudo-fields of RUN_FIELDS."""
    out = flatten(self.config)
    out.update(status=self.status, epochs_completed=self.epochs_completed, run_id=self.run_id)
    return out

  @property
  def checkpoint_dir(self) -> pathlib.Path:
    return self.path / run_dir.CHECKPOINTS

  def checkpoint_epochs(self) -> list[int]:
    """Epochs with a finished checkpoint (Orbax names a step directory by its number)."""
    if not self.checkpoint_dir.is_dir():
      return []
    return sorted(int(p.name) for p in self.checkpoint_dir.iterdir()
                  if p.is_dir() and p.name.isdigit())

  def checkpoint_epoch(self, rule: str) -> int:
    """The epoch of checkpoint `rule` ('last' or 'best'); RunError if there is none.

    'last' is the latest checkpoint; 'best' is `summary.json`'s `best_epoch`
    (the checkpoint the run kept as best by its validation metric).
    """
    epochs = self.checkpoint_epochs()
    if rule == "last":
      if not epochs:
        raise RunError(f"{self.path}: no checkpoint in {self.checkpoint_dir}",
                       "without a checkpoint")
      return epochs[-1]
    if rule != "best":
      raise ValueError(f"checkpoint must be one of {CHECKPOINT_RULES}, got {rule!r}")
    best = (self.summary or {}).get("best_epoch")
    if best is None:
      raise RunError(f"{self.path}: summary.json names no best_epoch (no best checkpoint kept)",
                     "without a best checkpoint")
    if int(best) not in epochs:
      raise RunError(f"{self.path}: best checkpoint (epoch {best}) is missing from "
                     f"{self.checkpoint_dir}", "without a best checkpoint")
    return int(best)

  def metrics_rows(self) -> list[dict[str, Any]]:
    """The rows of `metrics.jsonl` ({epoch, step, split, <metric>...})."""
    path = self.path / run_dir.METRICS
    if not path.exists():
      raise RunError(f"{self.path}: no {run_dir.METRICS}", f"without {run_dir.METRICS}")
    rows = []
    with open(path) as f:
      for i, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise RunError(f"{self.path}: {run_dir.METRICS} line {i} is not valid JSON ({e})",
                         f"with an unreadable {run_dir.METRICS}") from None
        # run_dir writes non-finite floats as strings ("nan", "inf").
        rows.append({k: float(v) if isinstance(v, str) and k != "split" else v
                     for k, v in row.items()})
    return rows


def is_run(path: pathlib.Path) -> bool:
  """Whether `path` is a run directory (it holds config.json or summary.json)."""
  return (path / run_dir.CONFIG).exists() or (path / run_dir.SUMMARY).exists()


def _warn_link(message: str) -> None:
  warnings.warn(message, SymlinkFound, stacklevel=3)


def find_runs(roots: Iterable[str | os.PathLike],
              warn: Callable[[str], None] | None = None) -> list[pathlib.Path]:
  """Run directories at or below each root, by real path, sorted, without duplicates.

  A symbolic link to a directory is followed, with one `warn` line naming it and
  its target; one leading to a directory already searched (a cycle, or a second
  way to the same runs) is not, also with one line, so no link makes this loop.
  A link whose target is missing gets a line too. `warn` defaults to a
  `SymlinkFound` warning.
  """
  warn = _warn_link if warn is None else warn
  found = set()
  searched: set[pathlib.Path] = set()  # Real paths of the directories walked.
  for root in roots:
    root = pathlib.Path(root)
    if not root.is_dir():
      raise FileNotFoundError(f"--runs {root}: no such directory")
    if root.resolve() in searched:  # Given twice, or inside a root already searched.
      continue
    searched.add(root.resolve())
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
      path = pathlib.Path(dirpath)
      if is_run(path):
        found.add(path.resolve())
        dirnames.clear()  # A run does not hold other runs (its checkpoints are not runs).
        continue
      keep = []
      for name in sorted(dirnames):
        sub = path / name
        real = sub.resolve()
        if real in searched:
          if sub.is_symlink():
            warn(f"{sub}: symbolic link to {real}, a directory already searched; not followed")
          continue
        searched.add(real)
        if sub.is_symlink():
          warn(f"{sub}: symbolic link to {real}; followed")
        keep.append(name)
      dirnames[:] = keep  # In place: os.walk descends into what is left.
      for name in sorted(filenames):
        sub = path / name
        if sub.is_symlink() and not sub.exists():
          warn(f"{sub}: symbolic link to {os.readlink(sub)}, which does not exist; skipped")
  return sorted(found)


def load_run(path: str | os.PathLike) -> Run:
  """Reads a run directory; RunError if its config is missing or unreadable."""
  path = pathlib.Path(path).resolve()
  if not (path / run_dir.CONFIG).exists():
    raise RunError(f"{path}: no {run_dir.CONFIG}", f"without {run_dir.CONFIG}")
  record = _read_json(path / run_dir.CONFIG, path)
  if not isinstance(record, dict):
    raise RunError(f"{path}: {run_dir.CONFIG} does not hold a JSON object",
                   f"with an unreadable {run_dir.CONFIG}")
  summary = None
  if (path / run_dir.SUMMARY).exists():
    summary = _read_json(path / run_dir.SUMMARY, path)
    if not isinstance(summary, dict):
      raise RunError(f"{path}: {run_dir.SUMMARY} does not hold a JSON object",
                     f"with an unreadable {run_dir.SUMMARY}")
  run = Run(path=path, record=record, summary=summary)
  run.fields  # Rebuild the config now, so that a bad one is reported here.
  return run


# ---------------------------------------------------------------------------
# Filters: `--where FIELD=VALUE[,VALUE...]`.

def _value_matches(value: Any, text: str, field: str) -> bool:
  if value is None:
    return text.lower() in ("none", "null", "")
  if isinstance(value, bool):
    return text.lower() in (("true", "1") if value else ("false", "0"))
  if isinstance(value, (int, float)):
    try:
      return math.isclose(float(text), float(value), rel_tol=1e-9, abs_tol=0.0)
    except ValueError:
      raise ValueError(f"--where {field}={text}: {field} is a number") from None
  if isinstance(value, (tuple, list)):
    return json.dumps(_to_lists(value), separators=(",", ":")) == text.replace(" ", "")
  return str(value) == text


def _to_lists(value: Any) -> Any:
  if isinstance(value, (tuple, list)):
    return [_to_lists(v) for v in value]
  return value


@dataclasses.dataclass(frozen=True)
class Where:
  """`field` equals one of `values` (text, compared by the field's type)."""
  field: str
  values: tuple[str, ...]

  @classmethod
  def parse(cls, text: str) -> "Where":
    field, sep, values = text.partition("=")
    if not sep or not field:
      raise ValueError(f"--where {text!r}: expected FIELD=VALUE[,VALUE...]")
    known = set(flatten(base_config())) | set(RUN_FIELDS)
    if field not in known:
      raise ValueError(f"--where {text!r}: {field!r} is not a config field or one of "
                       f"{', '.join(RUN_FIELDS)}")
    # A list-valued field (e.g. data.mean0=[0,5]) is one value, not alternatives.
    parts = (values,) if values.lstrip().startswith("[") else tuple(values.split(","))
    return cls(field, parts)

  def __call__(self, run: Run) -> bool:
    value = run.fields.get(self.field)
    return any(_value_matches(value, v.strip(), self.field) for v in self.values)


def status_reason(status: str) -> str:
  """How a count of runs left out for their status reads: '2 diverged'."""
  if status == "no summary":
    return f"without {run_dir.SUMMARY}"
  return status if status in ("running", "diverged", "interrupted", "failed") else (
      f"with status {status!r}")


def select(paths: Iterable[pathlib.Path], *, where: Iterable[Where] = (),
           statuses: Iterable[str] | None = ("completed",), min_epochs: int = 0,
           warn: Callable[[str], None] | None = None,
           left_out: Callable[[str], None] | None = None) -> Iterator[Run]:
  """Loads each run and yields those passing every filter.

  Args:
    paths: run directories (see `find_runs`).
    where: field filters; all must hold.
    statuses: allowed `summary.json` statuses; None allows any.
    min_epochs: least `epochs_completed`.
    warn: called with a message for each damaged run (it is skipped).
    left_out: called with the reason (`RunError.reason`, `status_reason`, ...)
      for each run not yielded, damaged or filtered out, so that callers can say
      how many runs they left out and why.
  """
  statuses = None if statuses is None else set(statuses)
  where = list(where)
  for path in paths:
    try:
      run = load_run(path)
    except RunError as e:
      if warn is not None:
        warn(str(e))
      reason = e.reason
    else:
      if statuses is not None and run.status not in statuses:
        reason = status_reason(run.status)
      elif run.epochs_completed < min_epochs:
        reason = f"with fewer than {min_epochs} epochs"
      elif not all(w(run) for w in where):
        reason = "not matching --where"
      else:
        yield run
        continue
    if left_out is not None:
      left_out(reason)
