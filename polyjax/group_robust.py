"""Group-robust objectives beyond importance weights (README, "Methods"): group DRO's
generalisation adjustment (Sagawa et al. 2020), CVaR DRO (Levy et al. 2020, as in
SubpopBench) and the batch reduction a config's `weighting` section chooses, with
the checks of their fields.

Group DRO itself (its probabilities and their update) is `weighting.make_reduction`;
this module supplies its adjustment, CVaR's reduction, and picks the reduction of
every mode.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from polyjax import weighting
from polyjax.errors import check_field as _check


def dro_adjustment(train_group_counts: np.ndarray, c: float) -> np.ndarray:
  """(G,) float32 `C / sqrt(n_g)`: group DRO's generalisation adjustment (Sagawa et
  al. 2020, Sec. 3.3), n_g the training split's group counts. A group absent from
  the training split gets 0 (the reference code would divide by zero there)."""
  counts = np.asarray(train_group_counts, np.float64)
  safe = np.sqrt(np.maximum(counts, 1.0))
  return np.where(counts > 0, c / safe, 0.0).astype(np.float32)


def cvar_rank_weights(m: int, alpha: float) -> np.ndarray:
  """(m,) float64 weights of the losses sorted from the largest: `1 / (alpha m)` for
  the first `floor(alpha m)`, the rest of the unit mass on the next one, 0 after.

  The best response of CVaR at level alpha without regulariser (Levy et al. 2020,
  SubpopBench's `joint_dro.RobustLoss(alpha, 0, 'cvar')`): the weighted sum is the
  mean of the worst alpha fraction of the batch, the example at the cut counted in
  part. alpha = 1 gives the mean; alpha m < 1 the largest loss alone.
  """
  cutoff = int(alpha * m)  # As the reference rounds it (Python float, then int).
  w = np.zeros(m)
  w[:cutoff] = 1.0 / (alpha * m)
  if cutoff < m:
    w[cutoff] = 1.0 - cutoff / (alpha * m)
  return w


def cvar_reduction(alpha: float) -> weighting.Reduction:
  """CVaR DRO's batch objective `sum_i p_i loss_i`, p from `cvar_rank_weights` by
  the losses' ranks, with no gradient through p (as the reference's best response).
  Ties may be ranked either way: the value is the same. Loss weights and group
  probabilities are not used (the latter pass through)."""

  def cvar(loss_B, weight_B, groups_B, adv_probs_G):
    del weight_B, groups_B
    rank_w = jnp.asarray(cvar_rank_weights(loss_B.shape[0], alpha), loss_B.dtype)
    order = jnp.argsort(-jax.lax.stop_gradient(loss_B))  # Largest first.
    p_B = jnp.zeros_like(loss_B).at[order].set(rank_w)
    return jnp.sum(p_B * loss_B), adv_probs_G

  return cvar


def config_reduction(weighting_config, train_group_counts: np.ndarray) -> weighting.Reduction:
  """The batch reduction of a config's `weighting` section, for a training split with
  `train_group_counts` (G,) examples per group."""
  w = weighting_config
  if w.mode == "cvar":
    return cvar_reduction(w.cvar_alpha)
  return weighting.make_reduction(
      w.mode, num_groups=len(train_group_counts), adv_probs_lr=w.adv_probs_lr,
      adjustment=dro_adjustment(train_group_counts, w.generalization_adjustment))


def check_config(c) -> None:
  """ConfigError naming the first group-robustness field (`weighting.*`) that cannot
  be trained or would be ignored; called by `config.validate`."""
  adjust = c.weighting.generalization_adjustment
  _check(0 <= adjust < math.inf, "weighting.generalization_adjustment", ">= 0 and finite", adjust)
  _check(adjust == 0 or c.weighting.mode == "dro", "weighting.generalization_adjustment",
         "0 unless weighting.mode='dro' (no other mode reads it)", adjust)
  alpha = c.weighting.cvar_alpha
  _check(0 < alpha <= 1, "weighting.cvar_alpha", "in (0, 1]", alpha)
  _check(alpha == 0.1 or c.weighting.mode == "cvar", "weighting.cvar_alpha",
         "its default 0.1 unless weighting.mode='cvar' (no other mode reads it)", alpha)
