"""Imbalanced binary CIFAR-10, paper Figure 5: LDAM: label-distribution-aware margins (Cao et al. 2019), no weights.

    python -m polyjax.main --config=configs/fig5_cifar_ldam.py --config.data.data_dir=DIR

Data: imbalanced binary CIFAR-10 (cat vs dog, step imbalance 10), ConvNet (Byrd & Lipton 2017), batch 64.
Paper (Fig. 5, mean of 10 seeds): balanced test accuracy (test/reweighted_acc) 0.587.
Hyperparameters from the paper's repository
(github.com/KeAWang/importance-weighting-interpolating-classifiers),
configs/loss_fn/ldam.yaml (inv_temperature 1) and the sweep script's run group
'2021-11-11_best_ldam' (max_margin 1.0, tuned over 0.1-1.0): SGD lr 0.01, momentum 0.9,
300 epochs. max_margin 1.0, inv_temperature (s) 1; the LDAM paper's own code uses
max_margin 0.5 and s 30 (polyjax's defaults).
Class or group counts for the loss come from the training split.
"""

from polyjax.config import base_config, dataset_preset


def get_config():
  c = dataset_preset(base_config(), "cifar10")
  c.loss.name = "ldam"
  c.loss.max_margin = 1.0
  c.loss.inv_temperature = 1.0
  c.weighting.mode = "none"
  c.lr = 0.01
  c.num_epochs = 300
  return c
