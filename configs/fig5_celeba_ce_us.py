"""Subsampled CelebA, paper Figure 5: CE+US: cross-entropy on the undersampled training split.

    python -m polyjax.main --config=configs/fig5_celeba_ce_us.py --config.data.data_dir=DIR

Data: subsampled CelebA (Blond_Hair, confounder Male, 2% of the training split), ResNet-50 at 224.
Paper (Fig. 5, mean of 10 seeds): balanced test accuracy (test/reweighted_acc) 0.823.
Hyperparameters from the paper's repository
(github.com/KeAWang/importance-weighting-interpolating-classifiers),
configs/experiment/celeba_undersampled.yaml: SGD lr 0.0001, momentum 0.9, weight decay
0.0001, batch 64, 50 epochs.
Class or group counts for the loss come from the training split.
"""

from polyjax.config import base_config, dataset_preset


def get_config():
  c = dataset_preset(base_config(), "celeba")
  c.loss.name = "ce"
  c.weighting.mode = "undersampled"
  c.weighting.exponent = 1.0
  c.lr = 0.0001
  c.num_epochs = 50
  return c
