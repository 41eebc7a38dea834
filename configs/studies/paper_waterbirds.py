"""The paper's main-table protocol on Waterbirds, which the paper's table does not have.

    python -m polyjax.study --study=configs/studies/paper_waterbirds.py \\
        --workdir=runs/paper_waterbirds --config.data.data_dir=DIR --member_batch=1

Cells: configs/table.py:waterbirds,LOSS,WEIGHTING (the standard folder, groups by bird
type and background, ResNet-50 at 224, 50 epochs) for LOSS ce (CE) or poly (Poly,
alpha 2) and WEIGHTING erm (No IW), iw (IW) or iwexp (IW-Exp, exponent 2); the -ES
columns are the IW runs at their best val/reweighted_acc epoch. Stage 1:
polyjax.config.TUNING_LRS['waterbirds'] at batch sizes 64 and 512 (seed 0), per batch
size the lr with the best val/reweighted_acc at the last epoch; stage 2: seeds 1-10
of each choice. Needs the Waterbirds folder (python -m polyjax.data prepare
waterbirds --data_dir=DIR) and GPUs; --member_batch=1 holds one ResNet-50's
activations at a time on each device.
"""

import pathlib

from polyjax.config import load_config_module

_TABLE = load_config_module(pathlib.Path(__file__).resolve().parents[1] / "table.py",
                            "_polyjax_table")


def get_study():
  return _TABLE.main_table_study("waterbirds", "Waterbirds",
                                 "Waterbirds (ResNet-50): the main table extended (no paper numbers)")
