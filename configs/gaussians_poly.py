"""The paper's Figure 1 data: two truncated 2-D Gaussians, linear model, poly + IW.

    python -m polyjax.main --config=configs/gaussians_poly.py

20 minority points around (0, 5) and 200 majority points around (5, 0); full-batch
gradient descent (lr 0.1, no momentum) on the poly-tailed loss (alpha 1) with
importance weights. The learned boundary approaches the true one (x0 = x1), so
test/reweighted_acc on fresh balanced samples ends near 1.0. For the paper's
1,000,000-step figure with all four settings, see scripts/figure1.py.
"""

from polyjax.config import base_config


def get_config():
  c = base_config()
  c.data.name = "gaussians"
  c.model.name = "linear"
  c.loss.name = "poly"
  c.loss.alpha = 1.0
  c.weighting.mode = "reweighted"
  c.lr = 0.1
  c.momentum = 0.0
  c.batch_size = 220  # Full batch: the whole training set in every step.
  c.num_epochs = 5000
  c.eval_every_epochs = 500
  c.checkpoint_every_epochs = 500  # One step per epoch: saving every epoch would dominate.
  return c
