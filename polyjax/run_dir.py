"""The files of a run directory (SPEC §8): the contract between training and analysis.

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

import functools
import json
import math
import os
import pathlib
import platform
from importlib import metadata
from typing import Any, Mapping

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"

_VERSIONED = ("polyjax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain",
              "tensorflow-datasets", "ml-collections", "numpy")


def _jsonable(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/Inf; keep them readable.
  if hasattr(value, "item"):
    return _jsonable(value.item())
  return value


def write_json(path: pathlib.Path, obj: Any) -> None:
  """Atomically writes `obj` as JSON to `path`."""
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  with open(tmp, "w") as f:
    json.dump(_jsonable(obj), f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def read_json(path: pathlib.Path) -> Any:
  with open(path) as f:
    return json.load(f)


@functools.cache  # Looking packages up costs ~15 ms; a sweep records them for every member.
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


class RunDir:
  """Writes one run's files under `path` (only if `is_writer`)."""

  def __init__(self, path: str | os.PathLike, *, is_writer: bool = True):
    self.path = pathlib.Path(path)
    self.is_writer = is_writer

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
        f.write(json.dumps(_jsonable(row), sort_keys=True) + "\n")

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
    """The rows of metrics.jsonl; a last line cut short by a crash is skipped."""
    path = self.path / METRICS
    if not path.exists():
      return []
    rows = []
    with open(path) as f:
      for line in f:
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          if line.endswith("\n"):
            raise  # Not a torn last line: the file is damaged, say so.
    return rows

  def truncate_metrics(self, last_epoch: int) -> int:
    """Drops rows after epoch `last_epoch` (written after the checkpoint a run resumes
    from) and any torn last line; returns the number of rows dropped."""
    path = self.path / METRICS
    if not self.is_writer or not path.exists():
      return 0
    with open(path) as f:
      lines = f.readlines()
    keep = [line for line in lines if line.endswith("\n")
            and json.loads(line)["epoch"] <= last_epoch]
    if len(keep) == len(lines):
      return 0
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
      f.writelines(keep)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(lines) - len(keep)
