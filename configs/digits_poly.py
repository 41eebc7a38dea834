"""Quick start: imbalanced binary digits, MLP, poly-tailed loss with importance weights.

    python -m polyjax.main --config=configs/digits_poly.py

Digits 0-4 against 5-9 from scikit-learn's bundled 8x8 images, class 1 subsampled
10x (about 600 vs 60 training images), balanced test set of 150 per class. Runs
offline in well under a minute on a laptop CPU; expect test/reweighted_acc
(the mean of the two class accuracies on the balanced test set) around 0.94.
"""

from polyjax.config import base_config


def get_config():
  c = base_config()
  c.data.name = "digits"
  c.model.name = "mlp"
  c.loss.name = "poly"
  c.loss.alpha = 1.0
  c.weighting.mode = "reweighted"
  c.weighting.exponent = 1.0
  c.lr = 0.02
  c.batch_size = 64
  c.num_epochs = 40
  return c
