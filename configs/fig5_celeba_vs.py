"""Subsampled CelebA, paper Figure 5: VS: group VS loss (delta_g = (n_g/n_max)^gamma by group), no weights.

    python -m polyjax.main --config=configs/fig5_celeba_vs.py --config.data.data_dir=DIR

Data: subsampled CelebA (Blond_Hair, confounder Male, 2% of the training split), ResNet-50 at 224.
Paper (Fig. 5, mean of 10 seeds): balanced test accuracy (test/reweighted_acc) 0.825.
Hyperparameters from the paper's repository
(github.com/KeAWang/importance-weighting-interpolating-classifiers),
configs/experiment/celeba_erm.yaml and the sweep script's run group
'2021-11-11_vsloss_celeba' (vs_group_loss gamma 0.4, tuned over 0.1-1.0): SGD lr 0.0001,
momentum 0.9, weight decay 0.0001, batch 64, 50 epochs. gamma 0.4.
Class or group counts for the loss come from the training split.
"""

from polyjax.config import base_config, dataset_preset


def get_config():
  c = dataset_preset(base_config(), "celeba")
  c.loss.name = "vs_group"
  c.loss.gamma = 0.4
  c.weighting.mode = "none"
  c.lr = 0.0001
  c.num_epochs = 50
  return c
