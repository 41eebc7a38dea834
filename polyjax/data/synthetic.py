"""Synthetic data that runs anywhere (docs/DATASETS.md): truncated Gaussian mixtures."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from polyjax.data.splits import Dataset, make_split


def truncated_gaussian(rng: np.random.Generator, n: int, mean: np.ndarray,
                       radius: float) -> np.ndarray:
  """`n` points `mean + z`, z ~ N(0, I) with its norm clipped to `radius`."""
  z = rng.standard_normal((n, len(mean)))
  norm = np.linalg.norm(z, axis=1, keepdims=True)
  z = z * np.minimum(1.0, radius / np.maximum(norm, 1e-12))
  return mean + z


def sample_mixture(rng: np.random.Generator, *, means: Sequence[Sequence[float]],
                   counts: Sequence[int], radius: float):
  """Points of class c drawn around `means[c]`, `counts[c]` of them."""
  xs, ys = [], []
  for c, (mean, n) in enumerate(zip(means, counts)):
    xs.append(truncated_gaussian(rng, n, np.asarray(mean, np.float64), radius))
    ys.append(np.full(n, c))
  return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def gaussians(*, seed: int = 0, mean0: Sequence[float] = (0.0, 5.0),
              mean1: Sequence[float] = (5.0, 0.0), n_minority: int = 20,
              n_majority: int = 200, radius: float = 5.0, n_test_per_class: int = 1000,
              **_) -> Dataset:
  """Two truncated Gaussians; class 0 is the minority (paper Figure 1 defaults).

  Any dimension (the length of the means) and any class sizes give the general
  d-dimensional truncated mixture. The training set is drawn exactly as in the
  paper; validation is a fresh draw with the same imbalance and the test set a
  fresh balanced draw, each from its own stream of the data seed.
  """
  if len(mean0) != len(mean1):
    raise ValueError(f"data.mean0 and data.mean1 differ in dimension: {len(mean0)} vs {len(mean1)}")
  means, counts = (mean0, mean1), (n_minority, n_majority)
  train_rng, val_rng, test_rng = (np.random.default_rng([seed, i]) for i in range(3))
  train = make_split(*sample_mixture(train_rng, means=means, counts=counts, radius=radius))
  val = make_split(*sample_mixture(val_rng, means=means, counts=counts, radius=radius))
  test = make_split(*sample_mixture(
      test_rng, means=means, counts=(n_test_per_class,) * 2, radius=radius))
  return Dataset(train=train, val=val, test=test, num_classes=2, num_groups=2)
