"""The base config (every field, with its meaning) and its validation.

Experiment files in `configs/` call `base_config()` (and `dataset_preset` for the
paper's datasets) and change a few fields. A file may take an argument, the text
after ':' in `--config=configs/table.py:cifar10,poly,iw` (ml_collections passes it
to `get_config(arg)`); `parse_config_arg` splits and checks it.
`get_field`, `set_field`, `field_type` and `flatten` address fields by dotted name
('loss.alpha'). `validate` runs before any data is loaded or file is written; it
raises `ConfigError` with one line that names the offending field.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import re
from typing import Any, Iterable

import ml_collections
from ml_collections import config_dict

from polyjax import stage1
from polyjax import method_checks
from polyjax.errors import ConfigError  # noqa: F401  (raised here; polyjax.config.ConfigError)
from polyjax.errors import check_field as _check, check_known as _known


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # Run seed: model init and in-step randomness; data order unless data.order_seed is set.
  c.lr = 0.1  # SGD learning rate (> 0).
  c.momentum = 0.9  # SGD momentum in [0, 1).
  c.weight_decay = 0.0  # L2 weight decay added to the gradient (>= 0).
  c.batch_size = 64  # Global training batch size; divisible by the device count.
  c.num_epochs = 20  # Training epochs (>= 1); an epoch drops the last partial batch.
  c.eval_batch_size = 1000  # Largest global evaluation batch; all splits are packed into one pass (steps.eval_batch_size).
  c.eval_every_epochs = 1  # Evaluate train/val/test every this many epochs (and after the last).
  c.lr_schedule = "constant"  # Multiplier of lr over training: 'constant', 'cosine' or 'step' (polyjax.schedules).
  c.warmup_epochs = 0.0  # Linear lr warm-up from 0 over this many epochs, before the schedule (0: none).
  c.lr_step_epochs = ()  # step: epochs after which the lr is multiplied by lr_step_factor, increasing.
  c.lr_step_factor = 0.1  # step: the factor applied at each of lr_step_epochs.
  c.lr_final_frac = 0.0  # cosine: the lr at the last step as a fraction of lr.
  c.checkpoint_every_epochs = 1  # Save the latest state every this many epochs (deferred while the last save is still being written, one process); also: last epoch, SIGTERM/SIGINT; a new best is written with the next save.
  c.best_metric = "val/reweighted_acc"  # Metric that picks the best checkpoint (early stopping, 'ES'); '<split>/<metric>'.
  c.best_mode = "max"  # 'max' or 'min': which direction of best_metric is better.
  c.test_on_best = True  # At the end, also evaluate the best checkpoint (summary.json 'best').
  c.matmul_precision = "default"  # Products and convolutions of float32 arrays: 'default' (the platform's: TF32 on NVIDIA GPUs from Ampere on, bfloat16 passes on TPU), 'tensorfloat32', 'bfloat16' or 'float32' (full float32 everywhere, slower on GPU/TPU; CPUs always compute float32).
  c.deterministic = True  # GPU: XLA's deterministic kernels, so the same seed on the same machine gives the same run (a few % slower steps); False lets XLA autotune. Whole process; no effect on CPU.

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"  # Dataset: see polyjax.data.DATASETS.
  c.data.seed = 0  # Data seed: subsampling and train/val split, fixed across run seeds.
  c.data.order_seed = config_dict.placeholder(int)  # Seed of the per-epoch example order (None: the run seed).
  c.data.data_dir = config_dict.placeholder(str)  # Where prepared datasets live (None: the dataset's default).
  c.data.pipeline = "memory"  # 'memory': decode every split once, keep it in memory; 'stream' (cifar10, cifar100, celeba, waterbirds): read images per batch, each process only its rows.
  c.data.val_frac = 0.2  # Fraction of the (subsampled) training set held out for validation.
  c.data.class_subset = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))  # digits, cifar10, cifar100: the original labels making up each class (cifar configs: ((3,), (5,)), cat vs dog; cifar: () for every label, its own class).
  c.data.imb_factor = 10.0  # digits, cifar10, cifar100: the smallest class keeps 1/imb_factor of the largest's size.
  c.data.imb_type = "step"  # cifar10, cifar100: per-class subsampling, 'step', 'exp' or 'none'.
  c.data.imb_over = "subset"  # cifar10, cifar100: imb_type runs over the chosen classes ('subset') or over every label, then the chosen ones are kept ('all': the paper's and LDAM-DRW's code; CIFAR-10-LT).
  c.data.augment = False  # cifar10, cifar100: random crop 32 (zero padding 4) and horizontal flip, on device.
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

  c.model = model_config()

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "poly"  # Per-example loss: see polyjax.losses.LOSSES.
  c.loss.alpha = 1.0  # poly: tail exponent (> 0; > 1 for kind 'linear').
  c.loss.beta = 1.0  # poly: margin at which the polynomial tail starts.
  c.loss.kind = "logit"  # poly: head left of beta: 'logit', 'exp' or 'linear'.
  c.loss.max_margin = 0.5  # ldam: margin of the rarest class (> 0); m_c proportional to n_c^(-1/4).
  c.loss.inv_temperature = 30.0  # ldam: logits are scaled by this s (> 0) before CE; 30 is LDAM-DRW's, for the cosine logits of model.head='normed' (on a linear head's logits the paper's repository uses 1: configs/fig5.py).
  c.loss.tau = 1.0  # la, vs: weight of the additive log-prior iota_c = tau * log(pi_c) (>= 0).
  c.loss.gamma = 0.3  # vs, cdt, vs_group: delta = (n / n_max)**gamma (>= 0).
  c.loss.focal_gamma = 1.0  # focal: CE times (1 - p_y)**focal_gamma (>= 0; 0 is CE; LDAM-DRW code: 1).

  c.weighting = ml_collections.ConfigDict()
  c.weighting.mode = "reweighted"  # How importance weights are used: see polyjax.weighting.WEIGHTING_MODES.
  c.weighting.exponent = 1.0  # w_g proportional to (1/n_g)**exponent (>= 0); the paper's IW-Exp uses 1.5 to 3.
  c.weighting.adv_probs_lr = 0.01  # dro: step size eta of the group probabilities (> 0 for mode 'dro').
  group_robust_fields(c)
  c.weighting.cb_beta = config_dict.placeholder(float)  # reweighted: class-balanced weights (1-beta)/(1-beta^n_g), summing to the number of groups (Cui et al. 2019; LDAM-DRW: 0.9999), in (0, 1); None: (1/n_g)**exponent.
  c.weighting.drw_epoch = 0  # reweighted: deferred re-weighting, loss weights 1 before this epoch (0-based, < num_epochs; LDAM-DRW: 160 of 200); 0: off.
  c.weighting.anneal = "none"  # reweighted: the weights' exponent moves from 0 to exponent over training, 'linear', 'sigmoid' or 'step' (the paper's code; polyjax.weight_schedule); 'none': fixed.
  c.weighting.anneal_sigmoid_c = 10.0  # anneal 'sigmoid': steepness c of sigmoid(c (epoch/num_epochs - 1/2)) (> 0).
  c.weighting.resample_once = False  # resampled: draw the n examples once for the run, reshuffled every epoch (the paper's code); False: a new draw every epoch.
  c.weighting.evaluate_extras = False  # undersampled: keep the training examples undersampling leaves out as the split 'extras', evaluated like val and test (metrics rows extras/*); False: they are dropped.

  c.wandb = wandb_config()
  return stage1.add_fields(c)  # weighting.source and the method section.


def group_robust_fields(c: ml_collections.ConfigDict) -> None:
  """Adds the fields of polyjax.group_robust's objectives to `c.weighting`."""
  c.weighting.generalization_adjustment = 0.0  # dro: C of the adjustment C/sqrt(n_g) added to each group's loss (>= 0; Sagawa et al. 2020, Sec. 3.3).
  c.weighting.automatic_adjustment = False  # dro: after every epoch the adjustment becomes each group's validation loss minus its training losses' moving average, applied while every gap is > 0 (Sagawa et al. 2020; needs eval_every_epochs=1).
  c.weighting.loss_ema_gamma = 0.1  # dro, automatic_adjustment: rate of each group's moving average of training losses, in (0, 1] (Sagawa et al.'s code: 0.1).
  c.weighting.cvar_alpha = 0.1  # cvar: the batch objective is the mean of its worst alpha fraction of losses, in (0, 1] (Levy et al. 2020; SubpopBench: 0.1).


