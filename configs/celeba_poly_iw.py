"""Subsampled CelebA: poly-tailed loss (logit kind, alpha 2, beta 1), importance weights (IW, exponent 1).

    python -m polyjax.main --config=configs/celeba_poly_iw.py --config.data.data_dir=DIR

Data: subsampled CelebA (Blond_Hair, confounder Male, 2% of the training split: groups [1446, 1308, 468, 33]; balanced test of 180 per group).
Model: ResNet-50 at 224x224, trained from scratch (the repository sets pretrained: False).
Paper (released results, mean of 10 seeds): test/reweighted_acc 0.807 at the last
epoch (summary.json 'final'); early-stopped, i.e. the checkpoint with the best
val/reweighted_acc (summary.json 'best', the paper's ES column): 0.840.
Hyperparameters from the paper's repository (github.com/KeAWang/importance-weighting-interpolating-classifiers, configs/experiment/celeba_{erm,reweighted}.yaml and poly_celeba_reweighted.yaml):
SGD lr 0.0001, momentum 0.9, weight decay 0.0001, batch 128. Epochs: 50 as in the repository's files.

Tuning, as in the paper: stage 1 is `sweep()`, every lr of TUNING_LRS['celeba'] at batch
64 and at 512 (polyjax.config; two groups of stacked members; add --member_batch=1
to hold one ResNet-50's activations at a time on each device):

    python -m polyjax.sweep --config=configs/celeba_poly_iw.py --workdir=runs/celeba_poly_iw_tune \\
        --config.data.data_dir=DIR

pick each batch size's lr with the best val/reweighted_acc:

    python -m polyjax.analysis collect --runs runs/celeba_poly_iw_tune --out tune.csv --task logged --split val
    python -m polyjax.analysis report --results tune.csv --by batch_size,lr --split val

and stage 2 trains 10 seeds of each batch size's choice B, LR:

    python -m polyjax.sweep --config=configs/celeba_poly_iw.py --workdir=runs/celeba_poly_iw_seeds \\
        --config.data.data_dir=DIR --config.batch_size=B --config.lr=LR --grid=seed=0,1,2,3,4,5,6,7,8,9
"""

from polyjax.config import base_config, dataset_preset, tuning_grid


def get_config():
  c = dataset_preset(base_config(), "celeba")
  c.loss.name = "poly"
  c.loss.kind = "logit"
  c.loss.alpha = 2.0
  c.loss.beta = 1.0
  c.weighting.mode = "reweighted"
  c.weighting.exponent = 1.0
  c.lr = 0.0001
  c.batch_size = 128
  c.num_epochs = 50
  c.test_on_best = True  # One run gives both the last-epoch and the early-stopped (ES) result.
  return c


def sweep():
  """Stage 1 of the tuning protocol: batch size 64 and 512 x lr (see above)."""
  return tuning_grid("celeba")
