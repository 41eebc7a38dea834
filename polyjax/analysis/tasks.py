"""Analysis tasks: one run (and one checkpoint) in, metric dicts out.

Checkpoint tasks rebuild the run's experiment with `experiment.build(config)` (dataset,
ModelDef, abstract state) and restore the checkpoint into it; the metrics come
from the training code's own `steps.make_eval_counts` and `metrics.finalize`, so
`evaluate` recomputes exactly what the run logged at that epoch.

- evaluate: every metric of a split (docs/metrics.md).
- margins: distribution of the margins `f_y - max_{j!=y} f_j` of a split (default
  train) per group, and the normalised margin (see `norm_product`).
- boundary: for a linear model on 2-D inputs with 2 classes, the decision
  boundary `w . x + b = 0` of `f_1 - f_0`.
- logged: no checkpoint; reads `metrics.jsonl` and reports the split's logged
  metrics at the epoch chosen by each model-selection rule of `LOGGED_RULES`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import pathlib
from typing import Any, Callable

import numpy as np

from polyjax.analysis.runs import Run, RunError

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# Selection rules of the `logged` task: rule -> (validation metric, or None for the last epoch).
LOGGED_RULES = {
    "last": None,
    "best_val_reweighted_acc": "reweighted_acc",
    "best_val_worst_group_acc": "worst_group_acc",
}


@dataclasses.dataclass
class Loaded:
  """A run's experiment with the state of one checkpoint restored."""
  run: Run
  rule: str
  epoch: int
  exp: Any  # polyjax.experiment.Experiment
  state: Any  # polyjax.train_state.TrainState


class _OrbaxNoise(logging.Filter):
  """Drops Orbax's records below ERROR (absl logging, whose logger is 'absl')."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or "orbax" not in pathlib.PurePath(
        record.pathname).parts


@contextlib.contextmanager
def _quiet_orbax():
  """Keeps Orbax's warnings during a read-only restore off the user's terminal.

  Orbax logs its own bookkeeping at WARNING: every read-only manager says that its
  directory is read only, and the best-checkpoint ranking that no metrics were
  given; true of every run, one line per run, and nothing to act on. A restore
  that fails raises, and becomes a RunError naming the run; Orbax's errors pass.
  """
  noise = _OrbaxNoise()
  logger = logging.getLogger("absl")
  logger.addFilter(noise)
  try:
    yield
  finally:
    logger.removeFilter(noise)


def load_checkpoint(run: Run, rule: str, *, mesh=None) -> Loaded:
  """Rebuilds the run's experiment and restores checkpoint `rule` ('last'/'best').

  Raises:
    RunError: no such checkpoint, or it cannot be rebuilt or restored.
  """
  # Only checkpoint tasks need JAX and the training code.
  from polyjax import checkpointing, experiment, placement, stage1, two_stage
  from polyjax.config import ConfigError

  epoch = run.checkpoint_epoch(rule)
  config = run.config.copy_and_resolve_references()
  config.eval_batch_size = _eval_batch_size(run)
  config.data.pipeline = "memory"  # The tasks below take whole splits; same data either way.
  try:
    if stage1.uses_stage1(config):  # Its data and weights come from its stage-1 run.
      exp = two_stage.build(config, mesh=placement.make_mesh() if mesh is None else mesh)
    else:
      exp = experiment.build(config, mesh=mesh)
  except (ConfigError, ValueError, FileNotFoundError) as e:
    raise RunError(f"{run.path}: cannot rebuild the experiment from config.json ({e})",
                   "whose experiment cannot be rebuilt") from None
  with _quiet_orbax():
    ckpts = checkpointing.Checkpoints(run.checkpoint_dir, every_epochs=1, read_only=True)
    try:
      state, _ = ckpts.restore(epoch, like=exp.state)
    except Exception as e:  # Orbax raises many types for a damaged checkpoint.
      raise RunError(f"{run.path}: cannot restore checkpoint {epoch} "
                     f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                     "whose checkpoint cannot be restored") from None
    finally:
      ckpts.close()
  return Loaded(run=run, rule=rule, epoch=epoch, exp=exp, state=state)


def _split(loaded: Loaded, split: str):
  """Split `split` of the run's data; RunError (the run is skipped) for one it does not
  have: 'extras' of a run without `weighting.evaluate_extras`."""
  splits = loaded.exp.dataset.splits()
  if split not in splits:
    raise RunError(f"{loaded.run.path}: has no split {split!r} (its splits: "
                   f"{', '.join(splits)})", f"without a {split} split")
  return splits[split]


def evaluate(loaded: Loaded, split: str) -> dict[str, float]:
  """All metrics (docs/metrics.md) of `split` at the checkpoint (`experiment.evaluate` on one split)."""
  import jax

  from polyjax import experiment, steps

  packed = steps.pack_for_eval([_split(loaded, split)], _eval_batch_size(loaded.run))
  packed = jax.device_put(packed, loaded.exp.shardings.stacked_batches)
  values = experiment.evaluate(loaded.exp, loaded.state, packed, splits=(split,))
  prefix = f"{split}/"
  return {k[len(prefix):]: v for k, v in values.items()}


def _eval_batch_size(run: Run) -> int:
  """The run's eval batch size rounded up to split over this machine's devices.

  Evaluation counts do not depend on the batch size, and the analysing machine
  may have a different device count from the training one.
  """
  import jax
  d = jax.device_count()
  return -(-int(run.config.eval_batch_size) // d) * d


def logits(loaded: Loaded, split: str) -> np.ndarray:
  """(N, C) float32 logits of every example of `split`, in order, inputs
  preprocessed as the run's evaluation does (`experiment.split_logits`)."""
  from polyjax import experiment

  _split(loaded, split)  # One line naming the split if it has none such.
  return experiment.split_logits(loaded.exp, loaded.state, split,
                                 batch_size=_eval_batch_size(loaded.run),
                                 matmul_precision=loaded.run.config.matmul_precision)


