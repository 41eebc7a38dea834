"""The config of methods that read a stage-1 run directory, and its checks.

A stage-2 run names a completed run of the same data in `method.stage1_dir`; its
model (checkpoint `method.stage1_checkpoint`) then
- estimates the target class priors that the importance weights aim at
  (`weighting.source` 'bbse' or 'mlls', polyjax.label_shift), or
- marks the training examples it misclassifies, which JTT upweights
  (`method.name` 'jtt', Liu et al. 2021), or
- gives the features whose last layer DFR retrains on group-balanced held-out
  data (`method.name` 'dfr', Kirichenko et al. 2023; polyjax.dfr).
`polyjax.two_stage` does that work; this module only checks the config and the
directory (JSON files, no JAX), so that a bad value stops a run before any data is
loaded or file written. It imports nothing of polyjax but `run_dir` and `errors`.
"""

from __future__ import annotations

import json
import math
import pathlib

import ml_collections
from ml_collections import config_dict

from polyjax import run_dir
from polyjax.errors import ConfigError
from polyjax.errors import check_field as _check

WEIGHT_SOURCES = ("counts", "bbse", "mlls")
METHODS = ("none", "jtt", "dfr")
CHECKPOINTS = ("last", "best")
# Data fields that may differ between stage 1 and stage 2: where the data is read
# from and the epoch order, which do not change the examples of a split.
FREE_DATA_FIELDS = ("order_seed", "data_dir", "pipeline")
# Keys of summary.json that say what stage 1 gave (polyjax.two_stage's record).
RECORD_KEYS = ("stage1", "label_shift", "jtt", "dfr")


