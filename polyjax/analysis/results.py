"""The results CSV: one row per (run, task, checkpoint, split), safe for concurrent writers.

Every append takes an exclusive `fcntl.flock` on `<csv>.lock`, re-reads the CSV,
drops the rows whose key is already there and rewrites the whole file through a
temporary file, `fsync` and `os.replace`. So several collectors may append at
once without losing or doubling a row, and a reader (which needs no lock) always
sees a complete CSV. Existing rows are copied back as the exact text they had;
new columns (another task's metrics) are added at the right, empty for old rows.
Floats are written with `repr`, which round-trips exactly.

Columns: `KEY` and the identity columns of `IDENTITY`, then config fields under
their dotted config names (`loss.name`, `weighting.exponent`, `lr`, ...), then
metrics under their SPEC §6 names (`reweighted_acc`, `group_1_acc`, ...).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import math
import os
import pathlib
from typing import Any, Iterable, Mapping

KEY = ("run", "task", "checkpoint", "split")
# What each row says about where its numbers come from.
IDENTITY = KEY + ("run_id", "epoch", "selected_by", "status", "epochs_completed")


def _text(value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return repr(value) if math.isfinite(value) else str(value)  # 'nan', 'inf', '-inf'
  if isinstance(value, (tuple, list)):
    return str(list(value))
  return str(value)


def row_key(row: Mapping[str, Any]) -> tuple[str, ...]:
  return tuple(_text(row[k]) for k in KEY)


@contextlib.contextmanager
def _locked(path: pathlib.Path):
  lock = path.with_name(path.name + ".lock")
  with open(lock, "a") as f:
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _read_raw(path: pathlib.Path) -> tuple[list[str], list[list[str]]]:
  if not path.exists() or path.stat().st_size == 0:
    return [], []
  with open(path, newline="") as f:
    reader = csv.reader(f)
    header = next(reader, [])
    rows = list(reader)
  missing = [k for k in KEY if k not in header]
  if missing:
    raise ValueError(f"{path}: not a polyjax results CSV (no column {missing[0]!r})")
  for i, r in enumerate(rows, 2):
    if len(r) != len(header):
      raise ValueError(f"{path}: line {i} has {len(r)} fields, the header {len(header)}")
  return header, rows


def existing_keys(path: str | os.PathLike) -> set[tuple[str, ...]]:
  """Keys of the rows already in the CSV (empty if it does not exist)."""
  header, rows = _read_raw(pathlib.Path(path))
  idx = [header.index(k) for k in KEY] if header else []
  return {tuple(r[i] for i in idx) for r in rows}


def append(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> int:
  """Appends the rows whose key is not yet in the CSV; returns how many were added."""
  path = pathlib.Path(path)
  rows = list(rows)
  for row in rows:
    missing = [k for k in KEY if k not in row]
    if missing:
      raise ValueError(f"result row lacks key column {missing[0]!r}")
  path.parent.mkdir(parents=True, exist_ok=True)
  with _locked(path):
    header, old = _read_raw(path)
    if not header:
      header = list(IDENTITY)
    idx = [header.index(k) for k in KEY]
    seen = {tuple(r[i] for i in idx) for r in old}
    new = []
    for row in rows:
      key = row_key(row)
      if key not in seen:
        seen.add(key)
        new.append(row)
    if not new:
      return 0
    columns = list(header)
    for row in new:
      columns.extend(c for c in row if c not in columns)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(columns)
      pad = [""] * (len(columns) - len(header))
      writer.writerows(r + pad for r in old)
      writer.writerows([_text(row.get(c)) for c in columns] for row in new)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  return len(new)


def read(path: str | os.PathLike):
  """The CSV as a pandas DataFrame (`ValueError` naming the file if it is not one)."""
  import pandas as pd

  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"--results {path}: no such file")
  _read_raw(path)  # Checks that it is a results CSV, with a clear message.
  return pd.read_csv(path, keep_default_na=False, na_values=["", "nan", "NaN"])
