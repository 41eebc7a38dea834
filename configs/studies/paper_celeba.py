"""The paper's main table on subsampled CelebA, tuned and seeded as in the paper.

    python -m polyjax.study --study=configs/studies/paper_celeba.py --workdir=runs/paper_celeba \\
        --config.data.data_dir=DIR --member_batch=1

Cells: configs/table.py:celeba,LOSS,WEIGHTING (Blond_Hair, confounder Male, 2% of the
training split, ResNet-50 at 224, 50 epochs) for LOSS ce (CE) or poly (Poly, alpha 2)
and WEIGHTING erm (No IW), iw (IW) or iwexp (IW-Exp, exponent 2); the -ES columns are
the IW runs at their best val/reweighted_acc epoch. Stage 1:
polyjax.config.TUNING_LRS['celeba'] at batch sizes 64 and 512 (seed 0), per batch
size the lr with the best val/reweighted_acc at the last epoch; stage 2: seeds 1-10
of each choice. The paper's numbers (configs/table.py's PAPER) stand beside ours.
Needs the prepared data (python -m polyjax.data prepare celeba --data_dir=DIR) and
GPUs; --member_batch=1 holds one ResNet-50's activations at a time on each device.
"""

import pathlib

from polyjax.config import load_config_module

_TABLE = load_config_module(pathlib.Path(__file__).resolve().parents[1] / "table.py",
                            "_polyjax_table")


def get_study():
  return _TABLE.main_table_study("celeba", "CelebA",
                                 "Subsampled CelebA (ResNet-50): the paper's main table")
