"""Imbalanced binary CIFAR-10, paper Figure 5: CE+US: cross-entropy on the undersampled training split.

    python -m polyjax.main --config=configs/fig5_cifar_ce_us.py --config.data.data_dir=DIR

Data: imbalanced binary CIFAR-10 (cat vs dog, step imbalance 10), ConvNet (Byrd & Lipton 2017), batch 64.
Paper (Fig. 5, mean of 10 seeds): balanced test accuracy (test/reweighted_acc) 0.585.
Hyperparameters from the paper's repository
(github.com/KeAWang/importance-weighting-interpolating-classifiers),
configs/experiment/cifar_undersampled.yaml: SGD lr 0.001, momentum 0.9, 200 epochs.
Undersampling keeps each example with probability w_i / max w (fixed data seed).
Class or group counts for the loss come from the training split.
"""

from polyjax.config import base_config, dataset_preset


def get_config():
  c = dataset_preset(base_config(), "cifar10")
  c.loss.name = "ce"
  c.weighting.mode = "undersampled"
  c.weighting.exponent = 1.0
  c.lr = 0.001
  c.num_epochs = 200
  return c