def model_config() -> ml_collections.ConfigDict:
  """The `model` section of `base_config()` (its own function: a function stays short)."""
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"  # Model: see polyjax.models.MODELS.
  c.model.hidden = 200  # mlp: width of each hidden layer.
  c.model.depth = 3  # mlp: number of hidden layers.
  c.model.init_channels = 64  # cifar_resnet*: width of the stem and first stage.
  c.model.pretrained = config_dict.placeholder(str)  # resnet50: .npz of torchvision ImageNet weights (scripts/convert_torchvision_resnet50.py).
  c.model.freeze_features = False  # Train only the last layer ('head'); BatchNorm statistics frozen too.
  c.model.head = "linear"  # Last layer: 'linear', or 'normed' (cosine logits in [-1, 1], LDAM-DRW's NormedLinear; pair it with a scaled loss such as ldam's s = 30).
  return c.model


def wandb_config() -> ml_collections.ConfigDict:
  """The `wandb` section of `base_config()` (its own function: a function stays short)."""
  c = ml_collections.ConfigDict()
  c.wandb = ml_collections.ConfigDict()
  c.wandb.mode = config_dict.placeholder(str)  # 'online', 'offline' or 'disabled'; None: $WANDB_MODE if set, else 'offline'.
  c.wandb.init_timeout = 30.0  # Seconds wandb may take to start; then the run goes on without it, with a warning.
  c.wandb.project = "polyjax"  # wandb project.
  c.wandb.entity = config_dict.placeholder(str)  # wandb entity (None: the user's default).
  c.wandb.name = config_dict.placeholder(str)  # Run name (None: the workdir's name).
  c.wandb.tags = ()  # Tags for the wandb run.
  return c.wandb


