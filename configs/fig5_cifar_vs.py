"""Imbalanced binary CIFAR-10, paper Figure 5: VS: vector-scaling loss (Kini et al. 2021), no weights.

    python -m polyjax.main --config=configs/fig5_cifar_vs.py --config.data.data_dir=DIR

Data: imbalanced binary CIFAR-10 (cat vs dog, step imbalance 10), ConvNet (Byrd & Lipton 2017), batch 64.
Paper (Fig. 5, mean of 10 seeds): balanced test accuracy (test/reweighted_acc) 0.693.
Hyperparameters from the paper's repository
(github.com/KeAWang/importance-weighting-interpolating-classifiers), the sweep script's
run group '2021-11-11_best_vsloss' (tau 3.0, gamma 0.3, tuned over tau 0-3 and gamma
0-0.5): SGD lr 0.01, momentum 0.9, 300 epochs. tau 3, gamma 0.3.
Class or group counts for the loss come from the training split.
"""

from polyjax.config import base_config, dataset_preset


def get_config():
  c = dataset_preset(base_config(), "cifar10")
  c.loss.name = "vs"
  c.loss.tau = 3.0
  c.loss.gamma = 0.3
  c.weighting.mode = "none"
  c.lr = 0.01
  c.num_epochs = 300
  return c
