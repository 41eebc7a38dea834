"""Stage 2 of the methods that read a stage-1 run directory (config in polyjax.stage1).

`build(config, mesh=)` is `experiment.build` for such a config: it loads the data,
restores the stage-1 model (`method.stage1_dir`, checkpoint
`method.stage1_checkpoint`), computes its logits on the splits and changes the
examples' loss weights:

- `weighting.source` 'bbse' / 'mlls': the target class priors q are estimated
  (polyjax.label_shift) from the logits of the validation split (held-out source
  data, with labels) and of the test inputs (the target; labels unused), and every
  example of every split gets its class's weight w_c proportional to
  (q_c / p_c)**exponent (p: training class frequencies), mean 1 over training.
- `method.name` 'jtt' (Liu et al. 2021): the training examples the stage-1 model
  misclassifies (the error set) have their loss weight multiplied by
  `method.jtt_upweight`, then the training weights are rescaled to mean 1, the
  objective of training on the set with the errors repeated lambda_up times.
- `method.name` 'dfr' (Kirichenko et al. 2023): stage 1's features, a zero head
  trained on the group-balanced validation split, with the L2 strength tuned on
  its halves (polyjax.dfr).

What was estimated goes into the experiment's `record`, which summary.json keeps.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import ml_collections
import numpy as np

from polyjax import checkpointing, data, dfr, experiment, label_shift, placement
from polyjax.analysis import runs
from polyjax.errors import ConfigError


@dataclasses.dataclass
class Stage1:
  """The restored stage-1 model, on the stage-1 experiment (its own data copy)."""
  path: pathlib.Path
  epoch: int
  exp: experiment.Experiment
  state: Any
  matmul_precision: str
  eval_batch_size: int  # Largest evaluation batch (stage 2's), a multiple of the mesh size.


def load_stage1(config: ml_collections.ConfigDict, mesh) -> Stage1:
  """Restores checkpoint `method.stage1_checkpoint` of `method.stage1_dir`.

  The stage-1 experiment is rebuilt with its own config, but unweighted and in
  memory: its splits are then the examples stage 2 trains and evaluates on (the
  data fields agree, `stage1.check_stage1_dir`), undersampled or not in stage 1.
  """
  path = pathlib.Path(config.method.stage1_dir).expanduser().resolve()
  head = f"config.method.stage1_dir={config.method.stage1_dir!r}"
  try:
    run = runs.load_run(path)
    epoch = run.checkpoint_epoch(config.method.stage1_checkpoint)
  except runs.RunError as e:
    raise ConfigError(f"{head}: {e}") from None
  cfg = run.config.copy_and_resolve_references()
  cfg.weighting.mode, cfg.data.pipeline = "none", "memory"
  cfg.weighting.evaluate_extras = False  # Only undersampling keeps extras.
  cfg.method.name, cfg.weighting.source, cfg.method.stage1_dir = "none", "counts", None
  exp = experiment.build(cfg, mesh=mesh)
  ckpts = checkpointing.Checkpoints(run.checkpoint_dir, every_epochs=1, read_only=True)
  try:
    state, _ = ckpts.restore(epoch, like=exp.state)
  except Exception as e:  # Orbax raises many types for a damaged checkpoint.
    raise ConfigError(f"{head}: cannot restore its checkpoint of epoch {epoch} "
                      f"({type(e).__name__})") from None
  finally:
    ckpts.close()
  return Stage1(path=path, epoch=epoch, exp=exp, state=state,
                matmul_precision=cfg.matmul_precision,
                eval_batch_size=-(-config.eval_batch_size // mesh.size) * mesh.size)


def logits(model: Stage1, split: str) -> np.ndarray:
  """(N, C) float32 logits of the stage-1 model on every example of its `split`,
  in order, inputs preprocessed as its evaluation does."""
  return experiment.split_logits(model.exp, model.state, split,
                                 batch_size=model.eval_batch_size,
                                 matmul_precision=model.matmul_precision)


def _same_examples(ours: data.Dataset, theirs: data.Dataset, head: str) -> None:
  for name, t in theirs.splits().items():  # Stage 1's are unweighted: no extras.
    s = ours.splits()[name]
    if len(s) != len(t) or not np.array_equal(s.y, t.y):
      raise ConfigError(f"{head}: its {name} split differs from this run's ({len(t)} vs "
                        f"{len(s)} examples); stage 2 must use stage 1's data")


def class_of_groups(split, num_groups: int) -> np.ndarray:
  """(G,) the class of each group's training examples (-1 for an absent group);
  ValueError if a group holds several classes (label shift needs one)."""
  out = np.full(num_groups, -1)
  for g in range(num_groups):
    ys = np.unique(split.y[split.group == g])
    if len(ys) > 1:
      raise ValueError(f"group {g} holds classes {ys.tolist()}")
    out[g] = ys[0] if len(ys) else -1
  return out


def label_shift_weights(config, ds: data.Dataset, model: Stage1) -> tuple[data.Dataset, dict[str, Any]]:
  """The dataset with every example weighted by its class's estimated importance
  weight, and the record of the estimate."""
  est = label_shift.estimate(config.weighting.source,
                             source_logits=logits(model, "val"), source_y=ds.val.y,
                             target_logits=logits(model, "test"))
  counts = ds.train_class_counts
  true_q = np.bincount(ds.test.y, minlength=ds.num_classes) / len(ds.test)
  w_c = label_shift.class_weights(counts, est.target_priors, exponent=config.weighting.exponent)
  w_g = w_c[np.maximum(class_of_groups(ds.train, ds.num_groups), 0)].astype(np.float32)
  out = {k: dataclasses.replace(s, weight=w_g[s.group]) for k, s in ds.splits().items()}
  record = {
      "estimator": est.estimator,
      "train_priors": (counts / counts.sum()).tolist(),
      "source_priors": est.source_priors.tolist(),
      "estimated_target_priors": est.target_priors.tolist(),
      "true_target_priors": true_q.tolist(),
      "prior_error_l1": float(np.abs(est.target_priors - true_q).sum()),
      "class_weights": w_c.tolist(),
      "true_class_weights": label_shift.class_weights(
          counts, true_q, exponent=config.weighting.exponent).tolist(),
  }
  if est.calibration is not None:
    record["calibration"] = {"a": est.calibration.a, "b": est.calibration.b.tolist()}
  return dataclasses.replace(ds, **out), record


def jtt_weights(config, ds: data.Dataset, model: Stage1) -> tuple[data.Dataset, dict[str, Any]]:
  """The dataset with the stage-1 model's training errors upweighted (JTT)."""
  wrong = logits(model, "train").argmax(axis=1) != ds.train.y
  if not wrong.any():
    raise ConfigError(
        f"config.method.stage1_dir={config.method.stage1_dir!r}: its model (checkpoint of "
        f"epoch {model.epoch}) classifies all {len(wrong)} training examples correctly, so "
        f"JTT has no error set to upweight; train stage 1 for fewer epochs")
  lam = config.method.jtt_upweight
  w = ds.train.weight.astype(np.float64) * np.where(wrong, lam, 1.0)
  w *= len(w) / w.sum()
  record = {"upweight": lam, "error_set_size": int(wrong.sum()), "train_size": len(wrong),
            "error_set_per_group": np.bincount(ds.train.group[wrong],
                                               minlength=ds.num_groups).tolist()}
  return dataclasses.replace(ds, train=dataclasses.replace(ds.train,
                                                           weight=w.astype(np.float32))), record


