"""Waterbirds: cross-entropy, exponentiated importance weights (IW-Exp, exponent 2).

    python -m polyjax.main --config=configs/waterbirds_ce_iwexp.py --config.data.data_dir=DIR

Data: Waterbirds (standard folder, groups by bird type and background).
Model: ResNet-50 at 224x224, trained from scratch (the repository sets pretrained: False).
No paper figure for this cell.
Hyperparameters from the paper's repository (github.com/KeAWang/importance-weighting-interpolating-classifiers, configs/experiment/waterbirds_erm.yaml and poly_waterbirds_reweighted.yaml):
SGD lr 0.001, momentum 0.9, weight decay 0.0001, batch 64. The paper reports no Waterbirds table; these runs extend it. The repository's poly run uses 200 epochs with gradient accumulation 8; here 50 epochs like its ERM run.
IW-Exp: the paper sweeps exponents 1.5-3; 2 is used here (override --config.weighting.exponent).
"""

from polyjax.config import base_config, dataset_preset


def get_config():
  c = dataset_preset(base_config(), "waterbirds")
  c.loss.name = "ce"
  c.weighting.mode = "reweighted"
  c.weighting.exponent = 2.0
  c.lr = 0.001
  c.num_epochs = 50
  c.test_on_best = True  # One run gives both the last-epoch and the early-stopped (ES) result.
  return c
