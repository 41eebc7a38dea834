"""Imbalanced binary CIFAR-10, paper Figure 5: CDT: class-dependent temperatures (VS loss with tau 0), no weights.

    python -m polyjax.main --config=configs/fig5_cifar_cdt.py --config.data.data_dir=DIR

Data: imbalanced binary CIFAR-10 (cat vs dog, step imbalance 10), ConvNet (Byrd & Lipton 2017), batch 64.
Paper (Fig. 5, mean of 10 seeds): balanced test accuracy (test/reweighted_acc) 0.602.
Hyperparameters from the paper's repository
(github.com/KeAWang/importance-weighting-interpolating-classifiers), the sweep script's
run group '2021-11-11_best_cdtloss' (gamma 0.5, tuned over 0.1-0.5 with vs_loss tau 0):
SGD lr 0.01, momentum 0.9, 300 epochs. gamma 0.5.
Class or group counts for the loss come from the training split.
"""

from polyjax.config import base_config, dataset_preset


def get_config():
  c = dataset_preset(base_config(), "cifar10")
  c.loss.name = "cdt"
  c.loss.gamma = 0.5
  c.weighting.mode = "none"
  c.lr = 0.01
  c.num_epochs = 300
  return c
