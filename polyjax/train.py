"""`train_and_evaluate(config, workdir)`: one experiment, start to finish.

Fixed order: data -> model, optimizer, state -> jitted steps -> run directory ->
restore (resume) -> wandb -> epoch loop (train, NaN check, evaluate, write,
checkpoint; consecutive epochs that need nothing from the host share one compiled
call, `call_end`) -> test the best checkpoint -> summary. Names in the config are
resolved here, once; the steps never branch on a string. Every check that can
fail on the config and data runs before the run directory is written.

An existing run directory is resumed from its latest checkpoint, and ends exactly
where an uninterrupted run ends: the checkpoint holds the whole train state, and
the epoch it was taken at fixes the input order from there on. A resume whose
config differs in a field that matters (`config.resume_changes`) is refused
unless `allow_config_change` is set. SIGTERM/SIGINT stop the run after the
current call with a checkpoint and status 'interrupted'.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from polyjax import (checkpointing, data, lifecycle, losses, metrics, progress, run_dir,
                     schedules, steps, train_state, wandb_logger, weighting)
from polyjax import placement, streaming, xla_runtime
from polyjax import config as config_lib
from polyjax.errors import ConfigError

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
  shardings: placement.Shardings
  train_epoch: Any
  eval_counts: Any
  order_seed: int
  lr_factor: Any  # step -> multiplier of config.lr (None: constant).
  sample_p: np.ndarray | None = None  # (N,) per-epoch sampling probabilities ('resampled').


def build(config: ml_collections.ConfigDict, *, mesh=None,
          dataset: data.Dataset | None = None) -> Experiment:
  """Loads data and builds model, optimizer, state and the jitted steps.

  `dataset`, if given, is `config.data` already loaded and weighted with
  `config.weighting` (a sweep loads it once for many members).
  """
  mesh = placement.make_mesh() if mesh is None else mesh
  data_cfg = config.data.to_dict()
  name = data_cfg.pop("name")
  data_cfg.pop("order_seed")
  if dataset is None:
    dataset = data.load(name, weighting_mode=config.weighting.mode,
                        exponent=config.weighting.exponent, **data_cfg)
  if len(dataset.train) < config.batch_size:
    raise ConfigError(f"config.batch_size={config.batch_size} is larger than the training "
                      f"split of data.name={name!r} ({len(dataset.train)} examples)")
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
  shardings = placement.Shardings(mesh)
  state = placement.to_global(state, shardings.replicated)
  reduction = weighting.make_reduction(config.weighting.mode, num_groups=dataset.num_groups,
                                       adv_probs_lr=config.weighting.adv_probs_lr)
  train_step = steps.make_train_step(model_def=model_def, loss_fn=loss_fn, tx=tx,
                                     reduction=reduction, preprocess=dataset.preprocess)
  order_seed = config.seed if config.data.order_seed is None else config.data.order_seed
  eval_kwargs = dict(model_def=model_def, loss_fn=loss_fn, num_groups=dataset.num_groups,
                     shardings=shardings, preprocess=dataset.preprocess)
  if config.data.pipeline == "stream":  # Splits stay in their source, read per batch.
    train_epoch = streaming.make_streamed_train_epoch(train_step, shardings)
    eval_counts = streaming.make_streamed_eval_counts(**eval_kwargs,
                                                  batch_size=config.eval_batch_size)
  else:
    train_epoch = steps.make_train_epoch(
        train_step, shardings, compiler_options=xla_runtime.train_compiler_options(
            num_params=sum(x.size for x in jax.tree.leaves(state.params)),
            batch_size=config.batch_size))
    eval_counts = steps.make_eval_counts(**eval_kwargs)
  return Experiment(
      dataset=dataset, model_def=model_def, state=state, shardings=shardings,
      train_epoch=xla_runtime.WithMatmulPrecision(train_epoch, config.matmul_precision),
      eval_counts=xla_runtime.WithMatmulPrecision(eval_counts, config.matmul_precision),
      order_seed=order_seed, lr_factor=lr_factor,
      sample_p=weighting.sampling_probs(dataset.train.group, dataset.train_group_counts,
                                        mode=config.weighting.mode,
                                        exponent=config.weighting.exponent))


def eval_data(exp: Experiment, config, splits: Sequence[str] = SPLITS) -> Any:
  """What `evaluate` reads for `splits`: in memory, all of them packed into one
  array set on the devices (`steps.pack_for_eval`); streamed, the splits themselves."""
  chosen = [exp.dataset.splits()[s] for s in splits]
  if config.data.pipeline == "stream":
    return chosen
  batch = steps.eval_batch_size(config.eval_batch_size, chosen, exp.shardings.mesh.size)
  return placement.to_global(steps.pack_for_eval(chosen, batch), exp.shardings.stacked_batches)


def evaluate(exp: Experiment, state, data: Any, splits: Sequence[str] = SPLITS
             ) -> dict[str, float]:
  """All metrics (docs/metrics.md) of `splits` (as given to `eval_data`), keyed like
  'test/reweighted_acc'."""
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
      # What XLA was started with (the GPU determinism flag of `config.deterministic`).
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def _better(value: float, best: float | None, mode: str) -> bool:
  """Strictly better, so that among equal values the earliest epoch stays the best."""
  if not np.isfinite(value):
    return False
  return best is None or (value > best if mode == "max" else value < best)


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


TRAIN_ONLY_KEYS = ("train/objective", "train/lr")  # Values of the epoch, not of a state.


def lr_at(config, exp: Experiment, step: int) -> float:
  """The learning rate of optimizer step `step` (1-based): config.lr times the schedule."""
  return float(config.lr * (1.0 if exp.lr_factor is None else exp.lr_factor(step - 1)))


def record_epoch(config, run: run_dir.RunDir, checkpoints: checkpointing.Checkpoints, *,
                 epoch: int, step: int, state, values: dict[str, float] | None,
                 best_epoch: int | None, best_value: float | None, stopping: bool = False
                 ) -> tuple[int | None, float | None]:
  """The end of a finished epoch: writes its metrics rows (`values`, None when the
  epoch was not evaluated), tracks the best epoch and saves the checkpoint (with
  its meta) when the policy, the last epoch or a stop asks for it (an interval save
  may be deferred while the previous one is being written). A new best that is
  not saved now is held and written before the next save (`Checkpoints.hold_best`).
  `state` is the train state, or a function returning it (called only when the
  state is saved or held).

  Returns the new (best_epoch, best_value).
  """
  value = None
  if values is not None:
    rows = []
    for split in SPLITS:
      prefix = f"{split}/"
      row = {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}
      rows.append({"epoch": epoch, "step": step, "split": split, **row})
    run.append_metrics(rows)
    value = values[config.best_metric]
    if _better(value, best_value, config.best_mode):
      best_epoch, best_value = epoch, value
  get_state = state if callable(state) else lambda: state
  meta = {"step": step, "best_epoch": best_epoch, "best_value": best_value}
  force = epoch == config.num_epochs or stopping
  saved = False
  if checkpoints.due(epoch, force=force):
    run.sync_metrics()
    saved = checkpoints.save(epoch, get_state(), best_value=value, meta=meta, force=force)
  if not saved and best_epoch == epoch:  # Not due, or deferred.
    checkpoints.hold_best(epoch, get_state(), meta=meta, best_value=value)
  checkpoints.write_deferred()
  return best_epoch, best_value


def resume_check(config, saved: dict | None, workdir: str, allow_change: bool) -> list[str]:
  """The fields that matter and differ from the run in `workdir`; raises unless allowed."""
  if saved is None:
    return []
  current = config.to_dict()
  # config.json also holds the run record (host, versions, ...): compare config fields only.
  changed = config_lib.resume_changes({k: v for k, v in saved.items() if k in current}, current)
  if changed and not allow_change:
    raise ConfigError(
        f"workdir {workdir} holds a run whose config differs in {', '.join(changed)}; "
        f"resuming it would mix two experiments (use another --workdir, or pass "
        f"--allow_config_change to resume anyway)")
  return changed


FUSED_STEPS = 512  # At most this many steps per call when a call trains several epochs.


def call_end(config, epoch: int, steps_per_epoch: int) -> int:
  """The last epoch of the compiled call that starts after `epoch`.

  Epochs that are neither evaluated nor checkpointed need nothing from the host,
  so consecutive ones run in one call (up to FUSED_STEPS steps, which also bounds
  how long a stop signal waits). Tiny epochs gain most: the full-batch Figure 1
  data has one step per epoch, which alone costs far less than a call.
  """
  limit = min(config.num_epochs, epoch + max(1, FUSED_STEPS // steps_per_epoch))
  end = epoch + 1
  while (end < limit and end % config.eval_every_epochs
         and end % config.checkpoint_every_epochs):
    end += 1
  return end


def completed_summary(config, run: run_dir.RunDir) -> dict[str, Any] | None:
  """The summary of the run in `run` if it has already done all that `config` asks
  (rerunning its command then changes nothing), else None."""
  summary = run.read_summary()
  if not summary or summary.get("status") != "completed":
    return None
  if summary.get("epochs_completed") != config.num_epochs:
    return None  # num_epochs was raised: train on.
  if config.test_on_best and summary.get("best_epoch") is not None and not summary.get("best"):
    return None  # test_on_best was switched on: the best checkpoint is still to test.
  return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       mesh=None, allow_config_change: bool = False,
                       log_every: int = 0) -> dict[str, Any]:
  """Trains and evaluates one experiment (resuming `workdir` if it holds a run);
  writes its run directory; returns the summary. A run that has already done what
  `config` asks is left as it is (its summary is returned).

  Process 0 shows the progress (`progress.Progress`): a bar when stdout is a
  terminal, and the line of every `log_every`-th evaluated epoch (0: on a terminal
  none, elsewhere every one).

  Raises:
    ConfigError: a value that cannot be trained, or a resume with a changed config
      (before anything is written).
    checkpointing.CheckpointDirError: the run or checkpoint directory is not writable,
      or holds no intact checkpoint.
    run_dir.RunDirBusy: another process is writing the run directory.
    Diverged: the objective or the state became non-finite (after `summary.json`
      records it; the last checkpoint is the last finite state).
  """
  run = run_dir.RunDir(workdir, is_writer=jax.process_index() == 0)
  sizes = {"checkpoint_bytes": 0}
  # SIGTERM/SIGINT are handled from here until the run's files are closed: a signal
  # that reaches one process of several, during set-up or the last (collective)
  # saves, must not end it alone; the processes agree on stopping.
  stop = lifecycle.StopSignals()
  try:
    with stop:
      return _train_and_evaluate(config, run, mesh=mesh, stop=stop, sizes=sizes,
                                 allow_config_change=allow_config_change,
                                 log_every=log_every)
  except Exception as e:
    if run_dir.is_disk_full(e):
      raise run_dir.disk_full_error(run.path, sizes["checkpoint_bytes"]) from e
    raise
  finally:
    run.unlock()


def _train_and_evaluate(config, run: run_dir.RunDir, *, mesh, stop: lifecycle.StopSignals,
                        sizes: dict[str, int], allow_config_change: bool,
                        log_every: int) -> dict[str, Any]:
  workdir = str(run.path)
  if run.path.exists():
    run.lock()  # Before reading it: another writer would change it under us.
  saved_config = run.read_config()
  changed = resume_check(config, saved_config, workdir, allow_config_change)
  if saved_config is not None and not changed:
    done = completed_summary(config, run)
    if done is not None:
      if run.is_writer:
        print(f"polyjax: {workdir} already holds the completed run of "
              f"{done['epochs_completed']} epochs; nothing to do", flush=True)
      return done
  exp = build(config, mesh=mesh)
  sizes["checkpoint_bytes"] = sum(x.nbytes for x in jax.tree.leaves(exp.state))
  sh = exp.shardings
  streamed = config.data.pipeline == "stream"
  if streamed:  # The streamed steps read the splits themselves, batch by batch.
    train_data = exp.dataset.train
  else:
    train_data = placement.to_global(steps.split_arrays(exp.dataset.train), sh.replicated)
  eval_inputs = eval_data(exp, config)
  check_best_metric(config, exp.dataset)

  checkpointing.check_writable(run.path, "run directory")
  run.lock()
  checkpoints = checkpointing.Checkpoints(run.checkpoints,
                                          every_epochs=config.checkpoint_every_epochs,
                                          best_mode=config.best_mode,
                                          defer_while_writing=jax.process_count() == 1)
  state = exp.state
  start_epoch, best_epoch, best_value, prior_seconds = 0, None, None, 0.0
  resumes = list((saved_config or {}).get("resumes", []))
  try:
    latest = checkpoints.latest_epoch()
    if latest is not None:
      if latest > config.num_epochs:
        raise ConfigError(f"config.num_epochs={config.num_epochs} is below the {latest} "
                          f"epochs already done in {workdir}")
      try:
        restored = checkpoints.restore_latest(like=exp.state)
      except checkpointing.CheckpointMismatch as e:
        raise ConfigError(str(e)) from e
      if restored is not None:
        start_epoch, state, meta = restored
        best_epoch, best_value = meta["best_epoch"], meta["best_value"]
        prior_seconds = float((run.read_summary() or {}).get("wall_seconds", 0.0))
        resumes.append({"epoch": start_epoch, "changed_fields": changed, "time": time.time()})
    repair = run_dir.MetricsRepair()
    if saved_config is not None:
      repair = run.truncate_metrics(start_epoch, eval_every=config.eval_every_epochs)
  except BaseException:
    checkpoints.close()
    raise
  if saved_config is not None and run.is_writer:
    print(f"polyjax: resuming {workdir} at epoch {start_epoch}"
          + (f" (dropped {repair.dropped} metrics rows written after that checkpoint)"
             if repair.dropped else "")
          + (f"; changed: {', '.join(changed)}" if changed else ""), flush=True)
    warning = repair.warning(run.path / run_dir.METRICS, start_epoch)
    if warning:
      print(f"polyjax: warning: {warning}", file=sys.stderr, flush=True)

  record = run_record(config, workdir)
  run.write_config(config.to_dict(), **record, resumes=resumes)
  wandb = wandb_logger.for_run(config, workdir, record, enabled=run.is_writer)

  summary: dict[str, Any] = {
      "status": "running", "epochs_completed": start_epoch, "final": {}, "best": {},
      "best_metric": config.best_metric, "best_epoch": best_epoch}
  start = time.time()
  values: dict[str, float] = {}
  steps_done = int(jax.device_get(state.step))
  shown = progress.Progress(config.num_epochs, start_epoch=start_epoch, log_every=log_every,
                            eval_every=config.eval_every_epochs, enabled=run.is_writer)
  try:
    n_train = len(exp.dataset.train)
    steps_per_epoch = n_train // config.batch_size
    epoch = start_epoch
    stopped_in_setup = stop.received_anywhere()  # Then no epoch is started.
    while epoch < config.num_epochs and not stopped_in_setup:
      t0 = time.time()
      first, epoch = epoch + 1, call_end(config, epoch, steps_per_epoch)
      idx_SxB = steps.epochs_indices(n_train, config.batch_size, seed=exp.order_seed,
                                     epochs=range(first, epoch + 1), p=exp.sample_p)
      state, objective = exp.train_epoch(
          state, train_data,
          idx_SxB if streamed else placement.to_global(idx_SxB, sh.stacked_batches))
      objective_ExS = np.asarray(objective).reshape(epoch - first + 1, steps_per_epoch)
      if not np.all(np.isfinite(objective_ExS)):
        bad_e, bad_s = np.argwhere(~np.isfinite(objective_ExS))[0]
        bad_epoch = first + int(bad_e)
        step = (bad_epoch - 1) * steps_per_epoch + int(bad_s) + 1
        summary.update(status="diverged", diverged_at={"epoch": bad_epoch, "step": step})
        raise Diverged(f"training objective is {objective_ExS[bad_e, bad_s]} at epoch "
                       f"{bad_epoch}, step {step}; stopping (no checkpoint of this state "
                       f"is kept)")
      if not lifecycle.is_finite(state):
        step = epoch * steps_per_epoch
        summary.update(status="diverged", diverged_at={"epoch": epoch, "step": step})
        raise Diverged(f"the train state holds NaN or Inf after epoch {epoch}, step "
                       f"{step}; stopping (no checkpoint of this state is kept)")
      objective_S = objective_ExS[-1]
      summary["epochs_completed"] = epoch
      step = steps_done = int(state.step)
      values_now = bar_text = line = None
      if epoch % config.eval_every_epochs == 0 or epoch == config.num_epochs:
        values = values_now = evaluate(exp, state, eval_inputs)
        values["train/objective"] = float(objective_S.mean())
        values["train/lr"] = lr_at(config, exp, step)
        wandb.log(step, {"epoch": epoch, **values})
        bar_text = progress.metrics_text(values)
        line = _progress(epoch, config.num_epochs, step, values, time.time() - t0)
      shown.epoch(epoch, bar_text=bar_text, line=line)
      stopping = epoch < config.num_epochs and stop.received_anywhere()
      best_epoch, best_value = record_epoch(
          config, run, checkpoints, epoch=epoch, step=step, state=state, values=values_now,
          best_epoch=best_epoch, best_value=best_value, stopping=stopping)
      summary["best_epoch"] = best_epoch
      if stopping:
        break
    if summary["epochs_completed"] < config.num_epochs:
      summary.update(status="interrupted", signal=stop.name)
    else:
      if not values:  # Resumed after the last epoch (killed before the summary).
        # Its values as the epoch logged them, train/objective and train/lr included.
        values = run.epoch_values(summary["epochs_completed"])
        if not values:  # Its rows were lost: the state's values are all there is.
          values = evaluate(exp, state, eval_inputs)
      best = {}
      if config.test_on_best and best_epoch is not None:
        if best_epoch == summary["epochs_completed"]:
          best = {k: v for k, v in values.items() if k not in TRAIN_ONLY_KEYS}
        else:
          # Placed like the run's state (the held copy is host arrays), so that the
          # evaluation program compiled for the epochs is reused.
          best_state = placement.to_global(checkpoints.best_state(best_epoch, like=state),
                                       sh.replicated)
          best = evaluate(exp, best_state, eval_inputs)
      summary.update(status="completed", final=values, best=best)
  except KeyboardInterrupt:
    summary["status"] = "interrupted"
    raise
  except Diverged:
    checkpoints.flush()  # The held best is a finite, evaluated state: keep it.
    raise
  except BaseException:
    summary["status"] = "failed"
    raise
  finally:
    shown.close()  # Before main's last line, or the error a raise here leads to.
    summary["wall_seconds"] = prior_seconds + time.time() - start
    summary["steps"] = steps_done
    try:
      checkpoints.close()
    finally:
      try:
        run.write_summary(summary)
      finally:
        wandb.finish(summary)
  return summary
