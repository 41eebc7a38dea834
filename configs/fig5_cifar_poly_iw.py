"""Imbalanced binary CIFAR-10, paper Figure 5: Poly+IW: poly-tailed loss (alpha 2) with importance weights of exponent 3.

    python -m polyjax.main --config=configs/fig5_cifar_poly_iw.py --config.data.data_dir=DIR

Data: imbalanced binary CIFAR-10 (cat vs dog, step imbalance 10), ConvNet (Byrd & Lipton 2017), batch 64.
Paper (Fig. 5, mean of 10 seeds): balanced test accuracy (test/reweighted_acc) 0.673.
Hyperparameters from the paper's repository
(github.com/KeAWang/importance-weighting-interpolating-classifiers), sweep script's run
group '2021-11-13_tune_cifar_alpha_squared' (cifar_reweighted.yaml, alpha 2, exponents
2.5 and 3): SGD lr 0.08, momentum 0, 600 epochs.
Class or group counts for the loss come from the training split.
"""

from polyjax.config import base_config, dataset_preset


def get_config():
  c = dataset_preset(base_config(), "cifar10")
  c.loss.name = "poly"
  c.loss.kind = "logit"
  c.loss.alpha = 2.0
  c.loss.beta = 1.0
  c.weighting.mode = "reweighted"
  c.weighting.exponent = 3.0
  c.lr = 0.08
  c.momentum = 0.0
  c.num_epochs = 600
  return c