def norm_product(params) -> tuple[float, int]:
  """Product over layers of the Frobenius norm of (kernel, bias), and the layer count.

  The normalised margin is `margin / prod_l ||(W_l, b_l)||_F`. Scaling one layer's
  weights and bias by c > 0 scales a ReLU network's logits and this product by
  the same c for the last layer (and, for bias-free networks, any layer), so the
  normalised margin measures the margin of the direction, not of its scale. For
  a linear model it is `margin / ||(W, b)||_F`.
  """
  import jax

  sq: dict[tuple, float] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = [getattr(k, "key", None) for k in path if hasattr(k, "key")]
    layer = tuple(str(k) for k in keys[:-1])
    sq[layer] = sq.get(layer, 0.0) + float(np.sum(np.square(np.asarray(leaf, np.float64))))
  return float(np.prod(np.sqrt(list(sq.values())))), len(sq)


def _describe(prefix: str, v: np.ndarray) -> dict[str, float]:
  if len(v) == 0:
    return {}
  out = {f"{prefix}_mean": float(np.mean(v)), f"{prefix}_min": float(np.min(v)),
         f"{prefix}_max": float(np.max(v))}
  for q, value in zip(QUANTILES, np.quantile(v, QUANTILES)):
    out[f"{prefix}_q{round(q * 100):02d}"] = float(value)
  return out


def margins(loaded: Loaded, split: str) -> dict[str, float]:
  """Margins `f_y - max_{j!=y} f_j` of `split`, overall and per group.

  Returns mean, min, max and quantiles of the margin (`margin_*`,
  `group_{g}_margin_*`), the same for the normalised margin
  (`normalized_margin_*`), `margin_frac_positive` (the training accuracy with
  ties counted as errors), `norm_product` and `num_layers`.
  """
  from polyjax import losses

  s = _split(loaded, split)
  logits_NxC = logits(loaded, split)
  margin_N = np.asarray(losses.margin(logits_NxC, s.y), np.float64)
  norm, layers = norm_product(loaded.state.params)
  out = {"norm_product": norm, "num_layers": float(layers),
         "margin_frac_positive": float(np.mean(margin_N > 0))}
  out.update(_describe("margin", margin_N))
  out.update(_describe("normalized_margin", margin_N / norm))
  for g in range(loaded.exp.dataset.num_groups):
    in_g = s.group == g
    out.update(_describe(f"group_{g}_margin", margin_N[in_g]))
    out.update(_describe(f"group_{g}_normalized_margin", margin_N[in_g] / norm))
  return out


