"""Importance weights and every way of using them (docs/losses.md), in one place.

Weights are a function of the *training* split's group counts. How they are used
is the weighting mode:
- `none`: every loss weight 1 (ERM).
- `reweighted`: loss weights `w_g`; the batch objective is `mean_i(w_i * loss_i)`.
- `undersampled`: the training split keeps each example with probability
  `w_i / max w` once, with a fixed seed (`undersample_indices`); weights 1 after.
- `resampled`: every epoch draws n examples with replacement with probabilities
  proportional to w (`sampling_probs`, used by `steps.epoch_indices`); weights 1.
- `dro`: group DRO (Sagawa et al. 2020); adversarial group probabilities live in
  the train state and are updated by the reduction of `make_reduction`.
- `cvar`: CVaR DRO (Levy et al. 2020): the mean of the batch's worst `alpha`
  fraction of losses (`group_robust.cvar_reduction`); weights 1.

Every split's examples carry the *loss* weight of their group, so a weighted
validation loss means the same objective as training. Names are resolved once, by
`make_reduction`; the jitted step never branches on a string.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

WEIGHTING_MODES = ("none", "reweighted", "undersampled", "resampled", "dro", "cvar")

# (loss_B, weight_B, groups_B, adv_probs_G) -> (objective, new adv_probs_G).
Reduction = Callable[[jax.Array, jax.Array, jax.Array, jax.Array],
                     tuple[jax.Array, jax.Array]]


def _check_mode(mode: str) -> None:
  if mode not in WEIGHTING_MODES:
    raise ValueError(f"weighting.mode must be one of {WEIGHTING_MODES}, got {mode!r}")


def group_counts(groups: np.ndarray, num_groups: int) -> np.ndarray:
  """Number of examples in each group, shape (num_groups,)."""
  return np.bincount(np.asarray(groups), minlength=num_groups)[:num_groups]


def importance_weights(train_group_counts: np.ndarray, *, exponent: float = 1.0
                       ) -> np.ndarray:
  """(G,) float64 w_g proportional to (1/n_g)**exponent, mean 1 over the training set.

  Groups absent from the training set get weight 0 (there is nothing to weight).
  Computed in log space, so that any finite exponent gives finite weights: for a
  large one, (1/n_g)**exponent underflows to 0 for every group, and the weights of
  the smallest group tend to N / n_min, the others' to 0.
  """
  counts = np.asarray(train_group_counts, dtype=np.float64)
  present = counts > 0
  log_raw = np.full_like(counts, -np.inf)
  log_raw[present] = -exponent * np.log(counts[present])
  log_raw -= log_raw[present].max()  # The largest raw weight becomes 1: no overflow.
  raw = np.exp(log_raw)
  return raw * (np.sum(counts) / np.sum(counts * raw))


def effective_number_weights(train_group_counts: np.ndarray, *, beta: float
                             ) -> np.ndarray:
  """(G,) float64 class-balanced weights of Cui et al. (2019): `(1 - beta) / (1 - beta^n_g)`,
  the inverse "effective number" of examples, scaled to sum to the number of groups
  present (as LDAM-DRW's code scales them to the number of classes). Absent groups: 0.

  `1 - beta^n` is computed as `-expm1(n log beta)`, exact to rounding for beta near 1.
  """
  counts = np.asarray(train_group_counts, dtype=np.float64)
  present = counts > 0
  raw = np.zeros_like(counts)
  raw[present] = -np.expm1(np.log(beta)) / -np.expm1(counts[present] * np.log(beta))
  return raw * (np.sum(present) / np.sum(raw))


def group_weights(train_group_counts: np.ndarray, *, mode: str,
                  exponent: float = 1.0, cb_beta: float | None = None) -> np.ndarray:
  """Per-group *loss* weights: the importance weights for `reweighted`, else ones.

  Args:
    train_group_counts: (G,) training examples per group.
    mode: a weighting mode (WEIGHTING_MODES).
    exponent: w_g is proportional to (1 / n_g) ** exponent.
    cb_beta: if given, `effective_number_weights` with this beta instead.

  Returns:
    (G,) float32 weights; for `reweighted`, `sum_g n_g w_g / sum_g n_g == 1`
    (with `cb_beta`: `sum_g w_g` is the number of groups present).
  """
  _check_mode(mode)
  if mode != "reweighted":
    return np.ones(len(train_group_counts), np.float32)
  if cb_beta is not None:
    return effective_number_weights(train_group_counts, beta=cb_beta).astype(np.float32)
  return importance_weights(train_group_counts, exponent=exponent).astype(np.float32)


def undersample_indices(groups: np.ndarray, train_group_counts: np.ndarray, *,
                        exponent: float, seed: int) -> np.ndarray:
  """Sorted indices of the examples kept by undersampling (docs/losses.md).

  Each example is kept once with probability `w_i / max w`, with its own seed, so
  every group shrinks to about the smallest group's size (exactly so in
  expectation for exponent 1) and the kept set does not depend on the run seed.
  """
  w_G = importance_weights(train_group_counts, exponent=exponent)
  keep_p = w_G[np.asarray(groups)] / w_G.max()
  u = np.random.default_rng([seed, 0x5D]).random(len(keep_p))
  return np.flatnonzero(u < keep_p)


def sampling_probs(groups: np.ndarray, train_group_counts: np.ndarray, *, mode: str,
                   exponent: float) -> np.ndarray | None:
  """(N,) per-example sampling probabilities for `resampled` (proportional to w), else None."""
  _check_mode(mode)
  if mode != "resampled":
    return None
  w_N = importance_weights(train_group_counts, exponent=exponent)[np.asarray(groups)]
  return w_N / w_N.sum()


def weighted_mean(loss_B: jax.Array, weight_B: jax.Array) -> jax.Array:
  """The batch objective `mean_i(w_i * loss_i)`."""
  return jnp.mean(weight_B * loss_B)


def group_mean_losses(loss_B: jax.Array, groups_B: jax.Array, num_groups: int
                      ) -> tuple[jax.Array, jax.Array]:
  """(G,) mean loss of each group in the batch (0 where absent) and (G,) counts."""
  onehot_BxG = jax.nn.one_hot(groups_B, num_groups, dtype=loss_B.dtype)
  count_G = jnp.sum(onehot_BxG, axis=0)
  loss_G = (loss_B @ onehot_BxG) / jnp.maximum(count_G, 1.0)
  return loss_G, count_G


def dro_update(adv_probs_G: jax.Array, loss_G: jax.Array, *, lr: float) -> jax.Array:
  """Exponentiated-gradient ascent on the simplex: q_g <- q_g exp(lr * loss_g), renormalised.

  Computed in log space (softmax) so that large `lr * loss` cannot overflow.
  """
  return jax.nn.softmax(jnp.log(adv_probs_G) + lr * loss_G)


def weighted_reduction(loss_B, weight_B, groups_B, adv_probs_G):
  """`mean_i(w_i * loss_i)`; the group probabilities pass through unchanged."""
  del groups_B
  return weighted_mean(loss_B, weight_B), adv_probs_G


def make_reduction(mode: str, *, num_groups: int, adv_probs_lr: float = 0.0,
                   adjustment: np.ndarray | None = None) -> Reduction:
  """The batch objective of weighting `mode`, resolved once at build time.

  Every mode but `dro` returns `mean_i(w_i * loss_i)` (the loss weights are 1
  unless `reweighted`) and leaves the group probabilities alone. `dro` follows the
  reference implementation of Sagawa et al. (2020): the batch's mean loss per group
  `l_g` (0 for a group absent from the batch) plus the adjustment `a_g`
  (`group_robust.dro_adjustment`; 0 by default) moves the probabilities,
  `q <- normalise(q * exp(adv_probs_lr * (l + a)))` with no gradient through q, and
  the objective is `sum_g q_g (l_g + a_g)` with the updated q. The reference adds
  `a` to its group losses in place, so its objective holds `a` too; a constant, it
  changes the objective's value, not its gradient.
  """
  _check_mode(mode)
  if mode == "cvar":  # Its reduction needs alpha: group_robust.config_reduction.
    raise ValueError("weighting.mode 'cvar' reduces with group_robust.cvar_reduction")
  if mode != "dro":
    return weighted_reduction
  adj_G = (None if adjustment is None or not np.any(adjustment)
           else jnp.asarray(adjustment, jnp.float32))

  def dro(loss_B, weight_B, groups_B, adv_probs_G):
    del weight_B
    loss_G, _ = group_mean_losses(loss_B, groups_B, num_groups)
    if adj_G is not None:
      loss_G = loss_G + adj_G
    q_G = jax.lax.stop_gradient(
        dro_update(adv_probs_G, jax.lax.stop_gradient(loss_G), lr=adv_probs_lr))
    return jnp.sum(q_G * loss_G), q_G

  return dro