def add_fields(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds `weighting.source` and the `method` section to base config `c`; returns it."""
  c.weighting.source = "counts"  # Target priors of the importance weights: 'counts' (a uniform target: w_g proportional to (1/n_g)**exponent), or estimated from method.stage1_dir's model, 'bbse' (Lipton et al. 2018) or 'mlls' (EM with BCTS calibration, Alexandari et al. 2020): w_c proportional to (q_c/p_c)**exponent; weighting.mode 'reweighted'.
  c.method = ml_collections.ConfigDict()
  c.method.name = "none"  # Two-stage method: 'none', 'jtt' (Liu et al. 2021: loss weights times jtt_upweight on the training examples method.stage1_dir's model misclassifies) or 'dfr' (Kirichenko et al. 2023: its last layer retrained on group-balanced validation data; polyjax.dfr).
  c.method.stage1_dir = config_dict.placeholder(str)  # The completed stage-1 run (same data fields) that method 'jtt' and weighting.source 'bbse'/'mlls' read; None otherwise.
  c.method.stage1_checkpoint = "last"  # Which checkpoint of method.stage1_dir: 'last' or 'best'.
  c.method.jtt_upweight = 20.0  # jtt: lambda_up, the factor on the loss weights of the stage-1 errors (>= 1; Liu et al. 2021 use 20-100).
  c.method.dfr_l2_grid = (0.0001, 0.001, 0.01, 0.1, 1.0)  # dfr: L2 strengths of the head, each > 0; the one with the best worst-group accuracy on half the validation split (fitted on the other half) becomes the weight decay.
  return c


def uses_stage1(c: ml_collections.ConfigDict) -> bool:
  """Whether the config reads a stage-1 run directory."""
  return c.weighting.source != "counts" or c.method.name != "none"


def _known(field: str, value, valid) -> None:
  if value not in valid:
    raise ConfigError(f"config.{field}={value!r} is not known; valid: {', '.join(valid)}")


def check_config(c: ml_collections.ConfigDict, *, read_stage1_dir: bool = True) -> None:
  """ConfigError naming the first field of the stage-1 methods that cannot be
  trained or would be ignored; then the stage-1 directory (`check_stage1_dir`),
  unless `read_stage1_dir` is False (a study checks a chained cell's configs
  before its stage-1 runs exist, and sets their directories later)."""
  m = c.method
  _known("weighting.source", c.weighting.source, WEIGHT_SOURCES)
  _known("method.name", m.name, METHODS)
  _known("method.stage1_checkpoint", m.stage1_checkpoint, CHECKPOINTS)
  if c.weighting.source != "counts":
    _check(c.weighting.mode == "reweighted", "weighting.mode",
           f"'reweighted' for weighting.source={c.weighting.source!r} (the estimated "
           "weights are loss weights)", c.weighting.mode)
  _check(1 <= m.jtt_upweight < math.inf, "method.jtt_upweight", ">= 1 and finite",
         m.jtt_upweight)
  if m.name == "dfr":
    check_dfr(c)
  if m.name == "jtt":
    # Undersampling would train on other examples than those stage 1 was judged on;
    # DRO ignores loss weights.
    _check(c.weighting.mode in ("none", "reweighted"), "weighting.mode",
           "'none' or 'reweighted' for method.name='jtt'", c.weighting.mode)
  if uses_stage1(c):  # Weight schedules recompute the weights from the counts.
    for field, off in (("cb_beta", None), ("drw_epoch", 0), ("anneal", "none")):
      value = c.weighting.get(field, off)
      _check(value == off, f"weighting.{field}", f"{off!r} when stage 1 sets the weights "
             f"(method.name={m.name!r}, weighting.source={c.weighting.source!r})", value)
  defaults = add_fields(ml_collections.ConfigDict({"weighting": {}}))
  used = uses_stage1(c)
  for field, ok in (("jtt_upweight", m.name == "jtt"), ("dfr_l2_grid", m.name == "dfr"),
                    ("stage1_checkpoint", used),
                    ("stage1_dir", used or not read_stage1_dir)):
    value = m[field]
    if not ok and json.dumps(value) != json.dumps(defaults.method[field]):
      raise ConfigError(f"config.method.{field}={value!r} has no effect with method.name="
                        f"{m.name!r} and weighting.source={c.weighting.source!r}; leave it "
                        f"at its default")
  if used and read_stage1_dir:
    check_stage1_dir(c)


def check_dfr(c: ml_collections.ConfigDict) -> None:
  """DFR trains a cross-entropy head on unweighted balanced data, L2 from its grid."""
  grid = tuple(c.method.dfr_l2_grid)
  _check(len(grid) > 0 and all(0 < v < math.inf for v in grid), "method.dfr_l2_grid",
         "L2 strengths, each > 0 and finite", grid)
  for field, want in (("loss.name", "ce"), ("weighting.mode", "none"),
                      ("weighting.source", "counts"), ("model.freeze_features", True),
                      ("weight_decay", 0.0)):
    value = c
    for part in field.split("."):
      value = value[part]
    _check(value == want, field, f"{want!r} for method.name='dfr' (the head is a "
           "cross-entropy fit on balanced data with the L2 strength of method.dfr_l2_grid)",
           value)
  head = c.model.get("head", "linear")  # DFR's exact fit is of a linear head.
  _check(head == "linear", "model.head", "'linear' for method.name='dfr'", head)


def check_stage1_dir(c: ml_collections.ConfigDict) -> None:
  """ConfigError (naming `method.stage1_dir`) unless it holds a completed run of the
  same data with the checkpoint `method.stage1_checkpoint` asks for."""
  path = c.method.stage1_dir
  head = f"config.method.stage1_dir={path!r}"
  if path is None:
    why = (f"method.name={c.method.name!r}" if c.method.name != "none"
           else f"weighting.source={c.weighting.source!r}")
    raise ConfigError(f"config.method.stage1_dir must name a completed stage-1 run "
                      f"directory for {why}, got None")
  run = pathlib.Path(path).expanduser()
  for name in (run_dir.CONFIG, run_dir.SUMMARY):
    if not (run / name).is_file():
      raise ConfigError(f"{head} is not a finished run directory (no {name}); train "
                        f"stage 1 there first")
  try:
    saved, summary = (run_dir.read_json(run / n) for n in (run_dir.CONFIG, run_dir.SUMMARY))
  except (OSError, ValueError) as e:
    raise ConfigError(f"{head}: cannot read its run files ({e})") from None
  status = summary.get("status")
  if status != "completed":
    raise ConfigError(f"{head} holds an unfinished run (status {status!r}); rerun its "
                      f"command to complete it first")
  if c.method.stage1_checkpoint == "best" and summary.get("best_epoch") is None:
    raise ConfigError(f"{head} kept no best checkpoint; use method.stage1_checkpoint='last'")
  check_stage1_config(c, saved, head)


def check_stage1_config(c: ml_collections.ConfigDict, saved: dict, head: str) -> None:
  """ConfigError (starting with `head`) unless a stage-1 run of config `saved` (a
  plain dict, as config.json holds it) was trained on the data of `c`, and, for DFR,
  with its model."""
  here = json.loads(json.dumps(c.data.to_dict()))
  there = json.loads(json.dumps(saved.get("data", {})))
  differ = [k for k in sorted(here) if k not in FREE_DATA_FIELDS and k in there
            and here[k] != there[k]]
  if differ:
    shown = ", ".join(f"data.{k} {there[k]!r} there, {here[k]!r} here" for k in differ[:3])
    raise ConfigError(f"{head} was trained on other data ({shown}); stage 2 must use "
                      f"stage 1's data fields")
  if c.method.name == "dfr":  # Stage 2 takes over stage 1's parameters.
    model_here = json.loads(json.dumps(c.model.to_dict()))
    model_there = json.loads(json.dumps(saved.get("model", {})))
    other = [k for k in sorted(model_here) if k not in ("freeze_features", "pretrained")
              and model_here[k] != model_there.get(k, model_here[k])]
    if other:
      raise ConfigError(f"{head} has another model (model.{other[0]} "
                        f"{model_there[other[0]]!r} there, {model_here[other[0]]!r} here); "
                        f"DFR retrains the last layer of stage 1's model")
