"""In-memory dataset splits: every example carries x, y, group and weight."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from polyjax import weighting
from polyjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Split:
  """One split held in host memory. `x` is float32, or uint8 images (N, H, W, C) that
  the dataset's `preprocess` normalises on device; the rest are (N,) arrays."""
  x: np.ndarray
  y: np.ndarray
  group: np.ndarray
  weight: np.ndarray

  def __post_init__(self):
    n = len(self.y)
    for name in ("x", "group", "weight"):
      if len(getattr(self, name)) != n:
        raise ValueError(f"split field {name!r} has {len(getattr(self, name))} rows, y has {n}")

  def __len__(self) -> int:
    return len(self.y)

  def take(self, idx: np.ndarray) -> "Split":
    return Split(self.x[idx], self.y[idx], self.group[idx], self.weight[idx])

  @property
  def x_shape(self) -> tuple[int, ...]:
    return tuple(self.x.shape[1:])

  @property
  def x_dtype(self):
    return self.x.dtype


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Train, validation and (balanced) test splits plus what the model and loss need.

  The splits are in-memory `Split`s, or `stream.StreamSplit`s (same small arrays,
  images read per batch) for `data.pipeline='stream'`. `extras`, when kept, holds
  the training examples that undersampling left out (`undersample`), evaluated like
  val and test.
  """
  train: Split
  val: Split
  test: Split
  num_classes: int
  num_groups: int
  # Device-side input transform (uint8 images -> normalised float32, optional
  # augmentation), resolved once when the dataset is built; None: x is used as is.
  preprocess: Callable | None = None
  extras: Split | None = None

  @property
  def in_shape(self) -> tuple[int, ...]:
    return self.train.x_shape

  @property
  def train_group_counts(self) -> np.ndarray:
    return weighting.group_counts(self.train.group, self.num_groups)

  @property
  def train_class_counts(self) -> np.ndarray:
    return np.bincount(self.train.y, minlength=self.num_classes)

  def splits(self) -> dict[str, Split]:
    """The splits by name, in evaluation order; 'extras' only when kept."""
    out = {"train": self.train, "val": self.val, "test": self.test}
    return out if self.extras is None else {**out, "extras": self.extras}


def make_split(x, y, group=None) -> Split:
  """A split with unit weights; `group` defaults to the class.

  uint8 images stay uint8 (a quarter of the memory; normalised on device), any
  other `x` becomes float32.
  """
  y = np.asarray(y, np.int32)
  group = y if group is None else np.asarray(group, np.int32)
  x = np.asarray(x)
  x = x if x.dtype == np.uint8 else x.astype(np.float32)
  return Split(x, y, group, np.ones(len(y), np.float32))


def with_weights(ds: Dataset, *, mode: str, exponent: float,
                 cb_beta: float | None = None) -> Dataset:
  """Gives every example of every split its training group's importance weight
  (`weighting.group_weights`)."""
  w_G = weighting.group_weights(ds.train_group_counts, mode=mode, exponent=exponent,
                                cb_beta=cb_beta)
  out = {name: dataclasses.replace(s, weight=w_G[s.group]) for name, s in ds.splits().items()}
  return dataclasses.replace(ds, **out)


def undersample(ds: Dataset, *, exponent: float, seed: int, keep_extras: bool = False
                ) -> Dataset:
  """The dataset with its training split undersampled (docs/losses.md); val and test untouched.

  Uses the data seed, so the kept examples are the same for every run seed.
  `keep_extras`: the examples left out become the split `extras`, in their order
  in the training split; ConfigError if there are none (nothing to evaluate).
  """
  keep = weighting.undersample_indices(ds.train.group, ds.train_group_counts,
                                       exponent=exponent, seed=seed)
  if not keep_extras:
    return dataclasses.replace(ds, train=ds.train.take(keep))
  left_out = np.setdiff1d(np.arange(len(ds.train)), keep)
  if not len(left_out):
    raise ConfigError(
        f"config.weighting.evaluate_extras=True: undersampling with weighting.exponent="
        f"{exponent} keeps all {len(ds.train)} training examples, so there are no extras "
        f"to evaluate")
  return dataclasses.replace(ds, train=ds.train.take(keep), extras=ds.train.take(left_out))


def train_val_split(split: Split, *, val_frac: float, seed: int) -> tuple[Split, Split]:
  """Random train/val split of `split` with its own fixed seed (80/20 in docs/DATASETS.md)."""
  perm = np.random.default_rng(seed).permutation(len(split))
  n_val = int(round(val_frac * len(split)))
  return split.take(np.sort(perm[n_val:])), split.take(np.sort(perm[:n_val]))


def subsample_classes(y: np.ndarray, keep_per_class: dict[int, int], *,
                      rng: np.random.Generator) -> np.ndarray:
  """Sorted indices keeping `keep_per_class[c]` random examples of each class c."""
  keep = []
  for c, k in keep_per_class.items():
    idx = np.flatnonzero(y == c)
    if k > len(idx):
      raise ValueError(f"class {c} has {len(idx)} examples, cannot keep {k}")
    keep.append(rng.choice(idx, size=k, replace=False))
  return np.sort(np.concatenate(keep))
