"""The files of a run directory: the contract between training and analysis.

README.md, "A run directory", describes them for users:

    <workdir>/config.json      resolved config plus seed, workdir, data_dir, host, versions
    <workdir>/metrics.jsonl    one JSON object per (evaluation, split)
    <workdir>/summary.json     status, epochs completed, final metrics
    <workdir>/checkpoints/     Orbax checkpoints (polyjax.checkpointing)

In a multi-process run only one process (`is_writer`, process 0) writes these
files; the others hold a RunDir whose writes do nothing, so callers need not
branch. Checkpoints are the exception: every process takes part in Orbax's
saves and restores.

JSON files are written atomically (temporary file, then rename), so a reader never
sees half a file and a crash never destroys the previous version.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import functools
import json
import math
import os
import pathlib
import platform
import shutil
import sys
from importlib import metadata
from typing import Any, Mapping

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
LOCK = ".lock"

_VERSIONED = ("polyjax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain",
              "tensorflow-datasets", "ml-collections", "numpy")


def jsonable(value: Any) -> Any:
  """`value` as JSON can hold it: mappings with string keys, lists, NaN/Inf as strings."""
  if isinstance(value, Mapping):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/Inf; keep them readable.
  if hasattr(value, "item"):
    return jsonable(value.item())
  return value


def write_json(path: pathlib.Path, obj: Any) -> None:
  """Atomically writes `obj` as JSON to `path` (on failure, e.g. a full disk, the
  previous file stays and no temporary file is left)."""
  _replace(path, [json.dumps(jsonable(obj), indent=2, sort_keys=True) + "\n"], sync=False)


def _replace(path: pathlib.Path, parts: list[str], *, sync: bool) -> None:
  """Writes `parts` to a temporary file beside `path`, then renames it to `path`."""
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  try:
    with open(tmp, "w") as f:
      f.writelines(parts)
      if sync:
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def read_json(path: pathlib.Path) -> Any:
  with open(path) as f:
    return json.load(f)


@functools.cache  # Looking packages up is not free, and a sweep records them for every member.
def _versions() -> tuple[tuple[str, str], ...]:
  out = {"python": platform.python_version()}
  for name in _VERSIONED:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  return tuple(out.items())


def versions() -> dict[str, str]:
  """The versions of Python and of the packages a run's results depend on."""
  return dict(_versions())


class DiskFull(OSError):
  """The disk of a run directory filled up; the message names it and the space needed."""


