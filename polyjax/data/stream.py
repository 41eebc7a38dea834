"""Splits read on demand (`data.pipeline='stream'`): the images stay in the source.

A `StreamSplit` holds only the small per-example arrays (y, group, weight; what
subsampling, counts and weights need) and, for its images, a random-access
source (a tfds `data_source`, or the list of a Waterbirds folder's files) with
the row of each example in it and the function that decodes one record into a
uint8 image. `read(indices)` decodes just those examples; the training loop
(`polyjax.steps.StreamedEpochs`) calls it per batch, each process for its own
rows only, so nothing is decoded up front and no process holds the whole split.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class StreamSplit:
  """A split whose `x` is read per batch. `rows[i]` is example i's record in `source`,
  `decode(record)` its uint8 image of shape `x_shape`; the rest are (N,) arrays."""
  source: Sequence[Any]
  rows: np.ndarray
  decode: Callable[[Any], np.ndarray]
  x_shape: tuple[int, ...]
  y: np.ndarray
  group: np.ndarray
  weight: np.ndarray
  x_dtype: Any = np.uint8

  def __post_init__(self):
    n = len(self.y)
    for name in ("rows", "group", "weight"):
      if len(getattr(self, name)) != n:
        raise ValueError(f"split field {name!r} has {len(getattr(self, name))} rows, y has {n}")

  def __len__(self) -> int:
    return len(self.y)

  def take(self, idx: np.ndarray) -> "StreamSplit":
    return dataclasses.replace(self, rows=self.rows[idx], y=self.y[idx],
                               group=self.group[idx], weight=self.weight[idx])

  def read_one(self, i: int) -> np.ndarray:
    """Example i's image; i = -1 is padding, an all-zero image (nothing is read)."""
    if i < 0:
      return np.zeros(self.x_shape, self.x_dtype)
    x = np.asarray(self.decode(self.source[int(self.rows[i])]), self.x_dtype)
    if x.shape != self.x_shape:
      raise ValueError(f"record {int(self.rows[i])} decodes to shape {x.shape}, "
                       f"expected {self.x_shape}")
    return x

  def read(self, indices: np.ndarray) -> np.ndarray:
    """(len(indices), *x_shape) images of examples `indices` (-1: zero padding)."""
    return np.stack([self.read_one(int(i)) for i in np.asarray(indices).reshape(-1)])


def stream_split(source: Sequence[Any], rows: np.ndarray, decode: Callable[[Any], np.ndarray],
                 *, y, group=None) -> StreamSplit:
  """A streamed split with unit weights (as `splits.make_split`); `group` defaults to the
  class. The image shape is taken from the first example's record."""
  rows = np.asarray(rows, np.int64)
  if len(rows) == 0:
    raise ValueError("stream_split: no examples selected")
  y = np.asarray(y, np.int32)
  group = y if group is None else np.asarray(group, np.int32)
  first = np.asarray(decode(source[int(rows[0])]))
  if first.dtype != np.uint8:
    raise ValueError(f"stream_split: records decode to {first.dtype}, expected uint8 images")
  return StreamSplit(source=source, rows=rows, decode=decode, x_shape=tuple(first.shape),
                     y=y, group=group, weight=np.ones(len(y), np.float32))