def field_help() -> list[tuple[str, object, str]]:
  """(field, default, meaning) of every field of `base_config()`, in order; the
  meaning is the field's one-line comment above."""
  lines = "".join(inspect.getsource(f) for f in (
      base_config, model_config, wandb_config, group_robust_fields, stage1.add_fields)).splitlines()
  comments = {}
  for line in lines:
    match = re.match(r"\s*c\.([\w.]+) = .*?  # (.*)$", line)
    if match:
      comments[match.group(1)] = match.group(2)
  return [(field, value, comments.get(field, ""))
          for field, value in flatten(base_config()).items()]


_SECTION = (ml_collections.ConfigDict, dict)


def flatten(config: ml_collections.ConfigDict | dict, prefix: str = "") -> dict[str, Any]:
  """{'loss.name': 'poly', 'lr': 0.1, ...}: every leaf field of a config (or of a
  plain dict such as `to_dict()` or config.json) by dotted name."""
  out = {}
  for key, value in config.items():
    if isinstance(value, _SECTION):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _parent(config: ml_collections.ConfigDict | dict, dotted: str):
  """(section, leaf name) of field `dotted`; ConfigError naming it if there is none."""
  *parents, leaf = dotted.split(".")
  node = config
  for name in parents:
    if not isinstance(node, _SECTION) or name not in node:
      break
    node = node[name]
  else:
    if isinstance(node, _SECTION) and leaf in node:
      return node, leaf
  raise ConfigError(f"config.{dotted} is not a field of the config")


def get_field(config: ml_collections.ConfigDict | dict, dotted: str) -> Any:
  """The value of field `dotted` ('loss.alpha') of a config or of a plain dict such as
  `to_dict()`; ConfigError naming the field if there is none."""
  node, leaf = _parent(config, dotted)
  return node[leaf]


def set_field(config: ml_collections.ConfigDict | dict, dotted: str, value: Any) -> None:
  """Sets field `dotted` ('loss.alpha') of `config` in place. An unknown name raises
  ConfigError naming it: a new key would be silently ignored by training."""
  node, leaf = _parent(config, dotted)
  node[leaf] = value


