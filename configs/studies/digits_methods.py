"""Every loss and weighting method on the digits miniature, 10 seeds each, as one study.

    python -m polyjax.study --study=configs/studies/digits_methods.py --workdir=runs/digits_methods

configs/digits_poly.py's data and MLP (about 600 vs 60 training images, a balanced
test set), batch 64, 40 epochs, each method at lr 0.02 unless it sets its own (no
stage 1: the methods share one lr, so the table compares them at equal tuning
effort, not each at its best), seeds 1-10. The report's main table gives balanced
test accuracy (test/reweighted_acc), last epoch and early-stopped; its accuracy table
adds average and worst-group accuracy per method. The methods that read a stage-1
run (README, "Methods that read a stage-1 run") read, per seed, the run of the same
seed of the cell their `stage1_cell` names: JTT a CE run stopped after 5 epochs
(JTT needs training errors), DFR and the estimated label-shift weights the CE row.
"""

_COMMON = {"eval_every_epochs": 5, "checkpoint_every_epochs": 40, "test_on_best": False,
           "wandb.mode": "disabled"}

# Row label -> overrides of configs/digits_poly.py.
METHODS = {
    "CE": {"loss.name": "ce", "weighting.mode": "none"},
    "CE+IW": {"loss.name": "ce", "weighting.mode": "reweighted"},
    "CE+US": {"loss.name": "ce", "weighting.mode": "undersampled"},
    "CE+RS": {"loss.name": "ce", "weighting.mode": "resampled"},
    "CE+DRO": {"loss.name": "ce", "weighting.mode": "dro", "weighting.adv_probs_lr": 0.05},
    "Poly": {"loss.name": "poly", "weighting.mode": "none"},
    "Poly+IW": {"loss.name": "poly", "weighting.mode": "reweighted"},
    "Poly+DRO": {"loss.name": "poly", "weighting.mode": "dro", "weighting.adv_probs_lr": 0.05},
    "LDAM": {"loss.name": "ldam", "loss.max_margin": 0.5, "loss.inv_temperature": 1.0,
             "weighting.mode": "none"},
    "LA": {"loss.name": "la", "loss.tau": 1.0, "weighting.mode": "none"},
    "CDT": {"loss.name": "cdt", "loss.gamma": 0.3, "weighting.mode": "none"},
    "VS": {"loss.name": "vs", "loss.tau": 1.0, "loss.gamma": 0.3, "weighting.mode": "none"},
    "VS-group": {"loss.name": "vs_group", "loss.gamma": 0.3, "weighting.mode": "none"},
    "VS-group+DRO": {"loss.name": "vs_group", "loss.gamma": 0.3, "weighting.mode": "dro",
                     "weighting.adv_probs_lr": 0.05},
    "Poly(a=2)+IW-Exp3": {"loss.name": "poly", "loss.alpha": 2.0,
                          "weighting.mode": "reweighted", "weighting.exponent": 3.0},
    "Poly-exp+IW": {"loss.name": "poly", "loss.kind": "exp", "weighting.mode": "reweighted"},
    "Poly-linear(a=2)+IW": {"loss.name": "poly", "loss.kind": "linear", "loss.alpha": 2.0,
                            "weighting.mode": "reweighted"},
    # At lr 0.05 these two can blow up (the exp head grows exponentially; DRO puts
    # nearly all weight on a few minority examples); the same methods at lr 0.01:
    "Poly-exp+IW@lr0.01": {"loss.name": "poly", "loss.kind": "exp",
                           "weighting.mode": "reweighted", "lr": 0.01},
    "Poly+DRO@lr0.01": {"loss.name": "poly", "weighting.mode": "dro",
                        "weighting.adv_probs_lr": 0.05, "lr": 0.01},
    # LDAM-DRW's options: focal loss, class-balanced weights, re-weighting deferred to
    # 80% of training (its 160 of 200 epochs; digits_poly trains 40).
    "Focal": {"loss.name": "focal", "loss.focal_gamma": 1.0, "weighting.mode": "none"},
    "CE+CB": {"loss.name": "ce", "weighting.mode": "reweighted", "weighting.cb_beta": 0.9999},
    "CE+DRW": {"loss.name": "ce", "weighting.mode": "reweighted", "weighting.cb_beta": 0.9999,
               "weighting.drw_epoch": 32},
    "LDAM-DRW": {"loss.name": "ldam", "loss.max_margin": 0.5, "loss.inv_temperature": 1.0,
                 "weighting.mode": "reweighted", "weighting.cb_beta": 0.9999,
                 "weighting.drw_epoch": 32},
    # The paper's code's annealed importance weights, logit adjustment with importance
    # weights, and resampling drawn once. 'step' (and the steep middle of 'sigmoid')
    # raises the minority weight tenfold within an epoch: at lr 0.02 some seeds of
    # the poly loss then leave their interpolating solution and collapse.
    "Poly+IW-anneal-linear": {"loss.name": "poly", "weighting.mode": "reweighted",
                              "weighting.anneal": "linear"},
    "Poly+IW-anneal-sigmoid": {"loss.name": "poly", "weighting.mode": "reweighted",
                               "weighting.anneal": "sigmoid"},
    "Poly+IW-anneal-step": {"loss.name": "poly", "weighting.mode": "reweighted",
                            "weighting.anneal": "step"},
    "LA+IW": {"loss.name": "la", "loss.tau": 1.0, "weighting.mode": "reweighted"},
    "CE+RS-once": {"loss.name": "ce", "weighting.mode": "resampled",
                   "weighting.resample_once": True},
    # Group DRO's generalisation adjustment C/sqrt(n_g), and CVaR DRO.
    "CE+DRO-adj": {"loss.name": "ce", "weighting.mode": "dro", "weighting.adv_probs_lr": 0.05,
                   "weighting.generalization_adjustment": 1.0},
    # Its automatic variant: the term is each group's generalisation gap (validation
    # loss minus training-loss average), set after every epoch's evaluation.
    "CE+DRO-auto": {"loss.name": "ce", "weighting.mode": "dro", "weighting.adv_probs_lr": 0.05,
                    "weighting.automatic_adjustment": True, "eval_every_epochs": 1},
    "CE+CVaR": {"loss.name": "ce", "weighting.mode": "cvar", "weighting.cvar_alpha": 0.2},
    # LDAM with the cosine head its scale s = 30 assumes.
    "LDAM-cosine": {"loss.name": "ldam", "loss.max_margin": 0.5, "loss.inv_temperature": 30.0,
                    "model.head": "normed", "weighting.mode": "none"},
    # Two-stage methods: (overrides, the row whose runs they read).
}
TWO_STAGE = {
    "CE, 5 epochs": ({"loss.name": "ce", "weighting.mode": "none", "num_epochs": 5}, None),
    "JTT": ({"loss.name": "ce", "weighting.mode": "none", "method.name": "jtt"},
            "CE, 5 epochs"),
    # DFR: stage 1's features, a head trained on the 34 group-balanced validation
    # examples (hence batch 16) at a fixed lr; its L2 strength is tuned on them.
    "DFR": ({"loss.name": "ce", "weighting.mode": "none", "method.name": "dfr",
             "model.freeze_features": True, "weight_decay": 0.0, "batch_size": 16,
             "lr": 0.1, "num_epochs": 50}, "CE"),
    "CE+IW-BBSE": ({"loss.name": "ce", "weighting.mode": "reweighted",
                    "weighting.source": "bbse"}, "CE"),
    "CE+IW-MLLS": ({"loss.name": "ce", "weighting.mode": "reweighted",
                    "weighting.source": "mlls"}, "CE"),
    "Poly+IW-MLLS": ({"loss.name": "poly", "weighting.mode": "reweighted",
                      "weighting.source": "mlls"}, "CE"),
}


