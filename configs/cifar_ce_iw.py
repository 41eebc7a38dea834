"""Imbalanced binary CIFAR-10: cross-entropy, importance weights (IW, exponent 1).

    python -m polyjax.main --config=configs/cifar_ce_iw.py --config.data.data_dir=DIR

Data: imbalanced binary CIFAR-10 (cat vs dog, step imbalance 10: 5000 vs 500 before the 80/20 split).
Model: ConvNet (Byrd & Lipton 2017).
Paper (released results, mean of 10 seeds): test/reweighted_acc 0.578 at the last
epoch (summary.json 'final'); early-stopped, i.e. the checkpoint with the best
val/reweighted_acc (summary.json 'best', the paper's ES column): 0.625.
Hyperparameters from the paper's repository (github.com/KeAWang/importance-weighting-interpolating-classifiers, configs/experiment/cifar_{erm,reweighted}.yaml and poly_cifar_binary_reweighted.yaml):
SGD lr 0.01, momentum 0.9, weight decay 0.0, batch 64. Epochs: 400 as in the paper's CIFAR table (the repository's files say 200; its sweeps extend them).
"""

from polyjax.config import base_config, dataset_preset


def get_config():
  c = dataset_preset(base_config(), "cifar10")
  c.loss.name = "ce"
  c.weighting.mode = "reweighted"
  c.weighting.exponent = 1.0
  c.lr = 0.01
  c.num_epochs = 400
  c.test_on_best = True  # One run gives both the last-epoch and the early-stopped (ES) result.
  return c