def field_type(config: ml_collections.ConfigDict, dotted: str) -> type:
  """The declared type of field `dotted` (a placeholder's too: `int` for
  data.order_seed); ConfigError naming it if there is none."""
  node, leaf = _parent(config, dotted)
  return node.get_type(leaf)


def load_config_module(path: str | os.PathLike, name: str = "_polyjax_config"):
  """The module of config file `path`, loaded by path as ml_collections' config_flags
  loads it (configs/ is no package: a file loads another with this)."""
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def split_config_spec(spec: str) -> tuple[str, str | None]:
  """('configs/table.py', 'cifar10,poly,iw') for a `--config` value
  'configs/table.py:cifar10,poly,iw'; (path, None) without ':'. Split at the first
  ':', as ml_collections' config_flags does before calling `get_config(arg)`."""
  path, sep, arg = spec.partition(":")
  return path, (arg if sep else None)


def parse_config_arg(arg: str | None, **valid: Iterable[str]) -> tuple[str, ...]:
  """The values of a config file's argument (`get_config(arg)`): comma-separated,
  one per keyword of `valid` in order, each among that keyword's valid values.

  `parse_config_arg("cifar10,poly,iw", dataset=..., loss=..., weighting=...)` gives
  ('cifar10', 'poly', 'iw'). Raises ConfigError, one line naming the argument and
  its valid values, for a missing or unknown value or a wrong count.
  """
  valid = {name: list(values) for name, values in valid.items()}
  values = [] if arg is None else [v.strip() for v in arg.split(",")]
  if len(values) != len(valid):
    form = ",".join(name.upper() for name in valid)
    choices = "; ".join(f"{name}: {', '.join(v)}" for name, v in valid.items())
    got = "none" if arg is None else f"{arg!r}"
    raise ConfigError(f"the config argument (--config=FILE:{form}) must be {len(valid)} "
                      f"comma-separated values ({choices}), got {got}")
  for (name, choices), value in zip(valid.items(), values):
    if value not in choices:
      raise ConfigError(f"config argument {name} {value!r} is not known; valid: "
                        f"{', '.join(choices)}")
  return tuple(values)


# The paper's per-dataset setup shared by the experiment files in configs/: data, model,
# and the SGD batch sizes and regularisation of its repository's configs/experiment/*.yaml.
# Each experiment of configs/table.py and configs/fig5.py applies one and sets its loss,
# weighting, lr and epochs.
DATASET_PRESETS = {
    # Imbalanced binary CIFAR-10: cat vs dog (relabelled 0 / 1), step imbalance 10, ConvNet.
    "cifar10": {"data.name": "cifar10", "data.class_subset": ((3,), (5,)),
                "data.imb_type": "step", "data.imb_factor": 10.0, "data.augment": False,
                "model.name": "convnet", "momentum": 0.9, "weight_decay": 0.0,
                "batch_size": 64, "eval_batch_size": 1000},
    # Subsampled CelebA: Blond_Hair vs Male, 2% of the training split, ResNet-50 at 224.
    "celeba": {"data.name": "celeba", "data.target": "Blond_Hair", "data.confounder": "Male",
               "data.train_frac": 0.02, "data.resolution": 224, "model.name": "resnet50",
               "momentum": 0.9, "weight_decay": 0.0001, "batch_size": 64,
               "eval_batch_size": 256},
    # Waterbirds: groups by bird type and background, ResNet-50 at 224.
    "waterbirds": {"data.name": "waterbirds", "data.resolution": 224, "model.name": "resnet50",
                   "momentum": 0.9, "weight_decay": 0.0001, "batch_size": 64,
                   "eval_batch_size": 256},
}


