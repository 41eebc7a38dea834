"""Quick start: imbalanced binary digits, MLP, poly-tailed loss with importance weights.

    python -m polyjax.main --config=configs/digits_poly.py

Digits 0-4 against 5-9 from scikit-learn's bundled 8x8 images, class 1 subsampled
10x (about 600 vs 60 training images), balanced test set of 150 per class. Runs
offline in well under a minute on a laptop CPU; expect test/reweighted_acc
(the mean of the two class accuracies on the balanced test set) around 0.94.

`sweep()` is the paper's tuning protocol scaled to digits:

    python -m polyjax.sweep --config=configs/digits_poly.py --workdir=runs/digits_tune

stage 1 trains a grid of learning rates for each loss (CE and poly) and each batch
size (64, the regular one, and 512, the large-batch one): 4 groups (loss x batch
size change the program) of 4 stacked learning rates. Pick, per loss and batch
size, the lr with the best val/reweighted_acc, then run stage 2, 10 seeds of it:

    python -m polyjax.sweep --config=configs/digits_poly.py --workdir=runs/digits_seeds \\
        --config.loss.name=poly --config.batch_size=64 --config.lr=<chosen> \\
        --grid=seed=0,1,2,3,4,5,6,7,8,9
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


def sweep():
  """Stage 1 of the tuning protocol: lr grid per loss and batch size (see above)."""
  return {"loss.name": ["ce", "poly"], "batch_size": [64, 512],
          "lr": [0.01, 0.03, 0.1, 0.3]}
