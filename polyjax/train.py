"""`train_and_evaluate(config, workdir)`: one experiment, start to finish.

Fixed order: data -> model, optimizer, state -> jitted steps -> run directory ->
epoch loop (train, NaN check, evaluate, write, checkpoint) -> summary. Names in
the config are resolved here, once; the steps never branch on a string. Every
check that can fail on the config and data runs before the run directory is made.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from polyjax import checkpointing, data, losses, metrics, run_dir, steps, train_state
from polyjax.config import ConfigError

SPLITS = ("train", "val", "test")
PROGRESS_KEYS = ("train/objective", "train/acc", "val/reweighted_acc",
                 "test/reweighted_acc", "test/worst_group_acc")


class Diverged(RuntimeError):
  """The training objective became NaN or Inf."""


@dataclasses.dataclass
class Experiment:
  """Everything resolved from the config that the loop needs."""
  dataset: data.Dataset
  model_def: train_state.ModelDef
  state: train_state.TrainState
  shardings: steps.Shardings
  train_epoch: Any
  eval_counts: Any
  order_seed: int


def build(config: ml_collections.ConfigDict, *, mesh=None) -> Experiment:
  """Loads data and builds model, optimizer, state and the jitted steps."""
  mesh = steps.make_mesh() if mesh is None else mesh
  data_cfg = config.data.to_dict()
  name = data_cfg.pop("name")
  data_cfg.pop("order_seed")
  dataset = data.load(name, weighting_mode=config.weighting.mode,
                      exponent=config.weighting.exponent, **data_cfg)
  if len(dataset.train) < config.batch_size:
    raise ConfigError(f"config.batch_size={config.batch_size} is larger than the training "
                      f"split of data.name={name!r} ({len(dataset.train)} examples)")
  loss_cfg = config.loss.to_dict()
  loss_fn = losses.get_loss(loss_cfg.pop("name"), class_counts=dataset.train_class_counts,
                            group_counts=dataset.train_group_counts, **loss_cfg)
  tx = train_state.make_optimizer(lr=config.lr, momentum=config.momentum,
                                  weight_decay=config.weight_decay)
  model_cfg = config.model.to_dict()
  freeze = model_cfg.pop("freeze_features")
  tx = train_state.head_only(tx) if freeze else tx
  model_def, state = train_state.create(
      model_name=model_cfg.pop("name"), model_kwargs=model_cfg, in_shape=dataset.in_shape,
      num_classes=dataset.num_classes, num_groups=dataset.num_groups, tx=tx,
      seed=config.seed, freeze_features=freeze)
  shardings = steps.Shardings(mesh)
  state = jax.device_put(state, shardings.replicated)
  train_step = steps.make_train_step(model_def=model_def, loss_fn=loss_fn, tx=tx,
                                     preprocess=dataset.preprocess)
  order_seed = config.seed if config.data.order_seed is None else config.data.order_seed
  return Experiment(
      dataset=dataset, model_def=model_def, state=state, shardings=shardings,
      train_epoch=steps.make_train_epoch(train_step, shardings),
      eval_counts=steps.make_eval_counts(model_def=model_def, loss_fn=loss_fn,
                                         num_groups=dataset.num_groups,
                                         shardings=shardings,
                                         preprocess=dataset.preprocess),
      order_seed=order_seed)


def evaluate(exp: Experiment, state, eval_data: dict[str, Any]) -> dict[str, float]:
  """All SPEC §6 metrics of every split, keyed like 'test/reweighted_acc'."""
  counts = {split: exp.eval_counts(state, padded) for split, padded in eval_data.items()}
  out = {}
  for split, c in jax.device_get(counts).items():
    for k, v in metrics.finalize(c, train_group_counts=exp.dataset.train_group_counts).items():
      out[f"{split}/{k}"] = v
  return out


def _progress(epoch: int, num_epochs: int, step: int, values: dict[str, float],
              seconds: float) -> str:
  shown = "  ".join(f"{k} {values[k]:.4f}" for k in PROGRESS_KEYS if k in values)
  return f"epoch {epoch}/{num_epochs}  step {step}  {shown}  ({seconds:.2f}s)"


def run_record(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """What config.json holds beside the config: identity of the run and its machine."""
  return {
      "seed": config.seed,
      "workdir": str(workdir),
      "data_dir": config.data.data_dir,
      "host": platform.node(),
      "versions": run_dir.versions(),
      "device_count": jax.device_count(),
      "device_kind": jax.devices()[0].device_kind,
      "process_count": jax.process_count(),
  }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       mesh=None) -> dict[str, Any]:
  """Trains and evaluates one experiment; writes its run directory; returns the summary.

  Raises:
    ConfigError: a value that cannot be trained (before anything is written).
    Diverged: the objective became non-finite (after `summary.json` records it).
  """
  exp = build(config, mesh=mesh)
  sh = exp.shardings
  train_data = jax.device_put(steps.split_arrays(exp.dataset.train), sh.replicated)
  eval_data = {
      split: jax.device_put(steps.pad_for_eval(s, config.eval_batch_size), sh.stacked_batches)
      for split, s in exp.dataset.splits().items()
  }

  run = run_dir.RunDir(workdir)
  run.create()
  run.write_config(config.to_dict(), **run_record(config, workdir))
  checkpoints = checkpointing.Checkpoints(run.checkpoints,
                                          every_epochs=config.num_epochs)
  state = exp.state
  summary: dict[str, Any] = {"status": "running", "epochs_completed": 0, "final": {}}
  start = time.time()
  values: dict[str, float] = {}
  try:
    for epoch in range(1, config.num_epochs + 1):
      t0 = time.time()
      idx_SxB = steps.epoch_indices(len(exp.dataset.train), config.batch_size,
                                    seed=exp.order_seed, epoch=epoch)
      state, objective_S = exp.train_epoch(state, train_data,
                                           jax.device_put(idx_SxB, sh.stacked_batches))
      objective_S = np.asarray(objective_S)
      if not np.all(np.isfinite(objective_S)):
        bad = int(np.flatnonzero(~np.isfinite(objective_S))[0])
        step = (epoch - 1) * len(idx_SxB) + bad + 1
        summary.update(status="diverged", diverged_at={"epoch": epoch, "step": step})
        raise Diverged(f"training objective is {objective_S[bad]} at epoch {epoch}, "
                       f"step {step}; stopping (no checkpoint of this state is kept)")
      summary["epochs_completed"] = epoch
      if epoch % config.eval_every_epochs == 0 or epoch == config.num_epochs:
        values = evaluate(exp, state, eval_data)
        values["train/objective"] = float(objective_S.mean())
        step = int(state.step)
        rows = []
        for split in SPLITS:
          prefix = f"{split}/"
          row = {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}
          rows.append({"epoch": epoch, "step": step, "split": split, **row})
        run.append_metrics(rows)
        print(_progress(epoch, config.num_epochs, step, values, time.time() - t0), flush=True)
      checkpoints.save(epoch, state, force=epoch == config.num_epochs)
    summary.update(status="completed", final=values)
  except KeyboardInterrupt:
    summary["status"] = "interrupted"
    raise
  except Diverged:
    raise
  except BaseException:
    summary["status"] = "failed"
    raise
  finally:
    summary["wall_seconds"] = time.time() - start
    summary["steps"] = int(jax.device_get(state.step))
    checkpoints.close()
    run.write_summary(summary)
  return summary
