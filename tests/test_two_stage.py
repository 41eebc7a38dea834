"""Methods that read a stage-1 run: estimated label-shift weights, JTT, DFR; their config checks."""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import digits_poly
from polyjax import config as config_lib
from scipy import optimize, special

from polyjax import dfr, grid, label_shift, placement, sweep, train, two_stage
from polyjax.analysis import runs, tasks
import subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stage1_config(num_epochs):
  c = digits_poly.get_config()
  c.loss.name, c.weighting.mode, c.lr, c.num_epochs = "ce", "none", 0.1, num_epochs
  return c


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
  """A stage-1 ERM run stopped early: a fair classifier that still errs on training data."""
  path = tmp_path_factory.mktemp("stage1") / "run"
  assert train.train_and_evaluate(stage1_config(6), str(path))["final"]["train/acc"] < 1
  return str(path)


def stage2_config(stage1_dir, **fields):
  c = digits_poly.get_config()
  c.num_epochs, c.method.stage1_dir = 1, stage1_dir
  for field, value in fields.items():
    config_lib.set_field(c, field, value)
  config_lib.validate(c, device_count=jax.device_count())
  return c


def reference_logits(stage1_dir, split):
  """The stage-1 model's logits by the analysis code's own restore and forward pass."""
  loaded = tasks.load_checkpoint(runs.load_run(stage1_dir), "last")
  return loaded, tasks.logits(loaded, split)


@pytest.mark.parametrize("source", ["bbse", "mlls"])
def test_estimated_weights_are_the_estimators_on_stage1_logits(stage1, tmp_path, source):
  c = stage2_config(stage1, **{"weighting.source": source})
  summary = train.train_and_evaluate(c, str(tmp_path / "run"))
  rec = summary["label_shift"]
  assert json.loads((tmp_path / "run" / "summary.json").read_text())["label_shift"] == rec
  assert summary["stage1"]["epoch"] == 6

  loaded, val = reference_logits(stage1, "val")
  _, test = reference_logits(stage1, "test")
  ds = loaded.exp.dataset
  est = label_shift.estimate(source, source_logits=val, source_y=ds.val.y, target_logits=test)
  np.testing.assert_allclose(rec["estimated_target_priors"], est.target_priors, atol=1e-9)
  assert rec["true_target_priors"] == [0.5, 0.5]  # digits' balanced test split.
  assert rec["prior_error_l1"] == pytest.approx(np.abs(est.target_priors - 0.5).sum())
  assert rec["prior_error_l1"] < 0.2  # A fair model on 300 test inputs.

  exp = two_stage.build(c, mesh=placement.make_mesh())
  w_c = label_shift.class_weights(ds.train_class_counts, est.target_priors)
  for split in ("train", "val", "test"):
    s = exp.dataset.splits()[split]
    np.testing.assert_allclose(s.weight, w_c[s.y], rtol=1e-6)
  assert np.mean(exp.dataset.train.weight) == pytest.approx(1.0, rel=1e-6)


def test_jtt_upweights_the_stage1_training_errors(stage1):
  c = stage2_config(stage1, **{"method.name": "jtt", "weighting.mode": "none",
                               "method.jtt_upweight": 7.0})
  exp = two_stage.build(c, mesh=placement.make_mesh())
  loaded, logits = reference_logits(stage1, "train")
  wrong = logits.argmax(1) != loaded.exp.dataset.train.y
  assert 0 < wrong.sum() < len(wrong)
  w = exp.dataset.train.weight
  np.testing.assert_allclose(w[wrong] / w[~wrong][0], 7.0, rtol=1e-6)
  np.testing.assert_allclose(w[~wrong], w[~wrong][0], rtol=0)
  assert np.mean(w.astype(np.float64)) == pytest.approx(1.0, rel=1e-6)
  assert exp.record["jtt"]["error_set_size"] == int(wrong.sum())
  assert (exp.dataset.test.weight == 1).all()


def test_jtt_refuses_a_stage1_model_that_interpolates(tmp_path):
  stage1_dir = tmp_path / "interpolating"
  assert train.train_and_evaluate(stage1_config(20), str(stage1_dir))["final"]["train/acc"] == 1
  workdir = tmp_path / "jtt"
  proc = subprocess.run(
      [sys.executable, "-m", "polyjax.main", "--config=configs/digits_poly.py",
       f"--workdir={workdir}", "--config.method.name=jtt", "--config.weighting.mode=none",
       f"--config.method.stage1_dir={stage1_dir}"],
      cwd=REPO, capture_output=True, text=True, env=subprocess_env.env())
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "JTT has no error set" in lines[0], proc.stderr
  assert str(stage1_dir) in lines[0] and not workdir.exists()


