"""A miniature of the paper's main table on scikit-learn's digits: offline, on a CPU.

    python -m polyjax.study --study=configs/studies/digits_mini.py --workdir=runs/digits_mini

Digits 0-4 against 5-9, class 1 subsampled 10x (about 600 vs 60 training images), a
balanced test set of 150 per class (configs/digits_poly.py); an MLP (3 hidden layers
of 200) trained for 200 epochs, long enough to interpolate the training set. Cells:
loss CE or Poly (logit kind, alpha 2, beta 1) x No IW (weighting.mode 'none'), IW
('reweighted', exponent 1) or IW-Exp ('reweighted', exponent 2); the -ES columns are
the same runs at their best val/reweighted_acc epoch (evaluated every 20 epochs).

The paper's protocol, smaller: stage 1 tries 4 learning rates at batch sizes 64 and
512 (seed 0) and keeps, per batch size, the lr with the best val/reweighted_acc at
the last epoch; stage 2 trains 10 seeds (1-10) of each choice. 6 cells x (8 + 20)
runs in 24 stacked programs: about 3 minutes on an idle 2-core CPU (5 to 9 shared
with other jobs).
"""

_COMMON = {"num_epochs": 200, "eval_every_epochs": 20, "checkpoint_every_epochs": 100,
           "test_on_best": False,  # ES values come from the logged metrics.
           "wandb.mode": "disabled"}
LOSSES = {
    "ce": ("CE", {"loss.name": "ce"}),
    "poly": ("Poly", {"loss.name": "poly", "loss.kind": "logit", "loss.alpha": 2.0,
                      "loss.beta": 1.0}),
}
WEIGHTINGS = {
    "erm": ("No IW", {"weighting.mode": "none"}),
    "iw": ("IW", {"weighting.mode": "reweighted", "weighting.exponent": 1.0}),
    "iwexp": ("IW-Exp", {"weighting.mode": "reweighted", "weighting.exponent": 2.0}),
}


def get_study():
  return {
      "title": "Imbalanced binary digits (MLP): CE and Poly, with and without importance "
               "weights",
      "description": "A miniature of the paper's main table on offline data; test "
                     "reweighted_acc is the mean of the two class accuracies on the "
                     "balanced test set.",
      "protocol": {"lrs": [0.01, 0.03, 0.1, 0.3], "batch_sizes": [64, 512],
                   "metric": "val/reweighted_acc", "at": "last", "stage1_seed": 0,
                   "seeds": 10},
      "table": {"rows": ["Digits / CE", "Digits / Poly"],
                "columns": ["No IW", "IW", "IW-Exp", "IW-ES", "IW-Exp-ES"],
                "metric": "test/reweighted_acc",
                "paired": [["Digits / CE", "Digits / Poly"]]},
      "cells": [{"name": f"{loss}_{weighting}", "config": "configs/digits_poly.py",
                 "row": f"Digits / {loss_label}", "column": column,
                 "overrides": {**_COMMON, **loss_fields, **weighting_fields}}
                for loss, (loss_label, loss_fields) in LOSSES.items()
                for weighting, (column, weighting_fields) in WEIGHTINGS.items()],
  }
