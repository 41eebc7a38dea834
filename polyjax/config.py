"""The base config (every field, with its meaning) and its validation.

Experiment files in `configs/` call `base_config()` and change a few fields.
`validate` runs before any data is loaded or file is written; it raises
`ConfigError` with one line that names the offending field.
"""

from __future__ import annotations

import os

import ml_collections
from ml_collections import config_dict


class ConfigError(ValueError):
  """A config value that cannot be trained; the message names the field."""


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # Run seed: model init and in-step randomness; data order unless data.order_seed is set.
  c.lr = 0.1  # SGD learning rate (> 0).
  c.momentum = 0.9  # SGD momentum in [0, 1).
  c.weight_decay = 0.0  # L2 weight decay added to the gradient (>= 0).
  c.batch_size = 64  # Global training batch size; divisible by the device count.
  c.num_epochs = 20  # Training epochs (>= 1); an epoch drops the last partial batch.
  c.eval_batch_size = 1000  # Global evaluation batch size; splits are padded and masked.
  c.eval_every_epochs = 1  # Evaluate train/val/test every this many epochs (and after the last).
  c.test_on_best = False  # Early stopping ("ES"): also test the checkpoint with the best val reweighted_acc.

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"  # Dataset: see polyjax.data.DATASETS.
  c.data.seed = 0  # Data seed: subsampling and train/val split, fixed across run seeds.
  c.data.order_seed = config_dict.placeholder(int)  # Seed of the per-epoch example order (None: the run seed).
  c.data.data_dir = config_dict.placeholder(str)  # Where prepared datasets live (None: the dataset's default).
  c.data.val_frac = 0.2  # Fraction of the (subsampled) training set held out for validation.
  c.data.class_subset = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))  # digits, cifar10: the original labels making up each class (cifar configs: ((3,), (5,)), cat vs dog).
  c.data.imb_factor = 10.0  # digits, cifar10: the smallest class keeps 1/imb_factor of the largest's size.
  c.data.imb_type = "step"  # cifar10: per-class subsampling, 'step', 'exp' or 'none'.
  c.data.augment = False  # cifar10: random crop 32 (zero padding 4) and horizontal flip, on device.
  c.data.target = "Blond_Hair"  # celeba: attribute used as the label y.
  c.data.confounder = "Male"  # celeba: spurious attribute c; group = 2*y + c.
  c.data.train_frac = 1.0  # celeba: fraction of the official training split kept (paper: 0.02).
  c.data.test_per_group = 180  # celeba: test images kept per group (seed 1234), a balanced test set.
  c.data.resolution = 224  # celeba, waterbirds: image side after crop and resize.
  c.data.minority_class = 1  # digits: which class is subsampled.
  c.data.test_per_class = 150  # digits: balanced test examples per class, held out first.
  c.data.mean0 = (0.0, 5.0)  # gaussians: mean of class 0 (the minority); its length is the dimension.
  c.data.mean1 = (5.0, 0.0)  # gaussians: mean of class 1 (the majority).
  c.data.n_minority = 20  # gaussians: training (and validation) points of class 0.
  c.data.n_majority = 200  # gaussians: training (and validation) points of class 1.
  c.data.radius = 5.0  # gaussians: noise norms are clipped to this radius (truncated Gaussians).
  c.data.n_test_per_class = 1000  # gaussians: balanced test points per class.

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"  # Model: see polyjax.models.MODELS.
  c.model.hidden = 200  # mlp: width of each hidden layer.
  c.model.depth = 3  # mlp: number of hidden layers.
  c.model.init_channels = 64  # cifar_resnet*: width of the stem and first stage.
  c.model.pretrained = config_dict.placeholder(str)  # resnet50: .npz of torchvision ImageNet weights (scripts/convert_torchvision_resnet50.py).
  c.model.freeze_features = False  # Train only the last layer ('head'); BatchNorm statistics frozen too.

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "poly"  # Per-example loss: see polyjax.losses.LOSSES.
  c.loss.alpha = 1.0  # poly: tail exponent (> 0; > 1 for kind 'linear').
  c.loss.beta = 1.0  # poly: margin at which the polynomial tail starts.
  c.loss.kind = "logit"  # poly: head left of beta: 'logit', 'exp' or 'linear'.

  c.weighting = ml_collections.ConfigDict()
  c.weighting.mode = "reweighted"  # How importance weights are used: see polyjax.weighting.WEIGHTING_MODES.
  c.weighting.exponent = 1.0  # w_g proportional to (1/n_g)**exponent (>= 0); the paper's IW-Exp uses 1.5 to 3.

  c.wandb = ml_collections.ConfigDict()
  c.wandb.mode = "disabled"  # 'online', 'offline' or 'disabled'.
  c.wandb.project = "polyjax"  # wandb project.
  c.wandb.entity = config_dict.placeholder(str)  # wandb entity (None: the user's default).
  c.wandb.name = config_dict.placeholder(str)  # Run name (None: the workdir's name).
  c.wandb.tags = ()  # Tags for the wandb run.
  return c