def dataset_preset(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Sets `DATASET_PRESETS[name]`'s fields of config `c` (in place) and returns it."""
  if name not in DATASET_PRESETS:
    raise ConfigError(f"dataset preset {name!r} is not known; valid: {', '.join(DATASET_PRESETS)}")
  for field, value in DATASET_PRESETS[name].items():
    set_field(c, field, value)
  return c


# Stage 1 of the paper's tuning protocol, per dataset preset: every learning rate at
# the regular (64) and the large (512) batch size, for the config's loss and weighting
# (one cell of configs/table.py). Stage 2 trains 10 seeds of the setting with the
# best val/reweighted_acc. Half-decade grids that hold the lrs the paper's repository
# swept and settled on (CIFAR: 0.1-0.001, CE 0.01, poly 0.1; CelebA: 1e-3-1e-4,
# 1e-4 and 4e-4) and reach higher for the large batch.
TUNING_BATCH_SIZES = (64, 512)
TUNING_LRS = {
    "cifar10": (0.001, 0.003, 0.01, 0.03, 0.1, 0.3),
    "celeba": (0.00001, 0.00003, 0.0001, 0.0003, 0.001, 0.003),
    "waterbirds": (0.0001, 0.0003, 0.001, 0.003, 0.01),
}


def tuning_grid(preset: str) -> dict[str, list]:
  """The stage-1 grid of a dataset preset's configs (their `sweep()`): batch size x lr."""
  if preset not in TUNING_LRS:
    raise ConfigError(f"no tuning grid for dataset preset {preset!r}; valid: "
                      f"{', '.join(TUNING_LRS)}")
  return {"batch_size": list(TUNING_BATCH_SIZES), "lr": list(TUNING_LRS[preset])}


# Fields that only some datasets or models read (the keyword arguments of their
# builders in polyjax.data and polyjax.models; tests/test_config.py checks them).
# A value set for another dataset or model would be ignored by training, yet be
# recorded in config.json, split report groups and block resumes: it is refused.
DATA_FIELDS = {
    "data.seed": ("digits", "gaussians", "cifar10", "cifar100", "celeba"),
    "data.data_dir": ("cifar10", "cifar100", "celeba", "waterbirds"),
    "data.val_frac": ("digits", "cifar10", "cifar100"),
    "data.class_subset": ("digits", "cifar10", "cifar100"),
    "data.imb_factor": ("digits", "cifar10", "cifar100"),
    "data.imb_type": ("cifar10", "cifar100"),
    "data.imb_over": ("cifar10", "cifar100"),
    "data.augment": ("cifar10", "cifar100"),
    "data.target": ("celeba",),
    "data.confounder": ("celeba",),
    "data.train_frac": ("celeba",),
    "data.test_per_group": ("celeba",),
    "data.resolution": ("celeba", "waterbirds"),
    "data.minority_class": ("digits",),
    "data.test_per_class": ("digits",),
    "data.mean0": ("gaussians",),
    "data.mean1": ("gaussians",),
    "data.n_minority": ("gaussians",),
    "data.n_majority": ("gaussians",),
    "data.radius": ("gaussians",),
    "data.n_test_per_class": ("gaussians",),
}
MODEL_FIELDS = {
    "model.hidden": ("mlp",),
    "model.depth": ("mlp",),
    "model.init_channels": ("cifar_resnet18", "cifar_resnet34", "cifar_resnet50"),
    "model.pretrained": ("resnet50",),
    "model.head": ("linear", "mlp", "convnet", "cifar_resnet18", "cifar_resnet34",
                   "cifar_resnet50", "resnet50", "resnet32"),
}


def check_fields_in_use(config: ml_collections.ConfigDict, *, read_stage1_dir: bool = True
                        ) -> None:
  """Raises ConfigError naming a field set (away from its default) for a dataset or
  model other than the config's, which would silently have no effect; then the
  stage-1 method fields (`read_stage1_dir`: as for `validate`)."""
  defaults = base_config()
  for fields, kind in ((DATA_FIELDS, "data.name"), (MODEL_FIELDS, "model.name")):
    name = get_field(config, kind)
    for field, users in fields.items():
      value = get_field(config, field)
      if name not in users and _as_json(value) != _as_json(get_field(defaults, field)):
        raise ConfigError(
            f"config.{field}={value!r} has no effect with {kind}={name!r} (it is read only "
            f"by {kind} {', '.join(repr(u) for u in users)}); leave it at its default")
  # The method fields, then method.stage1_dir's files.
  stage1.check_config(config, read_stage1_dir=read_stage1_dir)


def _as_json(value):
  return json.loads(json.dumps(value))  # Tuples and lists compare equal.


def validate(config: ml_collections.ConfigDict, *, device_count: int,
             read_stage1_dir: bool = True) -> None:
  """Raises ConfigError naming the first field whose value cannot be trained.
  `read_stage1_dir=False` leaves out `method.stage1_dir` (unset, or a run not yet
  trained: a study's chained cell, checked again once its stage 1 is done)."""
  # Registries are imported here so that loading a config file stays light.
  from polyjax import data, group_robust, losses, models, schedules, weighting, xla_runtime

  c = config
  _known("data.name", c.data.name, data.DATASETS)
  _known("model.name", c.model.name, models.MODELS)
  _known("model.head", c.model.head, models.HEADS)
  _known("loss.name", c.loss.name, losses.LOSSES)
  _known("loss.kind", c.loss.kind, losses.POLY_KINDS)
  _known("weighting.mode", c.weighting.mode, weighting.WEIGHTING_MODES)
  if c.wandb.mode is not None:
    _known("wandb.mode", c.wandb.mode, ("online", "offline", "disabled"))
  _check(c.wandb.init_timeout > 0, "wandb.init_timeout", "> 0", c.wandb.init_timeout)
  _known("lr_schedule", c.lr_schedule, schedules.SCHEDULES)
  _known("matmul_precision", c.matmul_precision, xla_runtime.MATMUL_PRECISIONS)
  _check(c.warmup_epochs >= 0, "warmup_epochs", ">= 0", c.warmup_epochs)
  step_epochs = tuple(c.lr_step_epochs)
  _check(all(int(e) == e and e > c.warmup_epochs for e in step_epochs)
         and list(step_epochs) == sorted(set(step_epochs)), "lr_step_epochs",
         "increasing whole epochs after warmup_epochs", step_epochs)
  _check(c.lr_step_factor > 0, "lr_step_factor", "> 0", c.lr_step_factor)
  _check(0 <= c.lr_final_frac <= 1, "lr_final_frac", "in [0, 1]", c.lr_final_frac)
  _check(c.checkpoint_every_epochs >= 1, "checkpoint_every_epochs", ">= 1",
         c.checkpoint_every_epochs)
  split, _, name = c.best_metric.partition("/")
  _check(split in ("train", "val", "test") and bool(name), "best_metric",
         "'<split>/<metric>' with split train, val or test", c.best_metric)
  _known("best_mode", c.best_mode, ("max", "min"))
  _check(0 < c.lr < math.inf, "lr", "> 0 and finite", c.lr)
  _check(0 <= c.momentum < 1, "momentum", "in [0, 1)", c.momentum)
  _check(0 <= c.weight_decay < math.inf, "weight_decay", ">= 0 and finite", c.weight_decay)
  for field in ("seed", "data.seed", "data.order_seed"):  # numpy and JAX seeds.
    value = get_field(c, field)
    _check(value is None or 0 <= value < 2 ** 32, field, "in [0, 2**32)", value)
  _check(c.num_epochs >= 1, "num_epochs", ">= 1", c.num_epochs)
  _check(c.eval_every_epochs >= 1, "eval_every_epochs", ">= 1", c.eval_every_epochs)
  _check(0 < c.loss.alpha < math.inf, "loss.alpha", "> 0 and finite", c.loss.alpha)
  _check(math.isfinite(c.loss.beta), "loss.beta", "finite", c.loss.beta)
  if c.loss.name == "poly" and c.loss.kind == "linear":
    _check(c.loss.alpha > 1, "loss.alpha", "> 1 for loss.kind='linear'", c.loss.alpha)
  _check(0 <= c.weighting.exponent < math.inf, "weighting.exponent", ">= 0 and finite",
         c.weighting.exponent)
  method_checks.check(c)
  _check(0 <= c.weighting.adv_probs_lr < math.inf, "weighting.adv_probs_lr", ">= 0 and finite",
         c.weighting.adv_probs_lr)
  if c.weighting.mode == "dro":
    _check(c.weighting.adv_probs_lr > 0, "weighting.adv_probs_lr", "> 0 for weighting.mode='dro'",
           c.weighting.adv_probs_lr)
  group_robust.check_config(c)
  _known("data.pipeline", c.data.pipeline, data.PIPELINES)
  _check(c.data.pipeline == "memory" or c.data.name in data.STREAMABLE, "data.pipeline",
         f"'memory' for data.name={c.data.name!r} (stream needs one of "
         f"{', '.join(data.STREAMABLE)})", c.data.pipeline)
  # Every split is evaluated (and the best checkpoint picked on val): none may be empty.
  _check(0 < c.data.val_frac < 1, "data.val_frac", "in (0, 1)", c.data.val_frac)
  _known("data.imb_type", c.data.imb_type, ("step", "exp", "none"))
  _known("data.imb_over", c.data.imb_over, ("subset", "all"))
  _check(c.data.imb_factor >= 1, "data.imb_factor", ">= 1", c.data.imb_factor)
  _check(not c.data.augment or c.data.name in ("cifar10", "cifar100"), "data.augment",
         "False unless data.name is 'cifar10' or 'cifar100'", c.data.augment)
  _check(0 < c.data.train_frac <= 1, "data.train_frac", "in (0, 1]", c.data.train_frac)
  _check(c.data.test_per_group >= 1, "data.test_per_group", ">= 1", c.data.test_per_group)
  _check(c.data.resolution >= 32, "data.resolution", ">= 32", c.data.resolution)
  _check(c.model.init_channels >= 1, "model.init_channels", ">= 1", c.model.init_channels)
  if c.model.pretrained is not None:
    _check(c.model.name == "resnet50", "model.pretrained",
           "None unless model.name='resnet50'", c.model.pretrained)
    _check(os.path.isfile(os.path.expanduser(c.model.pretrained)), "model.pretrained",
           "an existing .npz file", c.model.pretrained)
  check_fields_in_use(c, read_stage1_dir=read_stage1_dir)
  for field in ("batch_size", "eval_batch_size"):
    value = c[field]
    _check(value >= 1, field, ">= 1", value)
    _check(value % device_count == 0, field,
           f"divisible by the device count ({device_count})", value)


# Fields that may differ when a run is resumed: they change neither the training
# trajectory nor what the run's files mean. `num_epochs` may grow (or shrink to no
# fewer than the epochs done) unless the lr schedule's or the weights' annealing
# shape depends on it.
# `deterministic` changes only which GPU kernels compute the same thing (their
# rounding), as eval_batch_size changes the order of evaluation sums.
RESUMABLE_FIELDS = ("num_epochs", "checkpoint_every_epochs", "eval_batch_size",
                    "test_on_best", "deterministic", "data.data_dir", "data.pipeline",
                    "wandb.*")


def resume_changes(saved: dict, current: dict) -> list[str]:
  """Fields (dotted) whose values differ between a run's saved config and the current one
  in a way that matters for resuming it (everything but RESUMABLE_FIELDS).

  Both are plain dicts (`ConfigDict.to_dict()`, or config.json); tuples and lists
  compare equal, as JSON has no tuples. A field that a saved config lacks (saved
  before the field existed) counts as its `base_config()` default, which is always
  the behaviour from before the field.
  """
  # Compare as JSON sees them (tuples, nested ones included, become lists).
  old, new, defaults = (flatten(json.loads(json.dumps(d)))
                        for d in (saved, current, base_config().to_dict()))
  free = {f for f in RESUMABLE_FIELDS if not f.endswith(".*")}
  free_prefixes = tuple(f[:-1] for f in RESUMABLE_FIELDS if f.endswith(".*"))
  if current.get("lr_schedule", "constant") == "cosine":
    free.discard("num_epochs")  # The cosine decays over num_epochs.
  if current.get("weighting", {}).get("anneal", "none") != "none":
    free.discard("num_epochs")  # The weights anneal over num_epochs.
  changed = []
  for field in sorted(set(old) | set(new)):
    if field in free or field.startswith(free_prefixes):
      continue
    missing = defaults.get(field, "<missing>")
    if old.get(field, missing) != new.get(field, missing):
      changed.append(field)
  return changed
