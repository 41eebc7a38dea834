"""Loss weights that change over training (docs/losses.md, "Weights over training").

- Deferred re-weighting (DRW; Cao et al. 2019, LDAM-DRW's code): loss weights 1
  before epoch `drw_epoch` (0-based), the run's weights from it on.
- Annealed importance weights (the paper's code, `undersampling_schedule`): the
  exponent of the weights moves from 0 to `weighting.exponent` with the epoch t of
  T = num_epochs: `linear` t/T, `sigmoid` sigmoid(c (t/T - 1/2)), `step` 0 up to
  epoch T // 2 and 1 after it. Weights stay normalised to mean 1 over the training
  split at every epoch.

Both are functions of the optimizer step in the state (epoch = step // steps per
epoch), computed inside the compiled step, so that members stacked for a sweep share
one program and a resumed run gets the weights of an uninterrupted one. Names are
resolved once, by `make_weight_fn`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

ANNEALS = ("none", "linear", "sigmoid", "step")

# (weight_B, groups_B, step) -> the batch's loss weights at optimizer step `step`.
WeightFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def anneal_fraction(name: str, epoch, num_epochs: int, *, sigmoid_c: float = 10.0):
  """The fraction s of the target exponent at `epoch` (0-based; NumPy or JAX arrays).

  As the paper's code: its kept examples are reweighted by `w^(1 - g)` where
  `w^g` is its keep probability, g = 1 - t/T (linear), sigmoid(-c (t/T - 1/2))
  (sigmoid), or 1 up to T // 2 and 0 after (step).
  """
  xp = jnp if isinstance(epoch, jax.Array) else np
  x = epoch / num_epochs
  if name == "linear":
    return x
  if name == "sigmoid":
    return 1.0 / (1.0 + xp.exp(-sigmoid_c * (x - 0.5)))
  if name == "step":
    return xp.where(epoch > num_epochs // 2, 1.0, 0.0)
  raise ValueError(f"weighting.anneal must be one of {ANNEALS[1:]}, got {name!r}")


def annealed_group_weights(train_group_counts, *, exponent: float, fraction):
  """(G,) weights `(1/n_g)^(exponent * fraction)`, mean 1 over the training split,
  absent groups 0: `weighting.importance_weights` with the exponent scaled, in float32
  from jnp arrays (traced `fraction`) or float64 from NumPy ones."""
  xp = jnp if isinstance(fraction, jax.Array) else np
  counts = xp.asarray(train_group_counts, xp.float32 if xp is jnp else xp.float64)
  present = counts > 0
  log_n = xp.log(xp.where(present, counts, 1.0))
  log_raw = -exponent * fraction * log_n
  log_raw = log_raw - xp.max(xp.where(present, log_raw, -xp.inf))  # Largest raw weight 1.
  raw = xp.where(present, xp.exp(log_raw), 0.0)
  return raw * (xp.sum(counts) / xp.sum(counts * raw))


def make_weight_fn(*, anneal: str = "none", drw_epoch: int = 0, steps_per_epoch: int,
                   num_epochs: int, train_group_counts=None, exponent: float = 1.0,
                   sigmoid_c: float = 10.0) -> WeightFn | None:
  """The loss weights of each step, or None when they do not change over training.

  DRW passes the example weights through from `drw_epoch` on and gives 1 before.
  An anneal replaces them with `annealed_group_weights` of the step's epoch (the
  weights are a function of the group, the training counts and `exponent`).
  """
  if anneal == "none" and drw_epoch == 0:
    return None
  if anneal != "none" and drw_epoch:
    raise ValueError("weighting.anneal and weighting.drw_epoch exclude each other")
  if anneal == "none":
    start = drw_epoch * steps_per_epoch

    def drw(weight_B, groups_B, step):
      del groups_B
      return jnp.where(step >= start, weight_B, jnp.ones_like(weight_B))

    return drw
  anneal_fraction(anneal, 0, num_epochs)  # An unknown name fails here, at build time.
  counts_G = np.asarray(train_group_counts, np.float32)

  def annealed(weight_B, groups_B, step):
    epoch = (step // steps_per_epoch).astype(jnp.float32)
    s = anneal_fraction(anneal, epoch, num_epochs, sigmoid_c=sigmoid_c)
    w_G = annealed_group_weights(jnp.asarray(counts_G), exponent=exponent,
                                 fraction=jnp.asarray(s, jnp.float32))
    return w_G[groups_B].astype(weight_B.dtype)

  return annealed


def config_weight_fn(config, dataset) -> WeightFn | None:
  """`make_weight_fn` of a run's config and its (loaded) dataset."""
  w = config.weighting
  return make_weight_fn(anneal=w.anneal, drw_epoch=w.drw_epoch,
                        steps_per_epoch=len(dataset.train) // config.batch_size,
                        num_epochs=config.num_epochs,
                        train_group_counts=dataset.train_group_counts,
                        exponent=w.exponent, sigmoid_c=w.anneal_sigmoid_c)
