"""Validation of the method options of the config: the baselines' loss parameters,
the focal loss, class-balanced weights, DRW, annealing, one-draw resampling and
undersampling's extras (docs/losses.md). `polyjax.config.validate` calls `check`;
each failure is one ConfigError line naming the field.
"""

from __future__ import annotations

import math

from polyjax.errors import check_field as _check, check_known as _known


def check(c) -> None:
  """The baselines' loss parameters, class-balanced weights, DRW and annealing
  (polyjax.weight_schedule): ConfigError naming the first field that cannot be
  trained or would be ignored."""
  from polyjax import weight_schedule

  _check(0 < c.loss.max_margin < math.inf, "loss.max_margin", "> 0 and finite",
         c.loss.max_margin)
  _check(0 < c.loss.inv_temperature < math.inf, "loss.inv_temperature", "> 0 and finite",
         c.loss.inv_temperature)
  _check(0 <= c.loss.tau < float("inf"), "loss.tau", ">= 0 and finite", c.loss.tau)
  _check(0 <= c.loss.gamma < float("inf"), "loss.gamma", ">= 0 and finite", c.loss.gamma)
  _check(0 <= c.loss.focal_gamma < math.inf, "loss.focal_gamma", ">= 0 and finite",
         c.loss.focal_gamma)
  w = c.weighting
  _known("weighting.anneal", w.anneal, weight_schedule.ANNEALS)
  _check(0 < w.anneal_sigmoid_c < math.inf, "weighting.anneal_sigmoid_c", "> 0 and finite",
         w.anneal_sigmoid_c)
  _check(isinstance(w.drw_epoch, int) and 0 <= w.drw_epoch < c.num_epochs,
         "weighting.drw_epoch", f"a whole epoch in [0, num_epochs={c.num_epochs})", w.drw_epoch)
  if w.cb_beta is not None:
    _check(0 < w.cb_beta < 1, "weighting.cb_beta", "in (0, 1) or None", w.cb_beta)
    _check(w.exponent == 1.0, "weighting.exponent",
           "1.0 with weighting.cb_beta set (the class-balanced weights have no exponent)",
           w.exponent)
  _check(not w.resample_once or w.mode == "resampled", "weighting.resample_once",
         "False unless weighting.mode='resampled'", w.resample_once)
  _check(not w.evaluate_extras or w.mode == "undersampled", "weighting.evaluate_extras",
         "False unless weighting.mode='undersampled' (only it leaves training examples out)",
         w.evaluate_extras)
  for field, used in (("cb_beta", w.cb_beta is not None), ("drw_epoch", w.drw_epoch != 0),
                      ("anneal", w.anneal != "none")):
    _check(not used or w.mode == "reweighted", f"weighting.{field}",
           "unset unless weighting.mode='reweighted' (only its loss weights change)",
           w[field])
  _check(w.anneal == "none" or (w.drw_epoch == 0 and w.cb_beta is None), "weighting.anneal",
         "'none' with weighting.drw_epoch or weighting.cb_beta set (it anneals (1/n_g)**exponent)",
         w.anneal)
