"""Methods that read a stage-1 run: estimated label-shift weights, JTT; their config checks."""

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
from polyjax import label_shift, placement, train, two_stage
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
