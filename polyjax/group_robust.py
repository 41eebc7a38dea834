"""Group-robust objectives beyond importance weights (README, "Methods"): group DRO's
generalisation adjustment (Sagawa et al. 2020) and the batch reduction a config's
`weighting` section chooses, with the checks of their fields.

Group DRO itself (its probabilities and their update) is `weighting.make_reduction`;
this module supplies its adjustment and picks the reduction of every mode.
"""

from __future__ import annotations

import math

import numpy as np

from polyjax import weighting
from polyjax.errors import ConfigError


def dro_adjustment(train_group_counts: np.ndarray, c: float) -> np.ndarray:
  """(G,) float32 `C / sqrt(n_g)`: group DRO's generalisation adjustment (Sagawa et
  al. 2020, Sec. 3.3), n_g the training split's group counts. A group absent from
  the training split gets 0 (the reference code would divide by zero there)."""
  counts = np.asarray(train_group_counts, np.float64)
  safe = np.sqrt(np.maximum(counts, 1.0))
  return np.where(counts > 0, c / safe, 0.0).astype(np.float32)


def config_reduction(weighting_config, train_group_counts: np.ndarray) -> weighting.Reduction:
  """The batch reduction of a config's `weighting` section, for a training split with
  `train_group_counts` (G,) examples per group."""
  w = weighting_config
  return weighting.make_reduction(
      w.mode, num_groups=len(train_group_counts), adv_probs_lr=w.adv_probs_lr,
      adjustment=dro_adjustment(train_group_counts, w.generalization_adjustment))


def _check(ok: bool, field: str, rule: str, value) -> None:
  if not ok:
    raise ConfigError(f"config.{field} must be {rule}, got {value!r}")


def check_config(c) -> None:
  """ConfigError naming the first group-robustness field (`weighting.*`) that cannot
  be trained or would be ignored; called by `config.validate`."""
  adjust = c.weighting.generalization_adjustment
  _check(0 <= adjust < math.inf, "weighting.generalization_adjustment", ">= 0 and finite", adjust)
  _check(adjust == 0 or c.weighting.mode == "dro", "weighting.generalization_adjustment",
         "0 unless weighting.mode='dro' (no other mode reads it)", adjust)
