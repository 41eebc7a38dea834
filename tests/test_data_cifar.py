"""Imbalanced CIFAR-10 through tfds.data_source + grain, on controlled mock data."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import mock_tfds
from polyjax import config as config_lib
from polyjax import data, experiment, steps
from polyjax.data import cifar
import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(**kw):
  kw.setdefault("weighting_mode", "reweighted")
  kw.setdefault("exponent", 1.0)
  with mock_tfds.mock():
    return data.load("cifar10", data_dir="/nonexistent", **kw)


def original(split):
  """(original CIFAR label, source index) of every example, from its pixels."""
  px = split.x[:, 0, 0].astype(np.int64)
  return px[:, 0], px[:, 1] + 251 * px[:, 2]


def test_step_imbalance_exact_counts_and_8020_split():
  ds = load(class_subset=((3,), (5,)), imb_type="step", imb_factor=10.0)
  n = mock_tfds.CIFAR_PER_CLASS["train"]  # 60 cats, 60 dogs available
  total = ds.train_class_counts + np.bincount(ds.val.y, minlength=2)
  assert total.tolist() == [n, n // 10]
  assert len(ds.val) == round(0.2 * (n + n // 10)) and len(ds.train) == n + n // 10 - len(ds.val)
  np.testing.assert_array_equal(ds.train.group, ds.train.y)
  for split in (ds.train, ds.val, ds.test):
    labels, _ = original(split)
    np.testing.assert_array_equal(labels, np.where(split.y == 0, 3, 5))  # images follow labels
  _, train_ids = original(ds.train)
  _, val_ids = original(ds.val)
  assert len(set(train_ids) | set(val_ids)) == len(ds.train) + len(ds.val)  # disjoint, no repeats
  assert ds.train.x.dtype == np.uint8 and ds.in_shape == (32, 32, 3)


def test_test_split_is_every_official_test_image_and_balanced():
  ds = load(class_subset=((3,), (5,)))
  per = mock_tfds.CIFAR_PER_CLASS["test"]
  assert np.bincount(ds.test.y).tolist() == [per, per]
  _, ids = original(ds.test)
  expected = [i for i in range(10 * per) if mock_tfds.cifar_label(i) in (3, 5)]
  assert sorted(ids.tolist()) == expected


@pytest.mark.parametrize("imb_type,expected", [("step", [60, 15, 15]), ("exp", [60, 30, 15]),
                                               ("none", [60, 60, 60])])
def test_imbalance_types_three_classes(imb_type, expected):
  ds = load(class_subset=((0,), (1,), (2,)), imb_type=imb_type, imb_factor=4.0)
  total = ds.train_class_counts + np.bincount(ds.val.y, minlength=3)
  assert total.tolist() == expected
  assert ds.num_classes == 3 and ds.num_groups == 3


def test_merged_classes_and_flat_class_subset():
  ds = load(class_subset=((0, 1), (2,)), imb_type="none")
  assert (ds.train_class_counts + np.bincount(ds.val.y, minlength=2)).tolist() == [60, 60]
  assert cifar.class_sets((3, 5)) == [(3,), (5,)]
  with pytest.raises(ValueError, match="data.class_subset"):
    cifar.class_sets(((3,), (3,)))


def paper_counts(num_train, num_labels, imb_type, imb_factor):
  """Per-label sizes as the paper's code writes them (float64 NumPy, floor of positives)."""
  img_max = num_train / num_labels
  if imb_type == "exp":
    return np.floor(img_max * np.power(1.0 / imb_factor,
                                       np.arange(num_labels) / (num_labels - 1.0))).astype(int)
  return np.floor(np.where(np.arange(num_labels) < num_labels // 2, img_max,
                           img_max * (1.0 / imb_factor))).astype(int)


@pytest.mark.parametrize("num_labels,imb_type,imb_factor,total", [
    (10, "exp", 100, 12406), (10, "exp", 10, 20431), (100, "exp", 100, 10847),
    (100, "exp", 10, 19573), (10, "step", 10, 27500), (100, "step", 100, 25250)])
