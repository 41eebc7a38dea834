"""The results CSV: one row per (run, task, checkpoint, split), safe for concurrent writers.

Every append takes an exclusive `fcntl.flock` on `<csv>.lock` (removed when the
append ends), re-reads the CSV, drops the rows whose key is already there and
rewrites the whole file through a temporary file, `fsync` and `os.replace`. So
several collectors may append at once without losing or doubling a row, and a
reader (which needs no lock) always sees a complete CSV. Existing rows are copied back as the exact text they had;
new columns (another task's metrics) are added at the right, empty for old rows.
Floats are written with `repr`, which round-trips exactly.

A CSV whose last line is incomplete (no newline at its end, an open quote, or too
few or too many fields: a copy, or a writer other than `append`, cut short) is read
without that line, with a `DamagedResults` warning naming the file (once per
process and line): a value cut inside its field ("150.0" left as "15") would
otherwise read as a valid number. Its key is then missing, so the next `collect`
over the run recomputes the row, and the next append writes the complete rows back
without it. Any other malformed line is an error naming the file and the line, and
the file is left alone.

Columns: `KEY` and the identity columns of `IDENTITY`, then config fields under
their dotted config names (`loss.name`, `weighting.exponent`, `lr`, ...), then
metrics under their names in docs/metrics.md (`reweighted_acc`, `group_1_acc`, ...).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import math
import os
import pathlib
import warnings
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
  """Holds an exclusive `flock` on `<csv>.lock`, which exists only while held.

  The CSV cannot carry the lock itself: every append replaces it with a new file.
  The holder unlinks the lock file before releasing it, so a collector that opened
  the same file in the meantime finds, once its own lock is granted, that the path
  no longer names that file, and starts over on a fresh one: only one process at a
  time holds the lock on the file the path names. A lock file left by a killed
  process (the kernel releases its lock) is taken and removed by the next append.
  """
  lock = path.with_name(path.name + ".lock")
  while True:
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX)
      held = os.fstat(fd)
      try:
        named = os.stat(lock)
      except FileNotFoundError:
        named = None
    except BaseException:
      os.close(fd)
      raise
    if named is not None and (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino):
      break
    os.close(fd)  # Unlinked by its previous holder: not the lock any more.
  try:
    yield
  finally:
    try:
      os.unlink(lock)  # While still locked (see above).
    except FileNotFoundError:
      pass
    os.close(fd)  # Releases the lock.


class DamagedResults(UserWarning):
  """A results CSV read without its incomplete last line; the message names the file."""


_warned_cuts: set[str] = set()


def _warn_cut(path: pathlib.Path, header: list[str], fields: list[str], why: str) -> None:
  if not header:
    what = "the file holds no complete line"
  elif "run" in header and header.index("run") < len(fields):
    what = (f"its row (run {fields[header.index('run')]}) is left out, and the next collect "
            "over that run recomputes it")
  else:
    what = "its row is left out, and the next collect over its run recomputes it"
  message = f"{path}: last line is cut off ({why}); {what}"
  # Once per process: a collect reads the CSV at least twice (its keys, then under
  # the append's lock), and importing JAX in between resets Python's own
  # once-per-location filter.
  if message not in _warned_cuts:
    _warned_cuts.add(message)
    warnings.warn(message, DamagedResults, stacklevel=3)


def _load(path: pathlib.Path) -> tuple[list[str], list[list[str]], str]:
  """Header, rows and the text of the complete lines (see the module docstring)."""
  if not path.exists() or path.stat().st_size == 0:
    return [], [], ""
  with open(path, newline="") as f:
    text = f.read()
  buf = io.StringIO(text, newline="")
  reader = csv.reader(buf, strict=True)
  records: list[tuple[list[str], int]] = []  # Each record and the offset of its end.
  cut: list[str] | None = None  # The fields of an incomplete last line.
  why = ""
  try:
    for fields in reader:
      records.append((fields, buf.tell()))
  except csv.Error as e:
    if buf.tell() < len(text):  # Not at the end: not a cut, a damaged file.
      raise ValueError(f"{path}: line {reader.line_num} is not CSV ({e})") from None
    # The fields as far as they go, for the warning (a lenient reader accepts an open quote).
    start = records[-1][1] if records else 0
    cut, why = next(csv.reader(io.StringIO(text[start:], newline="")), []), str(e)
  if cut is None and records and records[-1][1] == len(text) and not text.endswith("\n"):
    (cut, _), why = records.pop(), "no newline at its end"
  header = records[0][0] if records else []
  if cut is None and len(records) > 1 and len(records[-1][0]) != len(header):
    cut, _ = records.pop()
    why = f"{len(cut)} fields, the header {len(header)}"
  if cut is not None:
    _warn_cut(path, header, cut, why)
  if not records:
    return [], [], ""
  rows = [r for r, _ in records[1:]]
  missing = [k for k in KEY if k not in header]
  if missing:
    raise ValueError(f"{path}: not a polyjax results CSV (no column {missing[0]!r})")
  for i, r in enumerate(rows, 2):
    if len(r) != len(header):
      raise ValueError(f"{path}: line {i} has {len(r)} fields, the header {len(header)}")
  return header, rows, text[:records[-1][1]]


def _read_raw(path: pathlib.Path) -> tuple[list[str], list[list[str]]]:
  header, rows, _ = _load(path)
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
  # Checks that it is a results CSV, with a clear message; parses its complete lines only.
  header, _, text = _load(path)
  if not header:
    raise ValueError(f"--results {path}: holds no results")
  return pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=["", "nan", "NaN"])
