"""weighting.evaluate_extras: the training examples undersampling leaves out, kept as
the split 'extras' and evaluated like val and test (docs/metrics.md)."""

import dataclasses
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest

from configs import digits_poly
from polyjax import config as config_lib, data, grid, main, run_dir, sweep, train, weighting
from polyjax.analysis import collect, results, runs, tasks
import subprocess_env
from test_sweep import assert_same_run, rows

REPO = pathlib.Path(__file__).resolve().parents[1]


def _data_cfg():
  cfg = config_lib.base_config().data.to_dict()
  cfg.pop("name"), cfg.pop("order_seed")
  return cfg


def _config(num_epochs=2):
  c = digits_poly.get_config()
  c.weighting.mode, c.weighting.evaluate_extras = "undersampled", True
  c.model.hidden, c.num_epochs = 32, num_epochs
  return c


def test_extras_are_the_training_examples_undersampling_left_out():
  full = data.load("digits", weighting_mode="none", exponent=1.0, **_data_cfg())
  ds = data.load("digits", weighting_mode="undersampled", exponent=1.0, extras=True,
                 **_data_cfg())
  keep = weighting.undersample_indices(full.train.group, full.train_group_counts,
                                       exponent=1.0, seed=_data_cfg()["seed"])
  left_out = np.setdiff1d(np.arange(len(full.train)), keep)
  assert list(ds.splits()) == ["train", "val", "test", "extras"]
  assert len(ds.train) + len(ds.extras) == len(full.train) and len(left_out) > 0
  # Rows of the full training split, in order: disjoint, their union the whole split.
  for name, idx in (("train", keep), ("extras", left_out)):
    s = ds.splits()[name]
    for field in ("x", "y", "group"):
      np.testing.assert_array_equal(getattr(s, field), getattr(full.train, field)[idx])
  assert not np.isin(keep, left_out).any()
  np.testing.assert_array_equal(np.sort(np.concatenate([keep, left_out])),
                                np.arange(len(full.train)))
  extras_counts = weighting.group_counts(ds.extras.group, ds.num_groups)
  np.testing.assert_array_equal(ds.train_group_counts + extras_counts, full.train_group_counts)
  assert np.all(ds.extras.weight == 1.0)  # The training split's loss weights.
  # Without the option the training split is the same and nothing else is kept.
  plain = data.load("digits", weighting_mode="undersampled", exponent=1.0, **_data_cfg())
  assert plain.extras is None and list(plain.splits()) == ["train", "val", "test"]
  np.testing.assert_array_equal(plain.train.x, ds.train.x)


def test_an_empty_pool_and_other_modes_are_refused_in_one_line():
  with pytest.raises(config_lib.ConfigError, match=r"^config\.weighting\.evaluate_extras=True: "
                     r"undersampling with weighting\.exponent=0\.0 keeps all 661 training "
                     r"examples, so there are no extras to evaluate$"):
    data.load("digits", weighting_mode="undersampled", exponent=0.0, extras=True, **_data_cfg())
  with pytest.raises(ValueError, match="extras=True needs weighting_mode='undersampled'"):
    data.load("digits", weighting_mode="reweighted", exponent=1.0, extras=True, **_data_cfg())
  config_lib.validate(_config(), device_count=8)
  for mode in ("none", "reweighted", "resampled", "dro"):
    c = _config()
    c.weighting.mode = mode
    with pytest.raises(config_lib.ConfigError, match=r"^config\.weighting\.evaluate_extras must "
                       r"be False unless weighting\.mode='undersampled' \(only it leaves "
                       r"training examples out\), got True$"):
      config_lib.validate(c, device_count=8)


def test_print_config_lists_the_extras(capsys):
  main.print_config(_config())
  sizes = [l for l in capsys.readouterr().out.splitlines() if l.startswith("# data digits:")]
  assert sizes == ["# data digits: train 113, val 165, test 300, extras 548 examples; "
                   "2 classes, 2 groups"]


def _reference(logits_NxC, y_N, group_N, train_group_counts):
  """The accuracy metrics of docs/metrics.md from logits, in float64 NumPy."""
  correct_N = logits_NxC.argmax(axis=1) == y_N
  groups = np.arange(len(train_group_counts))
  group_n = np.array([np.sum(group_N == g) for g in groups], np.float64)
  group_acc = np.array([correct_N[group_N == g].mean() if n else 0.0
                        for g, n in zip(groups, group_n)])
  present = group_n > 0
  freq = np.where(present, train_group_counts, 0).astype(np.float64)
  out = {"n": float(len(y_N)), "acc": correct_N.mean(),
         "reweighted_acc": group_acc[present].mean(),
         "worst_group_acc": group_acc[present].min(),
         "train_reweighted_acc": np.sum(freq * group_acc) / freq.sum()}
  for g in groups:
    out[f"group_{g}_acc"], out[f"group_{g}_n"] = group_acc[g], group_n[g]
  for k in range(logits_NxC.shape[1]):  # 0 for a class absent (metrics._ratio).
    out[f"class_{k}_acc"] = correct_N[y_N == k].mean() if np.any(y_N == k) else 0.0
  return out


