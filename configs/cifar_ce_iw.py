"""Imbalanced binary CIFAR-10: cross-entropy, importance weights (IW, exponent 1).

    python -m polyjax.main --config=configs/cifar_ce_iw.py --config.data.data_dir=DIR

Data: imbalanced binary CIFAR-10 (cat vs dog, step imbalance 10: 5000 vs 500 before the 80/20 split).
Model: ConvNet (Byrd & Lipton 2017).
Paper (released results, mean of 10 seeds): test/reweighted_acc 0.578 at the last
epoch (summary.json 'final'); early-stopped, i.e. the checkpoint with the best
val/reweighted_acc (summary.json 'best', the paper's ES column): 0.625.
Hyperparameters from the paper's repository (github.com/KeAWang/importance-weighting-interpolating-classifiers, configs/experiment/cifar_{erm,reweighted}.yaml and poly_cifar_binary_reweighted.yaml):
SGD lr 0.01, momentum 0.9, weight decay 0.0, batch 64. Epochs: 400 as in the paper's CIFAR table (the repository's files say 200; its sweeps extend them).

Tuning, as in the paper: stage 1 is `sweep()`, every lr of TUNING_LRS['cifar10'] at batch
64 and at 512 (polyjax.config; two groups of stacked members):

    python -m polyjax.sweep --config=configs/cifar_ce_iw.py --workdir=runs/cifar_ce_iw_tune \\
        --config.data.data_dir=DIR

pick each batch size's lr with the best val/reweighted_acc:

    python -m polyjax.analysis collect --runs runs/cifar_ce_iw_tune --out tune.csv --task logged --split val
    python -m polyjax.analysis report --results tune.csv --by batch_size,lr --split val

and stage 2 trains 10 seeds of each batch size's choice B, LR:

    python -m polyjax.sweep --config=configs/cifar_ce_iw.py --workdir=runs/cifar_ce_iw_seeds \\
        --config.data.data_dir=DIR --config.batch_size=B --config.lr=LR --grid=seed=0,1,2,3,4,5,6,7,8,9
"""

from polyjax.config import base_config, dataset_preset, tuning_grid


def get_config():
  c = dataset_preset(base_config(), "cifar10")
  c.loss.name = "ce"
  c.weighting.mode = "reweighted"
  c.weighting.exponent = 1.0
  c.lr = 0.01
  c.num_epochs = 400
  c.test_on_best = True  # One run gives both the last-epoch and the early-stopped (ES) result.
  return c


def sweep():
  """Stage 1 of the tuning protocol: batch size 64 and 512 x lr (see above)."""
  return tuning_grid("cifar10")