def test_profile_over_all_labels_is_the_papers_cifar_lt(num_labels, imb_type, imb_factor, total):
  # exp totals: the CIFAR-10-LT / CIFAR-100-LT training-set sizes of the literature; step:
  # half the labels whole, half at 1/imb_factor.
  counts = cifar.label_counts(50000, num_labels, imb_type=imb_type, imb_factor=imb_factor)
  np.testing.assert_array_equal(counts, paper_counts(50000, num_labels, imb_type, imb_factor))
  assert sum(counts) == total and counts[0] == 50000 // num_labels
  assert counts[-1] == int(50000 // num_labels / imb_factor)


def test_binary_subset_of_the_all_labels_profile():
  # The paper's code applies exp 100 over CIFAR-10's ten labels, then keeps cat and dog.
  sets, sizes = [(3,), (5,)], [5000] * 10
  kw = dict(imb_type="exp", imb_factor=100.0)
  assert cifar.class_counts(sets, sizes, imb_over="all", **kw) == [1077, 387]
  assert cifar.class_counts(sets, sizes, imb_over="subset", **kw) == [5000, 50]
  # Step 10 keeps labels 0-4 whole: cat vs dog is 5000 vs 500 either way.
  for over in ("all", "subset"):
    assert cifar.class_counts(sets, sizes, imb_type="step", imb_factor=10.0,
                              imb_over=over) == [5000, 500]
  # Merged classes keep their labels' sizes.
  assert cifar.class_counts([(0, 9), (1,)], sizes, imb_over="all", **kw) == [5050, 2997]
  with pytest.raises(ValueError, match="data.imb_over"):
    cifar.class_counts(sets, sizes, imb_over="some", **kw)


def test_all_labels_profile_on_mock_cifar10():
  n = mock_tfds.CIFAR_PER_CLASS["train"]
  ds = load(class_subset=((3,), (5,)), imb_type="exp", imb_factor=100.0, imb_over="all")
  expected = paper_counts(10 * n, 10, "exp", 100.0)[[3, 5]]
  total = ds.train_class_counts + np.bincount(ds.val.y, minlength=2)
  assert total.tolist() == expected.tolist() == [12, 4]
  for split in (ds.train, ds.val, ds.test):
    np.testing.assert_array_equal(original(split)[0], np.where(split.y == 0, 3, 5))
  # Where both profiles keep the same sizes, they keep the same images.
  a = load(class_subset=((3,), (5,)), imb_type="step", imb_over="all")
  b = load(class_subset=((3,), (5,)), imb_type="step", imb_over="subset")
  np.testing.assert_array_equal(original(a.train)[1], original(b.train)[1])


def test_cifar100_lt_on_mock_data():
  per = mock_tfds.CIFAR100_PER_CLASS
  with mock_tfds.mock():
    ds = data.load("cifar100", data_dir="/nonexistent", weighting_mode="none", exponent=1.0,
                   class_subset=(), imb_type="exp", imb_factor=10.0, imb_over="all")
  assert ds.num_classes == ds.num_groups == 100
  total = ds.train_class_counts + np.bincount(ds.val.y, minlength=100)
  np.testing.assert_array_equal(total, paper_counts(100 * per["train"], 100, "exp", 10.0))
  assert total[0] == per["train"] and total[-1] == per["train"] // 10
  assert np.bincount(ds.test.y, minlength=100).tolist() == [per["test"]] * 100
  for split in (ds.train, ds.val, ds.test):
    np.testing.assert_array_equal(original(split)[0], split.y)  # every label is its class
  with pytest.raises(ValueError, match=r"labels in 0..99"):
    cifar.class_sets(((3,), (100,)), 100)


def test_importance_weights_normalised():
  ds = load(class_subset=((3,), (5,)))
  n_G = ds.train_group_counts
  np.testing.assert_allclose(ds.train.weight.mean(), 1.0, rtol=1e-6)
  w_G = (1.0 / n_G) / np.mean((1.0 / n_G)[ds.train.group])
  np.testing.assert_allclose(ds.train.weight, w_G[ds.train.group], rtol=1e-6)
  np.testing.assert_allclose(ds.test.weight, w_G[ds.test.group], rtol=1e-6)


def _config(**over):
  c = config_lib.base_config()
  c.data.name = "cifar10"
  c.data.data_dir = "/nonexistent"
  c.data.class_subset = ((3,), (5,))
  c.model.name = "linear"
  c.batch_size = 16
  c.eval_batch_size = 16  # does not divide the 40 test or 13 val examples: padding is exercised
  for k, v in over.items():
    c[k] = v
  return c


def test_same_data_seed_same_split_whatever_the_run_seed():
  with mock_tfds.mock():
    a = experiment.build(_config(seed=0)).dataset
    b = experiment.build(_config(seed=7)).dataset
    c = load(class_subset=((3,), (5,)), seed=1)
  for name in ("train", "val", "test"):
    for field in ("x", "y", "group", "weight"):
      np.testing.assert_array_equal(getattr(getattr(a, name), field),
                                    getattr(getattr(b, name), field))
  assert not np.array_equal(original(a.val)[1], original(c.val)[1])  # the data seed matters


def test_every_eval_example_counted_once():
  with mock_tfds.mock():
    exp = experiment.build(_config())
  # Both splits in one pass of batches of 16: the last val rows share a batch with
  # the first test rows, and only the final batch is padded.
  splits = (exp.dataset.val, exp.dataset.test)
  packed = steps.pack_for_eval(splits, 16)
  assert packed["mask"].shape == (-(-(len(splits[0]) + len(splits[1])) // 16), 16, 2)
  packed = jax.device_put(packed, exp.shardings.stacked_batches)
  counts_S = jax.device_get(exp.eval_counts(exp.state, packed))
  for i, split in enumerate(splits):
    counts = {k: v[i] for k, v in counts_S.items()}
    assert counts["n"] == len(split)
    np.testing.assert_array_equal(counts["group_n"], np.bincount(split.group, minlength=2))
    x = exp.dataset.preprocess(jax.numpy.asarray(split.x))
    logits, _ = exp.model_def.apply(exp.state, x, train=False)
    correct = np.sum(np.argmax(np.asarray(logits), -1) == split.y)
    assert counts["correct"] == correct


def test_missing_data_names_dataset_path_and_command(tmp_path):
  with pytest.raises(data.DataMissing) as e:
    data.load("cifar10", weighting_mode="none", exponent=1.0, data_dir=str(tmp_path))
  msg = str(e.value)
  assert "\n" not in msg and "data.name='cifar10'" in msg and str(tmp_path) in msg
  assert f"python -m polyjax.data prepare cifar10 --data_dir={tmp_path}" in msg


def test_validate_rejects_bad_data_fields():
  c = _config()
  c.data.imb_type = "linear"
  with pytest.raises(config_lib.ConfigError, match="data.imb_type"):
    config_lib.validate(c, device_count=8)
  c = _config()
  c.data.imb_over = "classes"
  with pytest.raises(config_lib.ConfigError, match="data.imb_over"):
    config_lib.validate(c, device_count=8)
  c = _config()
  c.data.name = "digits"
  c.data.augment = True
  with pytest.raises(config_lib.ConfigError, match="data.augment"):
    config_lib.validate(c, device_count=8)


RUN_ON_MOCK = """
import runpy, sys
sys.path.insert(0, {tests!r})
import mock_tfds
mock_tfds.CIFAR_PER_CLASS = {per_class!r}
sys.argv = [{module!r}] + {args!r}
with mock_tfds.mock():
  runpy.run_module({module!r}, run_name="__main__")
"""


def run_on_mock(module: str, args: list[str], *, per_class=None, **env_vars):
  """`python -m module args` on the mock CIFAR-10 (`mock_tfds`, CIFAR_PER_CLASS images)."""
  script = RUN_ON_MOCK.format(tests=os.path.join(ROOT, "tests"), module=module, args=args,
                              per_class=per_class or mock_tfds.CIFAR_PER_CLASS)
  return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                        text=True, timeout=900,
                        env=subprocess_env.env(JAX_PLATFORMS="cpu", **env_vars))


def test_main_runs_cifar_poly_config_on_mock_data(tmp_path):
  workdir = tmp_path / "run"
  args = ["--config=configs/cifar_poly.py", f"--workdir={workdir}",
          "--config.data.data_dir=/nonexistent", "--config.num_epochs=2",
          "--config.batch_size=16", "--config.eval_batch_size=64", "--config.data.augment=True",
          "--config.lr=0.001"]  # the mock images are trivially separable
  proc = run_on_mock("polyjax.main", args,
                     XLA_FLAGS="--xla_force_host_platform_device_count=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  import json
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "completed" and summary["epochs_completed"] == 2
  assert summary["steps"] == 2 * (53 // 16)
  cfg = json.loads((workdir / "config.json").read_text())
  assert cfg["config"]["data"]["name"] == "cifar10" if "config" in cfg else cfg["data"]["name"] == "cifar10"
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  test_rows = [r for r in rows if r["split"] == "test"]
  assert len(test_rows) == 2 and test_rows[-1]["n"] == 40


def test_tuning_stage_of_cifar_poly_runs_and_reports_on_mock_data(tmp_path):
  # The documented stage 1 (the config's own sweep()), then the analysis that picks the lr.
  import json
  workdir = tmp_path / "tune"
  args = ["--config=configs/cifar_poly.py", f"--workdir={workdir}",
          "--config.data.data_dir=/nonexistent", "--config.num_epochs=1", "--member_batch=1"]
  # 528 training images: one step at batch 512.
  proc = run_on_mock("polyjax.sweep", args, per_class={"train": 600, "test": 20})
  assert proc.returncode == 0, proc.stderr[-3000:]
  grid = {(b, lr) for b in config_lib.TUNING_BATCH_SIZES for lr in config_lib.TUNING_LRS["cifar10"]}
  seen, completed = set(), set()
  for member in (p for p in workdir.iterdir() if p.is_dir()):  # Not the sweep's lock file.
    cfg = json.loads((member / "config.json").read_text())
    seen.add((cfg["batch_size"], cfg["lr"]))
    summary = json.loads((member / "summary.json").read_text())
    assert summary["status"] in ("completed", "diverged"), (member.name, summary["status"])
    if summary["status"] == "completed":
      completed.add((cfg["batch_size"], cfg["lr"]))
  assert seen == grid and completed  # Large lrs may diverge on these images.
  results = tmp_path / "tune.csv"
  for cmd in (["collect", "--runs", str(workdir), "--out", str(results), "--task", "logged",
               "--split", "val"],
              ["report", "--results", str(results), "--by", "batch_size,lr", "--split", "val",
               "--format", "csv"]):
    out = subprocess.run([sys.executable, "-m", "polyjax.analysis", *cmd], cwd=ROOT,
                         env=subprocess_env.env(JAX_PLATFORMS="cpu"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
  import io
  import pandas as pd
  table = pd.read_csv(io.StringIO(out.stdout))
  assert set(zip(table["batch_size"], table["lr"])) == completed


def test_cifar_lt_cell_builds_on_mock_data():
  # configs/cifar_lt.py as a run builds it: every label, exp 10 over all of them, ResNet-32
  # with the cosine head (exp 100 would leave the mock's rarest labels empty).
  lt = config_lib.load_config_module(os.path.join(ROOT, "configs", "cifar_lt.py"), "cifar_lt")
  c = lt.get_config("cifar10,exp10,ldam_drw")
  c.data.data_dir = "/nonexistent"
  config_lib.validate(c, device_count=jax.device_count())
  with mock_tfds.mock():
    exp = experiment.build(c)
  ds = exp.dataset
  n = mock_tfds.CIFAR_PER_CLASS["train"]
  total = ds.train_class_counts + np.bincount(ds.val.y, minlength=10)
  np.testing.assert_array_equal(total, paper_counts(10 * n, 10, "exp", 10.0))
  assert len(ds.val) == round(0.1 * total.sum()) and ds.num_classes == 10
  kernel = np.asarray(exp.state.params["head"]["kernel"])
  assert kernel.shape == (64, 10) and "bias" not in exp.state.params["head"]
  assert sum(x.size for x in jax.tree.leaves(exp.state.params)) == 464_154 - 10