def _cell_name(label: str) -> str:
  return "".join(ch if ch.isalnum() or ch in "+-." else "_" for ch in label)


def get_study():
  return {
      "title": "Imbalanced binary digits (MLP): every method at one lr, 10 seeds",
      "description": "Balanced test accuracy is the mean of the two class accuracies on "
                     "the balanced test set; no lr tuning (stage 1), so each method runs "
                     "at lr 0.02 unless its row sets one.",
      "protocol": {"lrs": [], "at": "last", "seeds": 10},
      "table": {"rows": list(METHODS) + list(TWO_STAGE), "columns": ["Digits", "Digits-ES"],
                "metric": "test/reweighted_acc",
                "paired": [["CE", "Poly"], ["CE+IW", "Poly+IW"], ["CE+IW", "LA+IW"],
                           ["CE+IW-MLLS", "Poly+IW-MLLS"]]},
      "cells": [{"name": _cell_name(label), "config": "configs/digits_poly.py", "row": label,
                 "column": "Digits", "overrides": {**_COMMON, **fields}}
                for label, fields in METHODS.items()] + [
          {"name": _cell_name(label), "config": "configs/digits_poly.py", "row": label,
           "column": "Digits", "overrides": {**_COMMON, **fields},
           **({"stage1_cell": _cell_name(reads)} if reads else {})}
          for label, (fields, reads) in TWO_STAGE.items()],
  }
