"""The paper's Figure 5: Poly+IW against other methods for imbalance, 10 seeds each.

    python -m polyjax.study --study=configs/studies/fig5.py --workdir=runs/fig5 \\
        --config.data.data_dir=DIR --member_batch=1

Cells: configs/fig5.py:DATASET,METHOD, each with the hyperparameters of the paper's
repository (that file names where each comes from), so there is no stage 1: each
cell's lr and batch size are its config's (give the protocol lrs to tune them as in
the main table). Rows are the methods, columns the datasets (CIFAR-10: imbalanced
binary cat vs dog, ConvNet; CelebA: 2% of the training split, ResNet-50), and the
-ES columns the same runs at their best val/reweighted_acc epoch. Stage 2: seeds
1-10. The paired t-tests compare Poly+IW with each other method seed by seed; the
figure's numbers (configs/fig5.py's PAPER, last epoch) stand beside ours. Needs both
prepared datasets in DIR and GPUs; --member_batch=1 holds one ResNet-50's
activations at a time on each device.
"""

DATASETS = {"cifar10": "CIFAR-10", "celeba": "CelebA"}
METHODS = {  # configs/fig5.py's method -> the paper's name.
    "poly_iw": "Poly+IW", "ce_us": "CE+US", "ldam": "LDAM", "cdt": "CDT", "la": "LA",
    "vs": "VS", "poly_dro": "Poly+DRO", "ce_dro": "CE+DRO", "vs_dro": "VS+DRO",
}
# The methods the figure compares on each dataset (configs/fig5.py's METHODS).
RUN = {"cifar10": ("poly_iw", "ce_us", "ldam", "cdt", "la", "vs"),
       "celeba": ("poly_iw", "ce_us", "vs", "poly_dro", "ce_dro", "vs_dro")}


def get_study():
  rows = list(METHODS.values())
  return {
      "title": "The paper's Figure 5: Poly+IW against other methods",
      "protocol": {"lrs": [], "metric": "val/reweighted_acc", "at": "last", "seeds": 10},
      "table": {"rows": rows,
                "columns": list(DATASETS.values()) + [f"{d}-ES" for d in DATASETS.values()],
                "metric": "test/reweighted_acc",
                "paired": [[row, "Poly+IW"] for row in rows if row != "Poly+IW"]},
      "cells": [{"name": f"{dataset}_{method}", "config": f"configs/fig5.py:{dataset},{method}",
                 "row": METHODS[method], "column": label}
                for dataset, label in DATASETS.items() for method in RUN[dataset]],
  }