def test_bad_stage1_settings_are_one_line_naming_the_field(stage1, tmp_path):
  unfinished = tmp_path / "unfinished"
  shutil.copytree(stage1, unfinished)
  summary = json.loads((unfinished / "summary.json").read_text())
  (unfinished / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
  cases = [
      ({"weighting.source": "bbse", "method.stage1_dir": None},
       "config.method.stage1_dir must name a completed stage-1 run directory"),
      ({"weighting.source": "bbse", "method.stage1_dir": str(tmp_path / "nowhere")},
       "is not a finished run directory (no config.json)"),
      ({"weighting.source": "bbse", "method.stage1_dir": str(unfinished)},
       "holds an unfinished run (status 'interrupted')"),
      ({"weighting.source": "bbse", "data.imb_factor": 5.0},
       "was trained on other data (data.imb_factor 10.0 there, 5.0 here)"),
      ({"weighting.source": "em"}, "config.weighting.source='em' is not known"),
      ({"weighting.source": "mlls", "weighting.mode": "resampled"},
       "config.weighting.mode must be 'reweighted' for weighting.source='mlls'"),
      ({"method.name": "jtt", "weighting.mode": "undersampled"},
       "config.weighting.mode must be 'none' or 'reweighted' for method.name='jtt'"),
      ({"method.name": "jtt", "method.jtt_upweight": 0.5}, "config.method.jtt_upweight must be >= 1"),
      ({"method.jtt_upweight": 5.0, "weighting.source": "bbse"},
       "config.method.jtt_upweight=5.0 has no effect with method.name='none'"),
      ({"method.stage1_checkpoint": "best"}, "config.method.stage1_checkpoint='best' has no effect"),
  ]
  for fields, message in cases:
    c = digits_poly.get_config()
    c.method.stage1_dir = stage1 if "method.stage1_dir" in fields or any(
        f in fields for f in ("weighting.source", "method.name")) else None
    for field, value in fields.items():
      config_lib.set_field(c, field, value)
    with pytest.raises(config_lib.ConfigError, match=re.escape(message)) as e:
      config_lib.validate(c, device_count=8)
    assert "\n" not in str(e.value)


def test_dfr_head_fit_matches_a_reference_optimiser():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((60, 5))
  y = rng.integers(0, 3, 60)
  w, b = dfr.fit_head(x, y, 3, 0.05)

  def objective(theta):  # Written independently: scipy's logsumexp.
    t = theta.reshape(6, 3)
    s = x @ t[:5] + t[5]
    return np.mean(special.logsumexp(s, axis=1) - s[np.arange(60), y]) + 0.025 * np.sum(t ** 2)

  ref = optimize.minimize(objective, np.zeros(18), method="BFGS", options={"gtol": 1e-11})
  assert objective(np.concatenate([w, b[None]]).ravel()) <= ref.fun + 1e-12
  np.testing.assert_allclose(np.concatenate([w, b[None]]).ravel(), ref.x, atol=1e-5)


def dfr_config(stage1_dir, **fields):
  return stage2_config(stage1_dir, **{
      "method.name": "dfr", "loss.name": "ce", "weighting.mode": "none",
      "model.freeze_features": True, "batch_size": 8, **fields})


def test_dfr_retrains_the_head_on_balanced_validation_data(stage1):
  c = dfr_config(stage1, **{"method.dfr_l2_grid": (0.001, 0.1, 10.0)})
  exp = two_stage.build(c, mesh=placement.make_mesh())
  loaded, val_logits = reference_logits(stage1, "val")
  val = loaded.exp.dataset.val
  # The features: what the stage-1 head maps to the stage-1 logits.
  head = loaded.state.params["head"]
  feats = dfr.features(loaded.exp.model_def, loaded.state, val, shardings=loaded.exp.shardings,
                       batch_size=1000)
  np.testing.assert_allclose(feats @ np.asarray(head["kernel"]) + np.asarray(head["bias"]),
                             val_logits, rtol=1e-5, atol=1e-5)

  train_split = exp.dataset.train  # The validation split, equal group sizes, unit weights.
  assert np.bincount(train_split.group).tolist() == [np.bincount(val.group).min()] * 2
  rows = {r.tobytes() for r in val.x}
  assert all(r.tobytes() in rows for r in train_split.x) and (train_split.weight == 1).all()

  # The tuning, refitted with scipy on the same halves.
  first, second = dfr.halves(len(val), c.data.seed)
  fit = first[dfr.balanced_indices(val.group[first], np.random.default_rng([0, 0xDF, 1]))]
  scores = []
  for l2 in c.method.dfr_l2_grid:
    def objective(theta):
      t = theta.reshape(-1, 2)
      s = feats[fit].astype(np.float64) @ t[:-1] + t[-1]
      return (np.mean(special.logsumexp(s, axis=1) - s[np.arange(len(fit)), val.y[fit]])
              + 0.5 * l2 * np.sum(t ** 2))
    t = optimize.minimize(objective, np.zeros(2 * (feats.shape[1] + 1)), method="L-BFGS-B",
                          options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000}).x.reshape(-1, 2)
    pred = (feats[second] @ t[:-1] + t[-1]).argmax(1)
    scores.append(min(np.mean(pred[val.group[second] == g] == val.y[second][val.group[second] == g])
                      for g in (0, 1)))
  rec = exp.record["dfr"]
  assert rec["val_half_worst_group_acc"] == pytest.approx(scores, abs=1e-12)
  assert rec["l2"] == c.method.dfr_l2_grid[int(np.argmax(scores))]

  # The initial state: stage 1's features, a zero head, the chosen weight decay.
  for key in exp.state.params:
    for a, b in zip(jax.tree.leaves(exp.state.params[key]),
                    jax.tree.leaves(loaded.state.params[key])):
      np.testing.assert_array_equal(a, 0 * b if key == "head" else b)
  decays = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(exp.state.opt_state)
            if "weight_decay" in jax.tree_util.keystr(path)]
  assert decays and all(float(d) == pytest.approx(rec["l2"]) for d in decays)