def boundary(loaded: Loaded, split: str) -> dict[str, float]:
  """The decision boundary `w . x + b = 0` of `f_1 - f_0` for a 2-D linear model.

  Returns `boundary_w0`, `boundary_w1`, `boundary_b`, the unit normal's angle
  `boundary_angle_deg` (atan2(w1, w0)), slope and intercept of the line `x1 =
  slope * x0 + intercept` (inf when w1 is 0), and for the gaussians dataset
  `boundary_angle_to_bayes_deg`: the angle between w and the Bayes-optimal normal
  `mean1 - mean0` of the balanced test distribution.
  """
  del split  # The boundary is a property of the model alone.
  config, ds = loaded.run.config, loaded.exp.dataset
  head = config.model.get("head", "linear")  # Runs from before model.head: linear.
  if (config.model.name != "linear" or head != "linear" or int(np.prod(ds.in_shape)) != 2
      or ds.num_classes != 2):
    raise RunError(f"{loaded.run.path}: the boundary task needs a linear model on 2-D inputs "
                   f"with 2 classes (model.name={config.model.name!r}, head {head!r}, "
                   f"input shape {ds.in_shape}, {ds.num_classes} classes)",
                   "not a 2-class linear model on 2-D inputs")
  kernel = np.asarray(loaded.state.params["head"]["kernel"][...], np.float64)  # (2, C)
  bias = np.asarray(loaded.state.params["head"]["bias"][...], np.float64)  # (C,)
  w = kernel[:, 1] - kernel[:, 0]
  b = float(bias[1] - bias[0])
  out = {"boundary_w0": float(w[0]), "boundary_w1": float(w[1]), "boundary_b": b,
         "boundary_norm": float(np.linalg.norm(w)),
         "boundary_angle_deg": math.degrees(math.atan2(w[1], w[0])),
         "boundary_slope": float(-w[0] / w[1]) if w[1] != 0 else math.inf,
         "boundary_intercept": float(-b / w[1]) if w[1] != 0 else math.inf}
  if config.data.name == "gaussians":
    bayes = np.asarray(config.data.mean1, np.float64) - np.asarray(config.data.mean0, np.float64)
    cos = float(w @ bayes / (np.linalg.norm(w) * np.linalg.norm(bayes)))
    out["boundary_angle_to_bayes_deg"] = math.degrees(math.acos(max(-1.0, min(1.0, cos))))
  return out


def logged(run: Run, split: str) -> list[tuple[str, int, str, dict[str, float]]]:
  """Logged metrics of `split` at the epoch each rule of LOGGED_RULES selects.

  Only evaluated epochs are candidates (every `eval_every_epochs`); ties go to the
  earliest epoch.

  Returns:
    (rule, epoch, selected_by, metrics) for each rule.
  """
  rows = run.metrics_rows()
  by_epoch: dict[str, dict[int, dict]] = {}
  for row in rows:
    by_epoch.setdefault(row.get("split"), {})[int(row["epoch"])] = row
  if split not in by_epoch:
    raise RunError(f"{run.path}: metrics.jsonl has no rows for split {split!r}",
                   f"without logged {split} metrics")
  target = by_epoch[split]
  out = []
  for rule, val_metric in LOGGED_RULES.items():
    if val_metric is None:
      epoch, selected_by = max(target), "last epoch"
    else:
      val = by_epoch.get("val", {})
      candidates = [e for e in sorted(val) if e in target and val_metric in val[e]
                    and math.isfinite(val[e][val_metric])]
      if not candidates:
        raise RunError(f"{run.path}: metrics.jsonl has no val/{val_metric} to select by",
                       f"without a logged val/{val_metric}")
      epoch = max(candidates, key=lambda e: (val[e][val_metric], -e))
      selected_by = f"val/{val_metric}"
    metrics = {k: v for k, v in target[epoch].items() if k not in ("epoch", "step", "split")}
    out.append((rule, epoch, selected_by, metrics))
  return out


SPLITS = ("train", "val", "test", "extras")  # extras: runs with weighting.evaluate_extras.


@dataclasses.dataclass(frozen=True)
class Task:
  fn: Callable
  default_split: str
  uses_checkpoint: bool = True
  splits: tuple[str, ...] = SPLITS


TASKS = {
    "evaluate": Task(evaluate, "test"),
    "margins": Task(margins, "train"),
    "boundary": Task(boundary, "none", splits=("none",)),  # A property of the model alone.
    "logged": Task(logged, "test", uses_checkpoint=False),
}
