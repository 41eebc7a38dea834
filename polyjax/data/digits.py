"""Imbalanced binary digits from scikit-learn's bundled 8x8 images (docs/DATASETS.md).

Offline real data for a first run: two classes, each a set of digits; a balanced
test split is taken first, then the minority class of the rest is subsampled by
`imb_factor`, then the remainder is split 80/20 into train and validation.
"""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Sequence

import numpy as np

from polyjax.data.splits import Dataset, make_split, subsample_classes, train_val_split


def bundled_digits() -> tuple[np.ndarray, np.ndarray]:
  """`sklearn.datasets.load_digits()`'s images (N, 8, 8) in 0..16 and labels (N,),
  read from the CSV that scikit-learn ships, as load_digits reads it, without
  importing scikit-learn (slow to import: docs/BENCHMARKS.md, "Start-up").
  A scikit-learn that keeps the file elsewhere is asked through load_digits."""
  spec = importlib.util.find_spec("sklearn")  # Finds the package; runs none of it.
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("data.name='digits' needs scikit-learn: pip install scikit-learn")
  path = (pathlib.Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
          / "digits.csv.gz")
  if not path.is_file():
    from sklearn import datasets as sk_datasets
    bunch = sk_datasets.load_digits()
    return bunch.images, bunch.target
  table = np.loadtxt(path, delimiter=",")
  return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)


def digits(*, seed: int = 0, class_subset: Sequence[Sequence[int]] = ((0, 1, 2, 3, 4),
                                                                     (5, 6, 7, 8, 9)),
           imb_factor: float = 10.0, minority_class: int = 1, test_per_class: int = 150,
           val_frac: float = 0.2, **_) -> Dataset:
  """Args mirror the `data` config section; `seed` fixes test, imbalance and split draws."""
  if len(class_subset) != 2:
    raise ValueError(f"data.class_subset must name two sets of digits, got {class_subset!r}")
  images, target = bundled_digits()
  x_all = (images / 16.0).astype(np.float32)[..., None]  # (N, 8, 8, 1) in [0, 1]
  y_all = np.full(len(x_all), -1)
  for c, ds in enumerate(class_subset):
    y_all[np.isin(target, list(ds))] = c
  x_all, y_all = x_all[y_all >= 0], y_all[y_all >= 0]

  rng = np.random.default_rng(seed)
  test_idx = subsample_classes(y_all, {0: test_per_class, 1: test_per_class}, rng=rng)
  rest = np.setdiff1d(np.arange(len(y_all)), test_idx)
  y_rest = y_all[rest]
  counts = {c: int(np.sum(y_rest == c)) for c in (0, 1)}
  counts[minority_class] = max(1, int(counts[1 - minority_class] / imb_factor))
  keep = rest[subsample_classes(y_rest, counts, rng=rng)]

  train, val = train_val_split(make_split(x_all[keep], y_all[keep]), val_frac=val_frac,
                               seed=seed)
  test = make_split(x_all[test_idx], y_all[test_idx])
  return Dataset(train=train, val=val, test=test, num_classes=2, num_groups=2)
