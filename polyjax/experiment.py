"""One member's experiment resolved from its config: data, model, optimizer, state
and its jitted programs, and the metrics of a state.

Names in the config are resolved here, once; the programs never branch on a
string. `build` runs every check that can fail on the config and data, before a
run directory is written.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from polyjax import (data, group_robust, losses, metrics, placement, schedules, steps, train_state,
                     weight_schedule, weighting, xla_runtime)
from polyjax.errors import ConfigError

SPLITS = ("train", "val", "test")  # Every run's; `eval_splits` adds 'extras' when kept.


@dataclasses.dataclass
class Experiment:
  """Everything resolved from the config that the loop needs."""
  dataset: data.Dataset
  model_def: train_state.ModelDef
  state: train_state.TrainState
  shardings: placement.Shardings
  train_epoch: Any
  eval_counts: Any
  order_seed: int
  lr_factor: Any  # step -> multiplier of config.lr (None: constant).
  compiler_options: dict[str, str] | None  # XLA options of the training program.
  sample_p: np.ndarray | None = None  # (N,) per-epoch sampling probabilities ('resampled').
  record: dict = dataclasses.field(default_factory=dict)  # What stage 1 gave (polyjax.two_stage); summary.json keeps it.
  weight_fn: Any = None  # Loss weights of a step when they change over training (weight_schedule).
  resample_once: bool = False  # 'resampled': one draw for the whole run (steps.epoch_indices).


def build(config: ml_collections.ConfigDict, *, mesh=None,
          dataset: data.Dataset | None = None) -> Experiment:
  """Loads data and builds model, optimizer, state and the jitted steps.

  `dataset`, if given, is `config.data` already loaded and weighted with
  `config.weighting` (a sweep loads it once for many members).
  """
  mesh = placement.make_mesh() if mesh is None else mesh
  if dataset is None:
    dataset = data.load_config(config)
  if len(dataset.train) < config.batch_size:
    raise ConfigError(f"config.batch_size={config.batch_size} is larger than the training "
                      f"split of data.name={config.data.name!r} ({len(dataset.train)} examples)")
  loss_cfg = config.loss.to_dict()
  loss_fn = losses.get_loss(loss_cfg.pop("name"), class_counts=dataset.train_class_counts,
                            group_counts=dataset.train_group_counts, **loss_cfg)
  lr_factor = None
  if config.lr_schedule != "constant" or config.warmup_epochs > 0:
    lr_factor = schedules.lr_factor(
        config.lr_schedule, steps_per_epoch=len(dataset.train) // config.batch_size,
        num_epochs=config.num_epochs, warmup_epochs=config.warmup_epochs,
        step_epochs=config.lr_step_epochs, step_factor=config.lr_step_factor,
        final_frac=config.lr_final_frac)
  tx = train_state.make_optimizer(lr=config.lr, momentum=config.momentum,
                                  weight_decay=config.weight_decay, lr_factor=lr_factor)
  model_cfg = config.model.to_dict()
  freeze = model_cfg.pop("freeze_features")
  tx = train_state.head_only(tx) if freeze else tx
  model_def, state = train_state.create(
      model_name=model_cfg.pop("name"), model_kwargs=model_cfg, in_shape=dataset.in_shape,
      num_classes=dataset.num_classes, num_groups=dataset.num_groups, tx=tx,
      seed=config.seed, freeze_features=freeze)
  state = state.replace(dro_auto=group_robust.initial_auto_state(
      config.weighting, dataset.train_group_counts))
  shardings = placement.Shardings(mesh)
  state = placement.to_global(state, shardings.replicated)
  reduction = group_robust.config_reduction(config.weighting, dataset.train_group_counts)
  weight_fn = weight_schedule.config_weight_fn(config, dataset)
  train_step = steps.make_train_step(model_def=model_def, loss_fn=loss_fn, tx=tx,
                                     reduction=reduction, preprocess=dataset.preprocess,
                                     weight_fn=weight_fn)
  order_seed = config.seed if config.data.order_seed is None else config.data.order_seed
  eval_kwargs = dict(model_def=model_def, loss_fn=loss_fn, num_groups=dataset.num_groups,
                     shardings=shardings, preprocess=dataset.preprocess)
  compiler_options = xla_runtime.train_compiler_options(
      num_params=sum(x.size for x in jax.tree.leaves(state.params)),
      batch_size=config.batch_size)
  if config.data.pipeline == "stream":  # Splits stay in their source, read per batch.
    from polyjax import streaming  # grain, only for the runs that stream.
    train_epoch = streaming.make_streamed_train_epoch(train_step, shardings)
    eval_counts = streaming.make_streamed_eval_counts(**eval_kwargs,
                                                  batch_size=config.eval_batch_size)
  else:
    train_epoch = steps.make_train_epoch(train_step, shardings,
                                         compiler_options=compiler_options)
    eval_counts = steps.make_eval_counts(**eval_kwargs)
  return Experiment(
      dataset=dataset, model_def=model_def, state=state, shardings=shardings,
      train_epoch=xla_runtime.WithMatmulPrecision(train_epoch, config.matmul_precision),
      eval_counts=xla_runtime.WithMatmulPrecision(eval_counts, config.matmul_precision),
      order_seed=order_seed, lr_factor=lr_factor, compiler_options=compiler_options,
      weight_fn=weight_fn, resample_once=config.weighting.resample_once,
      sample_p=weighting.sampling_probs(dataset.train.group, dataset.train_group_counts,
                                        mode=config.weighting.mode,
                                        exponent=config.weighting.exponent))


def eval_splits(ds: data.Dataset) -> tuple[str, ...]:
  """The splits a run evaluates, in order: SPLITS, then 'extras' when the dataset
  keeps them (`weighting.evaluate_extras`)."""
  return tuple(ds.splits())


def eval_data(exp: Experiment, config, splits: Sequence[str] | None = None) -> Any:
  """What `evaluate` reads for `splits` (default: `eval_splits`): in memory, all of
  them packed into one array set on the devices (`steps.pack_for_eval`); streamed,
  the splits themselves."""
  splits = eval_splits(exp.dataset) if splits is None else splits
  chosen = [exp.dataset.splits()[s] for s in splits]
  if config.data.pipeline == "stream":
    return chosen
  batch = steps.eval_batch_size(config.eval_batch_size, chosen, exp.shardings.mesh.size)
  return placement.to_global(steps.pack_for_eval(chosen, batch), exp.shardings.stacked_batches)


def evaluate(exp: Experiment, state, data: Any, splits: Sequence[str] | None = None
             ) -> dict[str, float]:
  """All metrics (docs/metrics.md) of `splits` (as given to `eval_data`; default:
  `eval_splits`), keyed like 'test/reweighted_acc'."""
  splits = eval_splits(exp.dataset) if splits is None else splits
  counts = jax.device_get(exp.eval_counts(state, data))  # Leading axis: the splits.
  return split_values(counts, splits, train_group_counts=exp.dataset.train_group_counts)


def split_values(counts: dict[str, Any], splits: Sequence[str], *,
                 train_group_counts) -> dict[str, float]:
  """Host counts with a leading split axis (in `splits` order) -> the metrics of
  every split, keyed like 'test/reweighted_acc'."""
  out = {}
  for i, split in enumerate(splits):
    c = {k: v[i] for k, v in counts.items()}
    for k, v in metrics.finalize(c, train_group_counts=train_group_counts).items():
      out[f"{split}/{k}"] = v
  return out


def check_best_metric(config, ds: data.Dataset) -> None:
  """Raises ConfigError unless config.best_metric is a metric this run reports."""
  split, _, name = config.best_metric.partition("/")
  # The names depend only on the numbers of classes and groups: trace the counts
  # of one example (no compilation, no data read) and finalize ones of that shape.
  shapes = jax.eval_shape(lambda: metrics.batch_counts(
      logits_BxC=jnp.zeros((1, ds.num_classes)), labels_B=jnp.zeros(1, jnp.int32),
      groups_B=jnp.zeros(1, jnp.int32), loss_B=jnp.zeros(1), weight_B=jnp.ones(1),
      mask_B=jnp.ones(1, bool), num_groups=ds.num_groups))
  counts = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes)
  names = metrics.finalize(counts, train_group_counts=ds.train_group_counts)
  if name not in names:
    raise ConfigError(f"config.best_metric={config.best_metric!r} is not a metric of this "
                      f"run; valid: {', '.join(f'{split}/{k}' for k in sorted(names))}")


def lr_at(config, exp: Experiment, step: int) -> float:
  """The learning rate of optimizer step `step` (1-based): config.lr times the schedule."""
  return float(config.lr * (1.0 if exp.lr_factor is None else exp.lr_factor(step - 1)))


def split_logits(exp: Experiment, state, split: str, *, batch_size: int,
                 matmul_precision: str) -> np.ndarray:
  """(N, C) float32 logits of `state`'s model on every example of `split`, in order:
  inputs preprocessed as the run's evaluation does (uint8 images normalised), under
  the run's matmul precision; `batch_size` a multiple of the mesh size."""
  s = exp.dataset.splits()[split]
  sh, preprocess = exp.shardings, exp.dataset.preprocess
  batch = steps.eval_batch_size(batch_size, [s], sh.mesh.size)
  packed = steps.pack_for_eval([s], batch, keys=("x",))

  def apply(state, x):
    x = x if preprocess is None else preprocess(x)
    return exp.model_def.apply(state, x, train=False)[0]

  fn = xla_runtime.WithMatmulPrecision(
      jax.jit(apply, in_shardings=(sh.replicated, sh.batch), out_shardings=sh.replicated),
      matmul_precision)
  return np.concatenate([np.asarray(fn(state, x)) for x in packed["x"]])[: len(s)]