def test_dfr_settings_are_checked(stage1):
  for fields, message in [
      ({"loss.name": "poly"}, "config.loss.name must be 'ce' for method.name='dfr'"),
      ({"weight_decay": 0.01}, "config.weight_decay must be 0.0 for method.name='dfr'"),
      ({"model.freeze_features": False}, "config.model.freeze_features must be True"),
      ({"method.dfr_l2_grid": (0.1, 0.0)}, "config.method.dfr_l2_grid must be L2 strengths"),
      ({"model.hidden": 100}, "has another model (model.hidden 200 there, 100 here)"),
  ] + ([({"model.head": "normed"}, "config.model.head must be 'linear' for method.name='dfr'")]
       if "head" in config_lib.base_config().model else []):
    with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
      dfr_config(stage1, **fields)


def test_a_dfr_run_trains_only_the_head_and_analysis_rebuilds_it(stage1, tmp_path):
  c = dfr_config(stage1, **{"num_epochs": 2, "method.dfr_l2_grid": (0.01,)})
  summary = train.train_and_evaluate(c, str(tmp_path / "dfr"))
  assert summary["dfr"]["l2"] == 0.01
  assert summary["final"]["train/n"] == summary["dfr"]["train_size"]

  run = runs.load_run(tmp_path / "dfr")
  loaded = tasks.load_checkpoint(run, "last")  # Rebuilt through its stage-1 run.
  for split in ("train", "val", "test"):
    values = tasks.evaluate(loaded, split)
    assert values["n"] == summary["final"][f"{split}/n"]
    assert values["acc"] == pytest.approx(summary["final"][f"{split}/acc"], abs=1e-12)
  first = tasks.load_checkpoint(runs.load_run(stage1), "last")
  for key in loaded.state.params:
    same = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded.state.params[key]),
                                                  jax.tree.leaves(first.state.params[key]))]
    assert all(same) == (key != "head"), key  # Frozen features; a trained head.


def test_a_stacked_dfr_sweep_equals_its_single_runs(stage1, tmp_path):
  # Frozen features give the members head_only's optimizer state: the stacked program
  # must build the same optimizer.
  base = dfr_config(stage1, **{"num_epochs": 2, "method.dfr_l2_grid": (0.01,)})
  members = grid.expand(base, [{"seed": [0, 1]}])
  assert len(grid.groups(members)) == 1
  summaries = sweep.run_sweep(members, str(tmp_path / "sweep"))
  name, cfg = members[0]
  single = train.train_and_evaluate(cfg, str(tmp_path / "single"))["final"]
  stacked = summaries[name]["final"]
  # docs: a digits member equals its single run within 1e-5.
  for key in ("train/loss", "val/loss", "test/loss", "test/reweighted_acc"):
    assert stacked[key] == pytest.approx(single[key], abs=1e-5), key
