"""Waterbirds: poly-tailed loss (logit kind, alpha 2, beta 1), importance weights (IW, exponent 1).

    python -m polyjax.main --config=configs/waterbirds_poly_iw.py --config.data.data_dir=DIR

Data: Waterbirds (standard folder, groups by bird type and background).
Model: ResNet-50 at 224x224, trained from scratch (the repository sets pretrained: False).
No paper figure for this cell.
Hyperparameters from the paper's repository (github.com/KeAWang/importance-weighting-interpolating-classifiers, configs/experiment/waterbirds_erm.yaml and poly_waterbirds_reweighted.yaml):
SGD lr 0.001, momentum 0.9, weight decay 0.0001, batch 128. The paper reports no Waterbirds table; these runs extend it. The repository's poly run uses 200 epochs with gradient accumulation 8; here 50 epochs like its ERM run.
"""

from polyjax.config import base_config, dataset_preset


def get_config():
  c = dataset_preset(base_config(), "waterbirds")
  c.loss.name = "poly"
  c.loss.kind = "logit"
  c.loss.alpha = 2.0
  c.loss.beta = 1.0
  c.weighting.mode = "reweighted"
  c.weighting.exponent = 1.0
  c.lr = 0.001
  c.batch_size = 128
  c.num_epochs = 50
  c.test_on_best = True  # One run gives both the last-epoch and the early-stopped (ES) result.
  return c
