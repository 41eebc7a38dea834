"""Subsampled CelebA, paper Figure 5: Poly+IW: poly-tailed loss (alpha 2) with importance weights of exponent 2.5.

    python -m polyjax.main --config=configs/fig5_celeba_poly_iw.py --config.data.data_dir=DIR

Data: subsampled CelebA (Blond_Hair, confounder Male, 2% of the training split), ResNet-50 at 224.
Paper (Fig. 5, mean of 10 seeds): balanced test accuracy (test/reweighted_acc) 0.824.
Hyperparameters from the paper's repository
(github.com/KeAWang/importance-weighting-interpolating-classifiers),
configs/experiment/poly_celeba_reweighted.yaml and the sweep script's run group
'2021-11-13_celeba_best_polyloss' (alpha 2, exponent 2.5): SGD lr 0.0001, momentum 0.9,
weight decay 0.0001, batch 128, 50 epochs (the sweep's command keeps the file's 50).
Class or group counts for the loss come from the training split.
"""

from polyjax.config import base_config, dataset_preset


def get_config():
  c = dataset_preset(base_config(), "celeba")
  c.loss.name = "poly"
  c.loss.kind = "logit"
  c.loss.alpha = 2.0
  c.loss.beta = 1.0
  c.weighting.mode = "reweighted"
  c.weighting.exponent = 2.5
  c.lr = 0.0001
  c.batch_size = 128
  c.num_epochs = 50
  return c