def _known(field: str, value, valid) -> None:
  if value not in valid:
    raise ConfigError(f"config.{field}={value!r} is not known; valid: {', '.join(sorted(valid))}")


def _check(ok: bool, field: str, rule: str, value) -> None:
  if not ok:
    raise ConfigError(f"config.{field} must be {rule}, got {value!r}")


def validate(config: ml_collections.ConfigDict, *, device_count: int) -> None:
  """Raises ConfigError naming the first field whose value cannot be trained."""
  # Registries are imported here so that loading a config file stays light.
  from polyjax import data, losses, models, weighting

  c = config
  _known("data.name", c.data.name, data.DATASETS)
  _known("model.name", c.model.name, models.MODELS)
  _known("loss.name", c.loss.name, losses.LOSSES)
  _known("loss.kind", c.loss.kind, losses.POLY_KINDS)
  _known("weighting.mode", c.weighting.mode, weighting.WEIGHTING_MODES)
  _known("wandb.mode", c.wandb.mode, ("online", "offline", "disabled"))
  _check(c.lr > 0, "lr", "> 0", c.lr)
  _check(0 <= c.momentum < 1, "momentum", "in [0, 1)", c.momentum)
  _check(c.weight_decay >= 0, "weight_decay", ">= 0", c.weight_decay)
  _check(c.num_epochs >= 1, "num_epochs", ">= 1", c.num_epochs)
  _check(c.eval_every_epochs >= 1, "eval_every_epochs", ">= 1", c.eval_every_epochs)
  _check(c.loss.alpha > 0, "loss.alpha", "> 0", c.loss.alpha)
  if c.loss.name == "poly" and c.loss.kind == "linear":
    _check(c.loss.alpha > 1, "loss.alpha", "> 1 for loss.kind='linear'", c.loss.alpha)
  _check(c.weighting.exponent >= 0, "weighting.exponent", ">= 0", c.weighting.exponent)
  _check(0 <= c.data.val_frac < 1, "data.val_frac", "in [0, 1)", c.data.val_frac)
  _known("data.imb_type", c.data.imb_type, ("step", "exp", "none"))
  _check(c.data.imb_factor >= 1, "data.imb_factor", ">= 1", c.data.imb_factor)
  _check(not c.data.augment or c.data.name == "cifar10", "data.augment",
         "False unless data.name='cifar10'", c.data.augment)
  _check(0 < c.data.train_frac <= 1, "data.train_frac", "in (0, 1]", c.data.train_frac)
  _check(c.data.test_per_group >= 1, "data.test_per_group", ">= 1", c.data.test_per_group)
  _check(c.data.resolution >= 32, "data.resolution", ">= 32", c.data.resolution)
  _check(c.model.init_channels >= 1, "model.init_channels", ">= 1", c.model.init_channels)
  if c.model.pretrained is not None:
    _check(c.model.name == "resnet50", "model.pretrained",
           "None unless model.name='resnet50'", c.model.pretrained)
    _check(os.path.isfile(os.path.expanduser(c.model.pretrained)), "model.pretrained",
           "an existing .npz file", c.model.pretrained)
  for field in ("batch_size", "eval_batch_size"):
    value = c[field]
    _check(value >= 1, field, ">= 1", value)
    _check(value % device_count == 0, field,
           f"divisible by the device count ({device_count})", value)