def build(config: ml_collections.ConfigDict, *, mesh) -> experiment.Experiment:
  """`experiment.build` of a config that reads a stage-1 run (`stage1.uses_stage1`);
  the experiment's `record` holds what stage 1 gave."""
  ds = data.load_config(config)
  model = load_stage1(config, mesh)
  _same_examples(ds, model.exp.dataset, f"config.method.stage1_dir={config.method.stage1_dir!r}")
  record: dict[str, Any] = {"stage1": {"dir": str(model.path), "epoch": model.epoch,
                                       "checkpoint": config.method.stage1_checkpoint}}
  if config.weighting.source != "counts":
    ds, record["label_shift"] = label_shift_weights(config, ds, model)
  if config.method.name == "jtt":
    ds, record["jtt"] = jtt_weights(config, ds, model)
  if config.method.name == "dfr":
    return dfr_build(config, ds, model, record, mesh)
  exp = experiment.build(config, mesh=mesh, dataset=ds)
  exp.record = record
  return exp


def dfr_build(config, ds: data.Dataset, model: Stage1, record: dict[str, Any], mesh
              ) -> experiment.Experiment:
  """DFR's experiment: trains on the balanced validation split, from stage 1's
  features and a zero head, with the tuned L2 strength as weight decay."""
  val = model.exp.dataset.val  # In memory; the same examples as `ds.val`.
  feats = dfr.features(model.exp.model_def, model.state, val, shardings=model.exp.shardings,
                       batch_size=model.eval_batch_size, preprocess=model.exp.dataset.preprocess,
                       matmul_precision=model.matmul_precision)
  l2, record["dfr"] = dfr.tune_l2(feats, val.y, val.group, ds.num_classes,
                                  tuple(config.method.dfr_l2_grid), config.data.seed)
  exp = experiment.build(config, mesh=mesh,
                         dataset=dfr.balanced_val_dataset(ds, config.data.seed))
  record["dfr"]["train_size"] = len(exp.dataset.train)
  exp.state = placement.to_global(dfr.stage2_state(exp.state, model.state, l2),
                                  exp.shardings.replicated)
  exp.record = record
  return exp
