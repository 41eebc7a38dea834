"""The paper's main table on imbalanced binary CIFAR-10, tuned and seeded as in the paper.

    python -m polyjax.study --study=configs/studies/paper_cifar.py --workdir=runs/paper_cifar \\
        --config.data.data_dir=DIR

Cells: configs/table.py:cifar10,LOSS,WEIGHTING (cat vs dog, step imbalance 10, ConvNet,
400 epochs) for LOSS ce (CE) or poly (Poly, alpha 2) and WEIGHTING erm (No IW), iw (IW)
or iwexp (IW-Exp, exponent 2); the -ES columns are the IW runs at their best
val/reweighted_acc epoch. Stage 1: polyjax.config.TUNING_LRS['cifar10'] at batch sizes
64 and 512 (seed 0), per batch size the lr with the best val/reweighted_acc at the last
epoch; stage 2: seeds 1-10 of each choice. The paper's numbers (configs/table.py's
PAPER) stand beside ours. Needs the prepared data (python -m polyjax.data prepare
cifar10 --data_dir=DIR) and a GPU: 6 cells x (12 + 20) runs of 400 epochs.
"""

import pathlib

from polyjax.config import load_config_module

_TABLE = load_config_module(pathlib.Path(__file__).resolve().parents[1] / "table.py",
                            "_polyjax_table")


def get_study():
  return _TABLE.main_table_study("cifar10", "CIFAR-10",
                                 "Imbalanced binary CIFAR-10 (ConvNet): the paper's main table")