def is_disk_full(error: BaseException) -> bool:
  """Whether `error`, or an exception it was raised from or during, is a full disk:
  ENOSPC from Python, or TensorStore's RESOURCE_EXHAUSTED (Orbax's writes)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(error) or "os_error_code='28'" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def disk_full_error(path: pathlib.Path, checkpoint_bytes: int) -> DiskFull:
  """The one-line error for a full disk under `path`, whose run's checkpoints take
  about `checkpoint_bytes` each (the latest, the best and one being written: up to 3)."""
  try:
    free = f"{_size(shutil.disk_usage(path).free)} free"
  except OSError:
    free = "free space unknown"
  return DiskFull(f"no space left on the device of {path} ({free}; the run needs about "
                  f"{_size(3 * checkpoint_bytes + 2**20)}: 3 checkpoints of "
                  f"{_size(checkpoint_bytes)} and its logs); free some space and rerun the "
                  f"same command to resume")


def _size(n: float) -> str:
  for unit in ("bytes", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
    n /= 1024
  return ""  # Unreachable.


class RunDirBusy(OSError):
  """Another live process holds the run directory; the message names it and the PID."""


class RunDir:
  """Writes one run's files under `path` (only if `is_writer`)."""

  def __init__(self, path: str | os.PathLike, *, is_writer: bool = True):
    self.path = pathlib.Path(path)
    self.is_writer = is_writer
    self._lock_fd: int | None = None

  def lock(self) -> None:
    """Makes this process the directory's only writer until `unlock` or its end.

    An advisory `flock` on `<path>/.lock` (which holds the holder's PID): the
    kernel releases it when the process dies, kill -9 included, so a stale lock
    never blocks a rerun. The directory is created. Does nothing if not `is_writer`.

    Raises:
      RunDirBusy: another process holds the lock.
    """
    if not self.is_writer or self._lock_fd is not None:
      return
    self.path.mkdir(parents=True, exist_ok=True)
    fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
      os.close(fd)
      raise RunDirBusy(f"run directory {self.path} is in use by another process "
                       f"(PID {holder}); wait for it to end or use another --workdir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    self._lock_fd = fd

  def unlock(self) -> None:
    if self._lock_fd is not None:
      os.close(self._lock_fd)  # Closing the descriptor releases the flock.
      self._lock_fd = None

  @property
  def checkpoints(self) -> pathlib.Path:
    return self.path / CHECKPOINTS

  def create(self) -> None:
    if not self.is_writer:
      return
    self.path.mkdir(parents=True, exist_ok=True)

  def write_config(self, config: Mapping[str, Any], **extra: Any) -> None:
    if not self.is_writer:
      return
    write_json(self.path / CONFIG, {**config, **extra})

  def append_metrics(self, rows: list[Mapping[str, Any]]) -> None:
    """Appends rows; they reach the OS at once (a killed process loses none) and
    the disk at the next `sync_metrics` (called when a checkpoint is saved)."""
    if not self.is_writer:
      return
    with open(self.path / METRICS, "a") as f:
      for row in rows:
        f.write(json.dumps(jsonable(row), sort_keys=True) + "\n")

  def sync_metrics(self) -> None:
    """Forces metrics.jsonl to disk, so that no checkpoint outlives its rows in a crash."""
    if not self.is_writer or not (self.path / METRICS).exists():
      return
    fd = os.open(self.path / METRICS, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)

  def write_summary(self, summary: Mapping[str, Any]) -> None:
    if not self.is_writer:
      return
    write_json(self.path / SUMMARY, summary)

  def read_config(self) -> dict[str, Any] | None:
    """The saved config.json, or None for a new run directory."""
    path = self.path / CONFIG
    return read_json(path) if path.exists() else None

  def read_summary(self) -> dict[str, Any] | None:
    path = self.path / SUMMARY
    return read_json(path) if path.exists() else None

  def read_metrics(self) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl. A last line cut short by a crash is skipped; any
    other line that is not a metrics row is skipped with a warning naming it."""
    rows, damaged = _parse_metrics(self.path / METRICS)
    for number, line in damaged:
      if line.endswith("\n"):  # A torn last line is a crash's, not damage.
        print(f"polyjax: warning: {self.path / METRICS}: line {number} is not a metrics "
              f"row; skipped", file=sys.stderr)
    return rows

  def truncate_metrics(self, last_epoch: int, *, eval_every: int = 1) -> MetricsRepair:
    """Prepares metrics.jsonl for a run resuming after epoch `last_epoch`.

    Drops rows after that epoch (written after its checkpoint, so written again)
    and a torn last line. Damaged lines before it (not JSON, or not a row) are
    dropped too, after a copy of the file is kept as `metrics.jsonl.damaged`; the
    evaluated epochs (every `eval_every`-th) up to `last_epoch` left without rows are
    reported: their values cannot be recomputed.
    """
    path = self.path / METRICS
    if not self.is_writer:
      return MetricsRepair()
    evaluated = range(eval_every, last_epoch + 1, eval_every)
    if not path.exists():
      return MetricsRepair(missing_epochs=list(evaluated))
    rows, damaged = _parse_metrics(path, keep_lines=True)
    keep = [line for row, line in rows if row["epoch"] <= last_epoch]
    complete = [d for d in damaged if d[1].endswith("\n")]  # Not a line torn by a crash.
    have = {row["epoch"] for row, _ in rows if row["epoch"] <= last_epoch}
    repair = MetricsRepair(
        dropped=len(rows) - len(keep), damaged_lines=[n for n, _ in complete],
        missing_epochs=[e for e in evaluated if e not in have])
    if len(keep) == len(rows) and not damaged and _ends_with_newline(path):
      return repair
    if complete:
      shutil.copyfile(path, path.with_name(path.name + ".damaged"))
    _replace(path, keep, sync=True)
    return repair

  def epoch_values(self, epoch: int) -> dict[str, Any]:
    """The metrics rows of `epoch` as one dict keyed like 'test/reweighted_acc' (as
    the training loop logged them; empty if the epoch has no rows)."""
    out = {}
    for row in self.read_metrics():
      if row["epoch"] == epoch:
        out.update({f"{row['split']}/{k}": v for k, v in row.items()
                    if k not in ("epoch", "step", "split")})
    return out


@dataclasses.dataclass
class MetricsRepair:
  """What `truncate_metrics` did: rows dropped after the checkpoint, damaged lines
  dropped before it (1-based line numbers) and evaluated epochs without rows."""
  dropped: int = 0
  damaged_lines: list[int] = dataclasses.field(default_factory=list)
  missing_epochs: list[int] = dataclasses.field(default_factory=list)

  def warning(self, path: pathlib.Path, epoch: int) -> str | None:
    """One line on what could not be kept of the metrics file `path` when resuming
    after `epoch` (None if nothing)."""
    parts = []
    if self.damaged_lines:
      parts.append(f"dropped {len(self.damaged_lines)} damaged line(s) "
                   f"({_ranges(self.damaged_lines)}; the original is kept as "
                   f"{path.name}.damaged)")
    if self.missing_epochs:
      parts.append(f"no rows for evaluated epoch(s) {_ranges(self.missing_epochs)} before "
                   f"the checkpoint of epoch {epoch}: they cannot be recomputed")
    return f"{path}: {'; '.join(parts)}" if parts else None


def _ranges(numbers: list[int]) -> str:
  """[1, 2, 3, 7] -> '1-3, 7'."""
  out, start = [], None
  for i, n in enumerate(numbers):
    start = n if start is None else start
    if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
      out.append(f"{start}" if start == n else f"{start}-{n}")
      start = None
  return ", ".join(out)


def _ends_with_newline(path: pathlib.Path) -> bool:
  with open(path, "rb") as f:
    if f.seek(0, os.SEEK_END) == 0:
      return True
    f.seek(-1, os.SEEK_END)
    return f.read(1) == b"\n"


def _parse_metrics(path: pathlib.Path, keep_lines: bool = False):
  """(rows, damaged): the rows of a metrics file (with their lines if `keep_lines`)
  and the (line number, line) of each line that is not a row."""
  rows, damaged = [], []
  if not path.exists():
    return rows, damaged
  with open(path, errors="replace") as f:
    for number, line in enumerate(f, 1):
      try:
        row = json.loads(line)
        ok = isinstance(row, dict) and isinstance(row.get("epoch"), int) and "split" in row
      except json.JSONDecodeError:
        ok = False
      if not ok:  # Without its newline: a line torn by a crash (not damage).
        damaged.append((number, line))
      else:  # A whole row, written again with its newline if it had none.
        rows.append((row, line if line.endswith("\n") else line + "\n") if keep_lines
                    else row)
  return rows, damaged
