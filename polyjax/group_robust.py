"""Group-robust objectives beyond importance weights (README, "Methods"): group DRO's
generalisation adjustment, static or automatic (Sagawa et al. 2020), CVaR DRO (Levy et al. 2020, as in
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


def initial_auto_state(weighting_config, train_group_counts: np.ndarray) -> dict | None:
  """`TrainState.dro_auto` of a run: None unless `weighting.automatic_adjustment`
  (a run without it keeps the arrays its checkpoints always had), else (G,) float32
  'ema' (each group's moving average of training losses), 'initialized' (1 once the
  group was in a batch) and 'adjustment' (the term added to each group's loss; the
  static one until the first epoch's end)."""
  w = weighting_config
  if not w.automatic_adjustment:
    return None
  g = len(train_group_counts)
  return {"ema": np.zeros(g, np.float32), "initialized": np.zeros(g, np.float32),
          "adjustment": dro_adjustment(train_group_counts, w.generalization_adjustment)}


def ema_update(auto: dict, loss_G: jax.Array, count_G: jax.Array, gamma: float) -> dict:
  """One batch of group DRO's loss averages (the reference's `update_exp_avg_loss`):
  a group's first batch sets its average, later ones move it by `gamma`, a group
  absent from the batch keeps it."""
  present_G = (count_G > 0).astype(loss_G.dtype)
  prev_G = (1.0 - gamma * present_G) * (auto["initialized"] > 0)
  return {**auto, "ema": auto["ema"] * prev_G + loss_G * (1.0 - prev_G),
          "initialized": jnp.maximum(auto["initialized"], present_G)}


def next_adjustment(val_group_loss: np.ndarray, ema: np.ndarray,
                    train_group_counts: np.ndarray) -> np.ndarray:
  """(G,) float32 term added to each group's loss after an epoch: the reference's
  `adj = (val_loss - ema) sqrt(n_g)` divided by `sqrt(n_g)`, i.e. the generalisation
  gap, where every component of `adj` is > 0 (and finite), else 0 for every group."""
  gap = np.asarray(val_group_loss, np.float64) - np.asarray(ema, np.float64)
  adj = gap * np.sqrt(np.asarray(train_group_counts, np.float64))
  ok = np.all(np.isfinite(adj)) and np.all(adj > 0)
  return (gap if ok else np.zeros_like(gap)).astype(np.float32)


def auto_reduction(*, num_groups: int, adv_probs_lr: float, gamma: float):
  """Group DRO with the automatic adjustment: a reduction whose group state is
  `(adv_probs_G, dro_auto)`. Each batch moves the loss averages (`ema_update`, from
  the losses without adjustment, as the reference) and the probabilities by the
  losses plus `dro_auto['adjustment']`; the objective as `make_reduction`'s."""

  def dro(loss_B, weight_B, groups_B, group_state):
    del weight_B
    adv_probs_G, auto = group_state
    loss_G, count_G = weighting.group_mean_losses(loss_B, groups_B, num_groups)
    auto = ema_update(auto, jax.lax.stop_gradient(loss_G), count_G, gamma)
    loss_G = loss_G + auto["adjustment"]
    q_G = jax.lax.stop_gradient(
        weighting.dro_update(adv_probs_G, jax.lax.stop_gradient(loss_G), lr=adv_probs_lr))
    return jnp.sum(q_G * loss_G), (q_G, auto)

  return dro


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
  if w.automatic_adjustment:
    return auto_reduction(num_groups=len(train_group_counts), adv_probs_lr=w.adv_probs_lr,
                          gamma=w.loss_ema_gamma)
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
  auto = c.weighting.automatic_adjustment
  _check(not auto or c.weighting.mode == "dro", "weighting.automatic_adjustment",
         "False unless weighting.mode='dro' (no other mode reads it)", auto)
  _check(not auto or c.eval_every_epochs == 1, "eval_every_epochs",
         "1 with weighting.automatic_adjustment (it reads validation after every epoch)",
         c.eval_every_epochs)
  gamma = c.weighting.loss_ema_gamma
  _check(0 < gamma <= 1, "weighting.loss_ema_gamma", "in (0, 1]", gamma)
  _check(gamma == 0.1 or auto, "weighting.loss_ema_gamma",
         "its default 0.1 unless weighting.automatic_adjustment (nothing else reads it)", gamma)
