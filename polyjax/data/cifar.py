"""Imbalanced CIFAR-10 (docs/DATASETS.md), from tensorflow-datasets' `cifar10`, read with grain.

Each class of the task is a set of CIFAR-10 labels (default cat (3) vs dog (5)),
relabelled 0..K-1. The official training set is subsampled per class ("step":
the first half of the classes keep `n_max` images, the rest `n_max / imb_factor`;
"exp": class k keeps `n_max * imb_factor ** (-k / (K - 1))`; "none": every class
keeps `n_max`, where `n_max` is the smallest available class size, 5000 for
CIFAR-10), then split 80/20 into train/val, all with the data seed. The test split
is every official test image of the chosen classes (1000 per class: balanced).
Images stay uint8 in memory (or, with `pipeline='stream'`, in the source, read
per batch); normalisation and augmentation run on device.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from polyjax.data import sources
from polyjax.data.preprocess import CIFAR_MEAN, CIFAR_STD, ImagePreprocess
from polyjax.data.splits import Dataset, make_split, subsample_classes, train_val_split
from polyjax.data.stream import stream_split

IMB_TYPES = ("step", "exp", "none")


def class_sets(class_subset: Sequence) -> list[tuple[int, ...]]:
  """((3,), (5,)) or (3, 5) -> [(3,), (5,)]: the original labels making up each class."""
  sets = [tuple(int(v) for v in np.atleast_1d(s)) for s in class_subset]
  flat = [v for s in sets for v in s]
  if len(sets) < 2 or len(set(flat)) != len(flat) or not all(0 <= v < 10 for v in flat):
    raise ValueError(f"data.class_subset must list at least two disjoint sets of CIFAR-10 "
                     f"labels in 0..9, got {class_subset!r}")
  return sets


def imbalanced_counts(available: Sequence[int], *, imb_type: str,
                      imb_factor: float) -> list[int]:
  """Examples kept per class; class 0 is the majority."""
  n_max, k = min(available), len(available)
  if imb_type == "none":
    return [n_max] * k
  if imb_type == "step":
    return [n_max if c < k // 2 else int(n_max / imb_factor) for c in range(k)]
  if imb_type == "exp":
    return [int(n_max * imb_factor ** (-c / (k - 1))) for c in range(k)]
  raise ValueError(f"data.imb_type must be one of {IMB_TYPES}, got {imb_type!r}")


def _relabel(labels: np.ndarray, sets: list[tuple[int, ...]]) -> np.ndarray:
  y = np.full(len(labels), -1, np.int32)
  for c, s in enumerate(sets):
    y[np.isin(labels, s)] = c
  return y


def _record(ex) -> dict[str, np.ndarray]:
  return {"x": np.asarray(ex["image"], np.uint8), "label": np.asarray(ex["label"], np.int32)}


def _label(ex) -> dict[str, np.ndarray]:
  return {"label": np.asarray(ex["label"], np.int32)}


def _image(ex) -> np.ndarray:
  return np.asarray(ex["image"], np.uint8)


def cifar10(*, seed: int = 0, data_dir: str | None = None,
            class_subset: Sequence = ((3,), (5,)), imb_type: str = "step",
            imb_factor: float = 10.0, augment: bool = False, val_frac: float = 0.2,
            pipeline: str = "memory", **_) -> Dataset:
  """Args mirror the `data` config section; `seed` fixes the subsample and the split.

  pipeline 'stream' reads only the labels here (images not decoded); images are read
  per batch.
  """
  sets = class_sets(class_subset)
  if imb_factor < 1:
    raise ValueError(f"data.imb_factor must be >= 1, got {imb_factor!r}")
  train_src = sources.open_split("cifar10", "train", data_dir=data_dir)
  test_src = sources.open_split("cifar10", "test", data_dir=data_dir)
  streamed = pipeline == "stream"
  if streamed:  # Labels only: the images stay encoded until a batch needs them.
    train_all, test_all = (
        sources.read(sources.open_split("cifar10", s, data_dir=data_dir, skip_images=True),
                     _label) for s in ("train", "test"))
  else:
    train_all, test_all = sources.read(train_src, _record), sources.read(test_src, _record)

  def split(src, everything, keep, y):
    if streamed:
      return stream_split(src, keep, _image, y=y)
    return make_split(everything["x"][keep], y)

  y = _relabel(train_all["label"], sets)
  available = [int(np.sum(y == c)) for c in range(len(sets))]
  counts = imbalanced_counts(available, imb_type=imb_type, imb_factor=imb_factor)
  if min(counts) < 1:
    raise ValueError(f"data.imb_factor={imb_factor} leaves a class empty (counts {counts})")
  keep = subsample_classes(y, dict(enumerate(counts)), rng=np.random.default_rng(seed))
  train, val = train_val_split(split(train_src, train_all, keep, y[keep]),
                               val_frac=val_frac, seed=seed)

  y_test = _relabel(test_all["label"], sets)
  sel = np.flatnonzero(y_test >= 0)
  test = split(test_src, test_all, sel, y_test[sel])
  return Dataset(train=train, val=val, test=test, num_classes=len(sets),
                 num_groups=len(sets),
                 preprocess=ImagePreprocess(CIFAR_MEAN, CIFAR_STD, augment=augment))