def test_a_main_run_logs_extras_metrics_equal_to_a_numpy_count(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "polyjax.main", "--config=configs/digits_poly.py",
       f"--workdir={workdir}", "--config.num_epochs=2", "--config.model.hidden=32",
       "--config.batch_size=16",
       "--config.weighting.mode=undersampled", "--config.weighting.evaluate_extras=True"],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=subprocess_env.env(XLA_FLAGS="--xla_force_host_platform_device_count=2"))
  assert proc.returncode == 0, proc.stderr
  logged = rows(workdir)
  assert [(r["epoch"], r["split"]) for r in logged] == [
      (e, s) for e in (1, 2) for s in ("train", "val", "test", "extras")]
  by_split = {r["split"]: r for r in logged if r["epoch"] == 2}
  assert set(by_split["extras"]) == set(by_split["val"])  # Exactly the metrics val gets.
  final = run_dir.read_json(workdir / run_dir.SUMMARY)["final"]
  for k, v in by_split["extras"].items():
    if k not in ("epoch", "step", "split"):
      assert final[f"extras/{k}"] == v, k
  # The checkpoint's logits on the extras, counted in NumPy.
  loaded = tasks.load_checkpoint(runs.load_run(workdir), "last")
  ds = loaded.exp.dataset
  logits = tasks.logits(loaded, "extras").astype(np.float64)
  top2 = np.sort(logits, axis=1)[:, -2:]
  assert np.all(top2[:, 1] - top2[:, 0] > 1e-4)  # No near tie: the argmax is program-free.
  expected = _reference(logits, ds.extras.y, ds.extras.group, ds.train_group_counts)
  assert expected["n"] == 548 and 0 < expected["acc"] < 1
  for k, v in expected.items():
    assert by_split["extras"][k] == pytest.approx(v, abs=1e-12), k
  # Unit loss weights: the weighted loss is the loss.
  assert by_split["extras"]["weighted_loss"] == pytest.approx(by_split["extras"]["loss"],
                                                              rel=1e-6)
  # The analysis reads them too; a run without extras is skipped, not an error.
  counts = collect.collect([tmp_path], tmp_path / "results.csv", splits=["extras"])
  assert counts.added == 1
  row = results.read(tmp_path / "results.csv").iloc[0]
  assert row["split"] == "extras" and row["acc"] == pytest.approx(expected["acc"], abs=1e-12)
  assert tasks.logged(runs.load_run(workdir), "extras")[0][3]["acc"] == by_split["extras"]["acc"]
  plain = types.SimpleNamespace(run=loaded.run, exp=types.SimpleNamespace(
      dataset=dataclasses.replace(ds, extras=None)))
  with pytest.raises(runs.RunError, match="has no split 'extras' \\(its splits: train, val, test\\)"):
    tasks.logits(plain, "extras")


def test_stacked_members_evaluate_the_extras_like_single_runs(tmp_path):
  # Members sharing the undersampled data: another lr and another seed.
  c = _config()
  c.batch_size = 16  # 7 steps an epoch.
  members = grid.expand(c, [{"lr": [0.02], "seed": [0]}, {"lr": [0.1], "seed": [1]}])
  assert len(members) == 2 and len(grid.groups(members)) == 1  # One stacked program.
  sweep.run_sweep(members, str(tmp_path / "stacked"))
  sweep.run_sweep(members, str(tmp_path / "one_by_one"), member_batch=1)
  for name, _ in members:
    assert {r["split"] for r in rows(tmp_path / "one_by_one" / name)} == {
        "train", "val", "test", "extras"}
    assert_same_run(tmp_path / "stacked" / name, tmp_path / "one_by_one" / name)
  # --member_batch=1 is the separate run bit for bit (its Single programs).
  name, cfg = members[1]
  single = tmp_path / name
  train.train_and_evaluate(cfg, str(single))
  assert rows(tmp_path / "one_by_one" / name) == rows(single)
  a = run_dir.read_json(tmp_path / "one_by_one" / name / run_dir.SUMMARY)
  b = run_dir.read_json(single / run_dir.SUMMARY)
  a.pop("wall_seconds"), b.pop("wall_seconds")
  assert a == b


def test_streamed_extras_are_read_and_evaluated_like_the_in_memory_ones(tmp_path):
  import mock_tfds
  from test_stream import _assert_rows_close, _config as stream_config
  with mock_tfds.mock():
    for pipeline in ("memory", "stream"):
      c = stream_config(pipeline, num_epochs=1, batch_size=8, eval_batch_size=8)
      c.weighting.mode, c.weighting.evaluate_extras = "undersampled", True
      train.train_and_evaluate(c, str(tmp_path / pipeline))
  streamed = rows(tmp_path / "stream")
  assert [r["split"] for r in streamed] == ["train", "val", "test", "extras"]
  assert streamed[-1]["n"] == 38
  _assert_rows_close(streamed, rows(tmp_path / "memory"))
