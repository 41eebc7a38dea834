"""Importance weights and the weighted reduction of per-example losses (SPEC §2).

Weights are a function of the *training* split's group counts; every split's
examples carry the weight of their group so that a weighted validation loss means
the same objective as training. The batch objective is `mean_i(w_i * loss_i)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

WEIGHTING_MODES = ("none", "reweighted")


def group_counts(groups: np.ndarray, num_groups: int) -> np.ndarray:
  """Number of examples in each group, shape (num_groups,)."""
  return np.bincount(np.asarray(groups), minlength=num_groups)[:num_groups]


def group_weights(train_group_counts: np.ndarray, *, mode: str,
                  exponent: float = 1.0) -> np.ndarray:
  """Per-group importance weights, normalised to mean 1 over the training set.

  Args:
    train_group_counts: (G,) training examples per group.
    mode: a weighting mode; "none" gives all ones.
    exponent: w_g is proportional to (1 / n_g) ** exponent.

  Returns:
    (G,) float32 weights with `sum_g n_g w_g / sum_g n_g == 1`. Groups absent
    from the training set get weight 0 (there is nothing to weight).
  """
  counts = np.asarray(train_group_counts, dtype=np.float64)
  if mode == "none":
    return np.ones_like(counts, dtype=np.float32)
  if mode != "reweighted":
    raise ValueError(f"weighting.mode must be one of {WEIGHTING_MODES}, got {mode!r}")
  present = counts > 0
  raw = np.zeros_like(counts)
  raw[present] = (1.0 / counts[present]) ** exponent
  raw /= np.sum(counts * raw) / np.sum(counts)
  return raw.astype(np.float32)


def weighted_mean(loss_B: jax.Array, weight_B: jax.Array) -> jax.Array:
  """The batch objective `mean_i(w_i * loss_i)`."""
  return jnp.mean(weight_B * loss_B)
