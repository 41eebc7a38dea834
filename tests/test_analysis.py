"""polyjax.analysis on real run directories made by short training runs."""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import threading

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from polyjax import config as config_lib
from polyjax import experiment, train
from polyjax.analysis import __main__ as cli
from polyjax.analysis import collect, plots, report, results, runs, tasks
import subprocess_env

REPO = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("none", "reweighted")
SEEDS = (0, 1)


def _digits_config(seed, mode, epochs):
  c = config_lib.base_config()
  c.seed = seed
  c.data.name = "digits"
  c.model.hidden = 16
  c.model.depth = 1
  c.loss.name = "poly"
  c.weighting.mode = mode
  c.lr = 0.05
  c.batch_size = 64
  c.num_epochs = epochs
  return c


@pytest.fixture(scope="module")
def made(tmp_path_factory):
  """Real runs: a digits sweep (2 methods x 2 seeds, 2 epochs), a 1-epoch digits
  run (seed 0, reweighted) and a 2-D Gaussians linear run."""
  root = tmp_path_factory.mktemp("runs")
  for mode in METHODS:
    for seed in SEEDS:
      train.train_and_evaluate(_digits_config(seed, mode, 2),
                               root / "sweep" / f"{mode}-s{seed}")
  train.train_and_evaluate(_digits_config(0, "reweighted", 1), root / "short" / "reweighted-s0")
  g = config_lib.base_config()
  g.data.name = "gaussians"
  g.model.name = "linear"
  g.lr = 0.1
  g.momentum = 0.0
  g.batch_size = 216
  g.num_epochs = 2
  train.train_and_evaluate(g, root / "gauss" / "linear")
  return root


def _logged(run_path, epoch, split):
  with open(pathlib.Path(run_path) / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  (row,) = [r for r in rows if r["epoch"] == epoch and r["split"] == split]
  return row


def _copy_run(src, dst):
  shutil.copytree(src, dst)
  return dst


@pytest.fixture(scope="module")
def evaluated(made, tmp_path_factory):
  out = tmp_path_factory.mktemp("csv") / "results.csv"
  counts = collect.collect([made / "sweep"], out, task="evaluate",
                           splits=["train", "val", "test"])
  return out, counts


def test_evaluate_rows_recompute_the_logged_metrics(made, evaluated):
  out, counts = evaluated
  assert (counts.runs, counts.added, counts.skipped) == (4, 12, 0)
  df = results.read(out)
  assert len(df) == 12
  assert set(df["task"]) == {"evaluate"} and set(df["checkpoint"]) == {"last"}
  assert set(df["epoch"]) == {2} and set(df["selected_by"]) == {"last checkpoint"}
  for _, row in df.iterrows():
    run = runs.load_run(row["run"])
    assert row["run_id"] == pathlib.Path(row["run"]).name
    assert row["weighting.mode"] == run.config.weighting.mode
    assert row["seed"] == run.config.seed
    assert row["loss.name"] == "poly" and row["loss.alpha"] == 1.0
    assert row["data.name"] == "digits" and row["model.name"] == "mlp"
    assert row["lr"] == 0.05 and row["batch_size"] == 64
    logged = _logged(row["run"], 2, row["split"])
    names = [k for k in logged if k not in ("epoch", "step", "split", "objective")]
    assert {"reweighted_acc", "worst_group_acc", "class_1_precision", "group_1_acc",
            "train_reweighted_acc", "frac_predicted_pos", "loss"} <= set(names)
    np.testing.assert_allclose([row[k] for k in names], [logged[k] for k in names],
                               rtol=1e-6, atol=0, err_msg=f"{row['run']} {row['split']}")


def test_second_collect_adds_nothing(made, evaluated):
  out, _ = evaluated
  before = out.read_bytes()
  counts = collect.collect([made / "sweep"], out, task="evaluate",
                           splits=["train", "val", "test"])
  assert (counts.added, counts.present) == (0, 12)
  assert out.read_bytes() == before


def _sorted(df):
  return df.sort_values(list(results.KEY)).reset_index(drop=True)


def test_four_concurrent_collectors_equal_one(made, tmp_path):
  env = subprocess_env.env()
  cmd = [sys.executable, "-m", "polyjax.analysis", "collect", "--runs", str(made),
         "--task", "logged", "--split", "test,val"]
  single = tmp_path / "one.csv"
  subprocess.run(cmd + ["--out", str(single)], env=env, check=True, capture_output=True)
  shared = tmp_path / "four.csv"
  procs = [subprocess.Popen(cmd + ["--out", str(shared)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE) for _ in range(4)]
  for p in procs:
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()
  one, four = results.read(single), results.read(shared)
  assert len(one) == 6 * 3 * 2  # 6 runs x 3 selection rules x 2 splits
  assert not four.duplicated(list(results.KEY)).any()
  pd.testing.assert_frame_equal(_sorted(one), _sorted(four))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["four.csv", "one.csv"]  # No lock files.


def test_concurrent_appends_lose_and_double_nothing(tmp_path):
  out = tmp_path / "r.csv"
  added = []

  def worker(w):
    n = 0
    for i in range(40):
      # Overlapping keys across workers; a new metric column from worker 3.
      row = {"run": f"/r/{i}", "task": "evaluate", "checkpoint": "last", "split": "test",
             "acc": i / 40, f"m{w % 2}": w}
      n += results.append(out, [row])
    added.append(n)

  threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  df = results.read(out)
  assert sum(added) == 40 and len(df) == 40
  assert sorted(df["run"]) == sorted(f"/r/{i}" for i in range(40))
  np.testing.assert_array_equal(df.sort_values("acc")["acc"], np.arange(40) / 40)
  assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]


def _row(i):
  return {"run": f"/r/{i}", "task": "evaluate", "checkpoint": "last", "split": "test"}


def test_appends_leave_no_lock_file(tmp_path):
  out = tmp_path / "r.csv"
  (tmp_path / "r.csv.lock").write_text("")  # Left by a killed collector.
  assert results.append(out, [_row(0)]) == 1
  assert results.append(out, [_row(0)]) == 0  # Nothing to add: it still takes the lock.
  assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]


def test_a_held_lock_holds_appends_back(tmp_path):
  out = tmp_path / "r.csv"
  done = threading.Event()
  worker = threading.Thread(target=lambda: (results.append(out, [_row(0)]), done.set()))
  with results._locked(out):
    worker.start()
    assert not done.wait(0.5)
    assert not out.exists()
  worker.join(30)
  assert done.is_set() and len(results.read(out)) == 1
  assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]


# After a failed restore, Orbax's async machinery posts a callback to a closed
# event loop; it is Orbax's own noise about the deliberately corrupted checkpoint.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_damaged_runs_are_skipped_with_a_warning(made, tmp_path):
  root = tmp_path / "runs"
  good = _copy_run(made / "sweep" / "none-s0", root / "good")
  bad_json = _copy_run(made / "sweep" / "none-s1", root / "bad-json")
  (bad_json / "config.json").write_text('{"lr": 0.1,')
  no_ckpt = _copy_run(made / "sweep" / "reweighted-s0", root / "no-ckpt")
  shutil.rmtree(no_ckpt / "checkpoints")
  bad_ckpt = _copy_run(made / "sweep" / "reweighted-s1", root / "bad-ckpt")
  for f in (bad_ckpt / "checkpoints").rglob("*"):
    if f.is_file() and f.parent.name == "d":
      f.write_bytes(b"garbage")
  out = tmp_path / "r.csv"
  with pytest.warns(collect.RunSkipped) as record:
    counts = collect.collect([root], out, task="evaluate")
  messages = [str(w.message) for w in record]
  assert any(str(bad_json) in m and "config.json is not valid JSON" in m for m in messages)
  assert any(str(no_ckpt) in m and "no checkpoint" in m for m in messages)
  assert any(str(bad_ckpt) in m and "cannot restore checkpoint 2" in m for m in messages)
  assert counts.skipped == 3 and counts.added == 1
  assert list(results.read(out)["run"]) == [str(good.resolve())]


def test_best_checkpoint_follows_summary_best_epoch(made, tmp_path):
  # The run keeps its best checkpoint (by val/reweighted_acc) beside the latest.
  run = _copy_run(made / "sweep" / "reweighted-s0", tmp_path / "runs" / "with-best")
  summary = json.loads((run / "summary.json").read_text())
  best = summary["best_epoch"]
  assert summary["best_metric"] == "val/reweighted_acc" and best in (1, 2)
  vals = {e: _logged(run, e, "val")["reweighted_acc"] for e in (1, 2)}
  assert vals[best] == max(vals.values())
  no_best = _copy_run(made / "sweep" / "none-s0", tmp_path / "runs" / "no-best")
  s2 = json.loads((no_best / "summary.json").read_text())
  s2.pop("best_epoch", None)
  (no_best / "summary.json").write_text(json.dumps(s2))
  out = tmp_path / "r.csv"
  with pytest.warns(collect.RunSkipped, match="no-best: summary.json names no best_epoch"):
    counts = collect.collect([tmp_path / "runs"], out, task="evaluate", checkpoint="best")
  assert (counts.added, counts.skipped) == (1, 1)
  (row,) = results.read(out).to_dict("records")
  assert (row["checkpoint"], row["epoch"]) == ("best", best)
  assert row["selected_by"] == "best val/reweighted_acc"
  at_best = _logged(run, best, "test")
  for k in ("loss", "acc", "reweighted_acc", "worst_group_acc", "class_0_precision"):
    assert row[k] == pytest.approx(at_best[k], rel=1e-6), k
  # 'last' of the same run is epoch 2 and adds a row with another key.
  assert collect.collect([tmp_path / "runs"], out, task="evaluate",
                         where=[runs.Where.parse("run_id=with-best")]).added == 1
  assert sorted(results.read(out)["epoch"]) == sorted([best, 2])


def test_filters(made, tmp_path):
  paths = runs.find_runs([made])
  assert len(paths) == 6  # Checkpoint folders inside a run are not runs.

  def ids(**kw):
    return sorted(r.run_id for r in runs.select(paths, **kw))

  assert ids(where=[runs.Where.parse("weighting.mode=none")]) == ["none-s0", "none-s1"]
  assert ids(where=[runs.Where.parse("seed=1"), runs.Where.parse("data.name=digits")]) == [
      "none-s1", "reweighted-s1"]
  assert ids(where=[runs.Where.parse("model.name=linear")]) == ["linear"]
  assert ids(where=[runs.Where.parse("lr=0.05,0.2"), runs.Where.parse("epochs_completed=1")]
             ) == ["reweighted-s0"]
  assert ids(min_epochs=2, where=[runs.Where.parse("model.name=mlp")]) == [
      "none-s0", "none-s1", "reweighted-s0", "reweighted-s1"]
  assert ids(statuses=("diverged",)) == []
  with pytest.raises(ValueError, match="'loss.nme' is not a config field"):
    runs.Where.parse("loss.nme=poly")
  with pytest.raises(ValueError, match="lr is a number"):
    ids(where=[runs.Where.parse("lr=fast")])


def test_config_round_trips_through_config_json(made):
  run = runs.load_run(made / "sweep" / "none-s1")
  expected = _digits_config(1, "none", 2)
  assert run.config.to_dict() == expected.to_dict()
  assert run.record["workdir"].endswith("none-s1") and "versions" in run.record


def test_margins_task(made, tmp_path):
  out = tmp_path / "r.csv"
  collect.collect([made / "sweep"], out, task="margins",
                  where=[runs.Where.parse("run_id=reweighted-s1")])
  (row,) = results.read(out).to_dict("records")
  assert row["split"] == "train" and row["epoch"] == 2
  # Independent norm product from the checkpoint's parameters, with NumPy.
  run = runs.load_run(made / "sweep" / "reweighted-s1")
  loaded = tasks.load_checkpoint(run, "last")
  p = loaded.state.params
  norms = [np.sqrt(np.sum(np.asarray(layer["kernel"][...], np.float64) ** 2) +
                   np.sum(np.asarray(layer["bias"][...], np.float64) ** 2))
           for layer in (p["layers"][0], p["head"])]
  assert row["num_layers"] == 2
  assert row["norm_product"] == pytest.approx(np.prod(norms), rel=1e-6)
  # Margins from logits computed here with NumPy on the restored parameters.
  x = loaded.exp.dataset.train.x.reshape(len(loaded.exp.dataset.train), -1).astype(np.float64)
  h = np.maximum(x @ np.asarray(p["layers"][0]["kernel"][...]) +
                 np.asarray(p["layers"][0]["bias"][...]), 0)
  logits = h @ np.asarray(p["head"]["kernel"][...]) + np.asarray(p["head"]["bias"][...])
  y, g = loaded.exp.dataset.train.y, loaded.exp.dataset.train.group
  margin = np.where(y == 1, 1, -1) * (logits[:, 1] - logits[:, 0])
  for name, v in (("margin", margin), ("group_1_margin", margin[g == 1])):
    assert row[f"{name}_min"] == pytest.approx(v.min(), rel=1e-4, abs=1e-5)
    assert row[f"{name}_mean"] == pytest.approx(v.mean(), rel=1e-4, abs=1e-5)
    assert row[f"{name}_q50"] == pytest.approx(np.median(v), rel=1e-4, abs=1e-5)
  assert row["normalized_margin_min"] == pytest.approx(row["margin_min"] / row["norm_product"])
  assert row["margin_frac_positive"] == pytest.approx(
      _logged(run.path, 2, "train")["acc"], abs=1.5 / len(y))


def test_checkpoint_programs_run_under_the_runs_matmul_precision(made, tmp_path):
  """A run trained with float32 products is analysed with them too (on a GPU the
  default would be TF32): its evaluation and its logits."""
  import jax

  path = _copy_run(made / "sweep" / "reweighted-s1", tmp_path / "f32")
  record = json.loads((path / "config.json").read_text())
  record["matmul_precision"] = "float32"
  (path / "config.json").write_text(json.dumps(record))
  loaded = tasks.load_checkpoint(runs.load_run(path), "last")
  seen, model_def = [], loaded.exp.model_def

  class Spy:  # The model, as traced inside the analysis' own jitted program.
    def apply(self, *args, **kwargs):
      seen.append(jax.config.jax_default_matmul_precision)
      return model_def.apply(*args, **kwargs)
  loaded.exp.model_def = Spy()
  tasks.logits(loaded, "test")
  assert seen == ["float32"]
  # The evaluation is the run's own program (`experiment.build`), under the same value.
  assert loaded.exp.eval_counts.precision == "float32"


def test_logits_go_through_the_datasets_preprocessing(made):
  """Image datasets keep uint8 inputs and normalise them on device: the analysis'
  logits (margins, boundary, stage 1's predictions) must see what the run saw."""
  import dataclasses

  loaded = tasks.load_checkpoint(runs.load_run(made / "sweep" / "reweighted-s1"), "last")
  ds = loaded.exp.dataset
  plain = tasks.logits(loaded, "test")
  doubled = dataclasses.replace(ds.test, x=2 * ds.test.x)  # Exact in float32.
  loaded.exp.dataset = dataclasses.replace(ds, test=doubled)
  want = tasks.logits(loaded, "test")
  loaded.exp.dataset = dataclasses.replace(ds, preprocess=lambda x: 2 * x)
  got = tasks.logits(loaded, "test")
  assert not np.allclose(want, plain)
  np.testing.assert_array_equal(got, want)


def test_boundary_task(made, tmp_path):
  out = tmp_path / "r.csv"
  with pytest.warns(collect.RunSkipped, match="needs a linear model on 2-D inputs"):
    collect.collect([made / "gauss", made / "short"], out, task="boundary")
  (row,) = results.read(out).to_dict("records")
  assert row["split"] == "none" and row["model.name"] == "linear"
  w, b = np.array([row["boundary_w0"], row["boundary_w1"]]), row["boundary_b"]
  # The boundary classifies the test set exactly as the logged run did.
  run = runs.load_run(made / "gauss" / "linear")
  ds = experiment.build(run.config).dataset
  acc = np.mean((ds.test.x @ w + b > 0).astype(int) == ds.test.y)
  assert acc == pytest.approx(_logged(run.path, 2, "test")["acc"], abs=1e-9)
  assert row["boundary_slope"] == pytest.approx(-w[0] / w[1])
  bayes = np.array([5.0, -5.0])
  cos = w @ bayes / np.linalg.norm(w) / np.linalg.norm(bayes)
  assert row["boundary_angle_to_bayes_deg"] == pytest.approx(math.degrees(math.acos(cos)))


@pytest.fixture(scope="module")
def table(made, evaluated, tmp_path_factory):
  out = tmp_path_factory.mktemp("table") / "results.csv"
  shutil.copy(evaluated[0], out)
  collect.collect([made / "sweep"], out, task="logged")
  return out


def test_report_matches_pandas(table):
  df = results.read(table)
  summary = report.summarize(df, metric="reweighted_acc", split="test")
  # Only weighting.mode varies among the config columns of the sweep.
  test = df[df["split"] == "test"].assign(rule=lambda d: d["task"] + ":" + d["checkpoint"])
  expected = test.groupby(["weighting.mode", "rule"])["reweighted_acc"].agg(["mean", "std",
                                                                            "count"])
  got = summary.set_index(["weighting.mode", "rule"])
  assert len(got) == len(expected) == 2 * 4
  for key, e in expected.iterrows():
    assert got.loc[key, "mean"] == pytest.approx(e["mean"], rel=1e-12)
    assert got.loc[key, "std"] == pytest.approx(e["std"], rel=1e-12)
    assert got.loc[key, "n"] == e["count"] == 2
  assert set(summary["metric"]) == {"reweighted_acc"} and set(summary["split"]) == {"test"}
  text = report.format_summary(summary, "markdown")
  e = expected.loc[("none", "evaluate:last")]
  assert f"{e['mean']:.4f} ± {e['std']:.4f} (n=2)" in text
  assert text.startswith("test reweighted_acc: mean ± std")
  for rule in ("evaluate:last", "logged:best_val_reweighted_acc",
               "logged:best_val_worst_group_acc"):
    assert rule in text.splitlines()[2]
  latex = report.format_summary(summary, "latex")
  assert r"\begin{tabular}" in latex and "evaluate:last" in latex
  long = pd.read_csv(pd.io.common.StringIO(report.format_summary(summary, "csv")))
  assert list(long["mean"]) == pytest.approx(list(summary["mean"]))


def test_paired_test_matches_scipy(table):
  df = results.read(table)
  test = report.paired(df, "weighting.mode", "none", "reweighted", metric="worst_group_acc")
  row = test[test["rule"] == "evaluate:last"].iloc[0]
  d = df[(df["split"] == "test") & (df["task"] == "evaluate")]
  a = d[d["weighting.mode"] == "none"].set_index("seed")["worst_group_acc"]
  b = d[d["weighting.mode"] == "reweighted"].set_index("seed")["worst_group_acc"]
  assert row["n_pairs"] == 2
  assert row["mean_diff"] == pytest.approx((b - a.loc[b.index]).mean())
  d = b.values - a.loc[b.index].values
  if not np.allclose(d, d[0]):
    t, p = stats.ttest_rel(b.values, a.loc[b.index].values)
    assert (row["t"], row["p"]) == (pytest.approx(t), pytest.approx(p))


def test_paired_t_edge_cases():
  df = pd.DataFrame({
      "run": [f"/r{i}" for i in range(8)], "task": "evaluate", "checkpoint": "last",
      "split": "test", "seed": [0, 1, 2, 3] * 2, "loss.name": ["ce"] * 4 + ["poly"] * 4,
      "acc": [0.5, 0.6, 0.7, 0.8, 0.6, 0.7, 0.8, 0.9]})  # poly = ce + 0.1 on every seed
  row = report.paired(df, "loss.name", "ce", "poly", metric="acc").iloc[0]
  assert (row["t"], row["p"], row["n_pairs"]) == (math.inf, 0.0, 4)
  df.loc[7, "acc"] = 0.95
  row = report.paired(df, "loss.name", "ce", "poly", metric="acc").iloc[0]
  t, p = stats.ttest_rel([0.6, 0.7, 0.8, 0.95], [0.5, 0.6, 0.7, 0.8])
  assert (row["t"], row["p"]) == (pytest.approx(t), pytest.approx(p))
  assert row["mean_diff"] == pytest.approx(0.1125)


def test_plot_writes_valid_images(table, tmp_path):
  from PIL import Image

  df = results.read(table)
  png = plots.plot(df, tmp_path / "fig.png")
  with Image.open(png) as im:
    assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
    assert len(np.unique(np.asarray(im.convert("L")))) > 10  # Not a blank canvas.
  pdf = plots.plot(df, tmp_path / "fig.pdf", metric="worst_group_acc")
  assert pdf.read_bytes().startswith(b"%PDF")
  with pytest.raises(ValueError, match=r"must end in \.png or \.pdf"):
    plots.plot(df, tmp_path / "fig.svgz")


def test_cli(table, tmp_path, capsys):
  assert cli.FORMATS == report.FORMATS
  assert cli.main(["report", "--results", str(table), "--compare",
                   "weighting.mode=none,reweighted", "--format", "markdown"]) == 0
  out = capsys.readouterr().out
  assert "Paired t-test over seeds" in out and "evaluate:last" in out
  assert cli.main(["plot", "--results", str(table), "--out", str(tmp_path / "f.png")]) == 0
  assert (tmp_path / "f.png").stat().st_size > 0
  assert cli.main(["report", "--results", str(table), "--metric", "nope"]) == 2
  assert "--metric 'nope' is not a column" in capsys.readouterr().err
  assert cli.main(["collect", "--runs", str(tmp_path), "--out", str(tmp_path / "x.csv"),
                   "--where", "lossname=poly"]) == 2
  assert cli.main(["report", "--results", str(tmp_path / "missing.csv")]) == 2
  assert cli.main(["collect", "--runs", str(tmp_path), "--out", str(tmp_path / "x.csv"),
                   "--split", "tset"]) == 2
  assert "--split 'tset': task evaluate takes train, val, test, extras" in capsys.readouterr().err
  assert not (tmp_path / "x.csv").exists()


# ---------------------------------------------------------------------------
# What the user sees from the command line: damaged CSVs, runs left out, links.

def _cli(*args, timeout=300):
  """`python -m polyjax.analysis ARGS`, as a researcher runs it."""
  return subprocess.run([sys.executable, "-m", "polyjax.analysis", *map(str, args)],
                        env=subprocess_env.env(), capture_output=True, text=True,
                        timeout=timeout)


def _lines(text, *words):
  return [line for line in text.splitlines() if all(w in line for w in words)]


def test_a_csv_cut_inside_its_last_field_is_never_read_and_collect_recomputes_it(
    made, evaluated, tmp_path):
  whole = evaluated[0].read_bytes()
  # The last row is reweighted-s1's test split; its last field, group_1_n, is 150.0.
  assert whole.endswith(b",150.0\r\n")
  out = tmp_path / "results.csv"
  out.write_bytes(whole[:-len(b"0.0\r\n")])  # A writer killed mid-row: "150.0" became "15".
  complete = tmp_path / "complete.csv"  # The rows before the cut one, as they were.
  complete.write_bytes(whole[:whole.rstrip(b"\r\n").rindex(b"\n") + 1])

  # report and plot leave the cut row out, with one line naming the file.
  args = ("--metric", "group_1_n", "--split", "test", "--format", "csv")
  cut, ok = _cli("report", "--results", out, *args), _cli("report", "--results", complete, *args)
  assert (cut.returncode, ok.returncode) == (0, 0), cut.stderr + ok.stderr
  assert cut.stdout == ok.stdout and "82.5" not in cut.stdout  # Not (150 + 15) / 2.
  (warning,) = _lines(cut.stderr, str(out))
  assert "last line is cut off" in warning and "reweighted-s1" in warning
  with pytest.warns(results.DamagedResults, match="last line is cut off"):
    pd.testing.assert_frame_equal(results.read(out), results.read(complete))
  plot = _cli("plot", "--results", out, "--out", tmp_path / "f.png")
  assert plot.returncode == 0 and _lines(plot.stderr, str(out), "last line is cut off")

  # A second collect recomputes the row: the CSV is again what one whole collect wrote.
  p = _cli("collect", "--runs", made / "sweep", "--out", out, "--task", "evaluate",
           "--split", "train,val,test")
  assert p.returncode == 0, p.stderr
  assert len(_lines(p.stderr, str(out), "last line is cut off")) == 1
  assert "collected 4 runs (1 row added, 11 already present)" in p.stdout
  assert out.read_bytes() == whole
  p = _cli("report", "--results", out, *args)
  assert p.returncode == 0 and str(out) not in p.stderr


@pytest.mark.parametrize("tail", [
    b"/r/3,evaluate,last,test,0.", b"/r/3,evaluate,la",  # Cut inside a field.
    b'/r/3,evaluate,last,"te', b"/r/3,evaluate,last,test,0.75\r",  # In quotes; before \n.
    b"/r/3,evaluate,last\r\n"])  # A last line with too few fields.
def test_an_incomplete_last_line_is_dropped_and_complete_rows_kept(tmp_path, tail):
  out = tmp_path / "r.csv"
  for i in range(3):
    results.append(out, [{"run": f"/r/{i}", "task": "evaluate", "checkpoint": "last",
                          "split": "test", "acc": i / 4}])
  whole = out.read_bytes()
  out.write_bytes(whole + tail)
  with pytest.warns(results.DamagedResults, match=f"{out}: last line is cut off") as record:
    assert len(results.existing_keys(out)) == 3
    # Said once: a collect reads the CSV again to append.
    assert list(results.read(out)["acc"]) == [0.0, 0.25, 0.5]
    assert out.read_bytes() == whole + tail  # Reading changes nothing.
    # The next append writes the complete rows back, then the new one.
    results.append(out, [{"run": "/r/3", "task": "evaluate", "checkpoint": "last",
                          "split": "test", "acc": 0.75}])
  assert len(record) == 1
  assert out.read_bytes().startswith(whole) and out.read_bytes().endswith(b"0.75\r\n")
  assert list(results.read(out)["acc"]) == [0.0, 0.25, 0.5, 0.75]


def test_a_damaged_row_before_the_last_is_an_error_and_the_csv_is_left_alone(tmp_path):
  out = tmp_path / "r.csv"
  for i in range(3):
    results.append(out, [{"run": f"/r/{i}", "task": "evaluate", "checkpoint": "last",
                          "split": "test", "acc": i / 4}])
  lines = out.read_bytes().split(b"\r\n")
  lines[2] = lines[2][:10]
  out.write_bytes(b"\r\n".join(lines))
  before = out.read_bytes()
  with pytest.raises(ValueError, match=f"{out}: line 3 has 2 fields, the header 10"):
    results.append(out, [{"run": "/r/9", "task": "evaluate", "checkpoint": "last",
                          "split": "test"}])
  assert out.read_bytes() == before


def test_a_cut_header_is_an_empty_csv(tmp_path):
  out = tmp_path / "r.csv"
  out.write_bytes(b"run,task,chec")
  with pytest.warns(results.DamagedResults, match=f"{out}: last line is cut off .* no complete"):
    assert results.existing_keys(out) == set()
    results.append(out, [{"run": "/r/0", "task": "evaluate", "checkpoint": "last",
                          "split": "test", "acc": 0.5}])
  assert list(results.read(out)["acc"]) == [0.5]


@pytest.fixture(scope="module")
def left_out(made, tmp_path_factory):
  """A --runs tree with a run of each kind that collect leaves out, a symlinked run
  and a symlink cycle, collected once from the command line."""
  tmp = tmp_path_factory.mktemp("left_out")
  root = tmp / "runs"
  _copy_run(made / "sweep" / "none-s0", root / "ok")
  diverged = _copy_run(made / "sweep" / "none-s1", root / "diverged")
  summary = json.loads((diverged / "summary.json").read_text())
  (diverged / "summary.json").write_text(json.dumps({**summary, "status": "diverged"}))
  no_ckpt = _copy_run(made / "sweep" / "reweighted-s0", root / "no-ckpt")
  shutil.rmtree(no_ckpt / "checkpoints")
  _copy_run(made / "short" / "reweighted-s0", root / "one-epoch")
  _copy_run(made / "gauss" / "linear", root / "gauss")
  real = _copy_run(made / "sweep" / "reweighted-s1", tmp / "elsewhere" / "real")
  (root / "linked").symlink_to(real, target_is_directory=True)
  (root / "nested").mkdir()
  (root / "nested" / "up").symlink_to(root, target_is_directory=True)  # A cycle.
  out = tmp / "results.csv"
  p = _cli("collect", "--runs", root, "--out", out, "--task", "evaluate", "--min-epochs", "2",
           "--where", "data.name=digits")
  return root, real, out, p


def test_collect_says_how_many_runs_it_left_out_and_why(left_out):
  root, real, out, p = left_out
  assert p.returncode == 0, p.stderr
  (summary,) = _lines(p.stdout, "collected")
  assert summary.startswith("polyjax.analysis: collected 2 runs (2 rows added, "
                            "0 already present); left out 4: ")
  for reason in ("1 diverged", "1 with fewer than 2 epochs", "1 not matching --where",
                 "1 without a checkpoint"):
    assert reason in summary, summary
  assert summary.endswith(f"; {out}")
  assert len(_lines(p.stderr, str(root / "no-ckpt"), "no checkpoint")) == 1
  assert sorted(results.read(out)["run"]) == sorted([str(root / "ok"), str(real)])


def test_collect_follows_symlinked_runs_and_says_so_once_and_never_loops(left_out):
  root, real, out, p = left_out
  (linked,) = _lines(p.stderr, str(root / "linked"))
  assert linked.startswith("polyjax.analysis: warning: ") and "followed" in linked
  assert str(real) in linked
  (cycle,) = _lines(p.stderr, str(root / "nested" / "up"))
  assert "not followed" in cycle and str(root) in cycle
  assert (root / "ok").resolve() == root / "ok"  # Rows name runs by their real paths.
  assert str(real) in set(results.read(out)["run"])


def test_orbax_restore_warnings_do_not_reach_the_terminal(left_out):
  _, _, _, p = left_out
  for noise in ("absl", "orbax", "read only", "did not provide metrics"):
    assert noise not in p.stderr, p.stderr


# ---------------------------------------------------------------------------
# Tables over distinct seeds, captions, plots and a sweep's members, from hand-built
# run directories and results.

def _result(run, rule, value, **fields):
  task, checkpoint = rule.split(":")
  return {"run": str(run), "task": task, "checkpoint": checkpoint, "split": "test",
          "run_id": pathlib.Path(run).name, "epoch": 3, "selected_by": "",
          "data.name": "digits", "loss.alpha": 1.0, "weighting.mode": "none",
          "weighting.exponent": 1.0, "reweighted_acc": value, **fields}


def _summary_at(run, status, epochs, mtime):
  run.mkdir(parents=True, exist_ok=True)
  (run / "summary.json").write_text(json.dumps({"status": status, "epochs_completed": epochs}))
  os.utime(run / "summary.json", (mtime, mtime))


@pytest.fixture
def duplicated(tmp_path):
  """A results CSV where ce runs seeds 0, 1, 2 six times and poly seeds 0, 1 once each.

  Seed 0 twice, completed with 3 epochs both (the later summary.json wins; it has no
  logged:best row, so that rule keeps the other); seed 1 with 3 epochs and with 1; seed
  2 completed and diverged (more epochs, still left out). The second seed-0 run has
  loss.alpha=2.0, which ce does not read: the same setting.
  """
  r = tmp_path / "runs"
  ce = [  # run, seed, status, epochs, summary.json time, logged:last, logged:best
      ("ce-s0", 0, "completed", 3, 1000, 0.80, 0.85),
      ("ce-s0-again", 0, "completed", 3, 2000, 0.90, None),
      ("ce-s1", 1, "completed", 3, 1000, 0.70, 0.75),
      ("ce-s1-short", 1, "completed", 1, 3000, 0.10, 0.15),
      ("ce-s2", 2, "completed", 3, 1000, 0.60, 0.65),
      ("ce-s2-diverged", 2, "diverged", 5, 3000, 0.20, 0.25)]
  rows = []
  for name, seed, status, epochs, mtime, last, best in ce:
    _summary_at(r / name, status, epochs, mtime)
    common = dict(seed=seed, status=status, epochs_completed=epochs, **{"loss.name": "ce"},
                  **({"loss.alpha": 2.0} if name == "ce-s0-again" else {}))
    rows.append(_result(r / name, "logged:last", last, **common))
    if best is not None:
      rows.append(_result(r / name, "logged:best_val_reweighted_acc", best, **common))
  for seed, last, best in ((0, 0.95, 0.96), (1, 0.85, 0.86)):
    common = dict(seed=seed, status="completed", epochs_completed=3, **{"loss.name": "poly"})
    rows.append(_result(r / f"poly-s{seed}", "logged:last", last, **common))
    rows.append(_result(r / f"poly-s{seed}", "logged:best_val_reweighted_acc", best, **common))
  out = tmp_path / "results.csv"
  results.append(out, rows)
  return out, r


def test_report_counts_each_seed_once_and_says_which_run_it_kept(duplicated):
  out, r = duplicated
  df = results.read(out)
  with pytest.warns(report.DuplicateSeeds) as record:
    summary = report.summarize(df)
  got = summary.set_index(["loss.name", "rule"])
  # By hand: ce keeps 0.90 (seed 0, the later run), 0.70 (3 epochs), 0.60 (completed).
  last = got.loc[("ce", "logged:last")]
  assert last["n"] == 3 and last["mean"] == pytest.approx((0.90 + 0.70 + 0.60) / 3)
  assert last["std"] == pytest.approx(math.sqrt((0.5 ** 2 + 0.1 ** 2 + 0.4 ** 2) / 2) / 3)
  # The later seed-0 run has no logged:best row: the other seed-0 run's counts there.
  best = got.loc[("ce", "logged:best_val_reweighted_acc")]
  assert (best["n"], best["mean"], best["std"]) == (3, pytest.approx(0.75), pytest.approx(0.1))
  poly = got.loc[("poly", "logged:last")]
  assert (poly["n"], poly["mean"], poly["std"]) == (2, pytest.approx(0.9),
                                                    pytest.approx(0.1 / math.sqrt(2)))
  assert len(summary) == 4  # ce's two loss.alpha values are one setting.
  (warning,) = [str(w.message) for w in record]  # One per setting; poly has none.
  assert "\n" not in warning and warning.startswith("loss.name=ce: 3 seeds have several runs")
  for seed, kept, left in ((0, "ce-s0-again", "ce-s0"), (1, "ce-s1", "ce-s1-short"),
                           (2, "ce-s2", "ce-s2-diverged")):
    assert f"seed={seed} kept {r / kept} (completed, 3 epochs), left out {r / left} (" in warning
  assert "(completed, 1 epoch)" in warning and "(diverged, 5 epochs)" in warning
  assert "(n=3)" in report.format_summary(summary, "markdown")

  # The paired test pairs each seed once: seeds 0 and 1, from the same runs.
  test = report.paired(df, "loss.name", "ce", "poly", warn=False).set_index("rule")
  assert test.loc["logged:last", "n_pairs"] == 2
  assert test.loc["logged:last", "mean_diff"] == pytest.approx(((0.95 - 0.90) + (0.85 - 0.70)) / 2)
  assert test.loc["logged:best_val_reweighted_acc", "mean_diff"] == pytest.approx(
      ((0.96 - 0.85) + (0.86 - 0.75)) / 2)

  # From the command line: one warning line for the setting, and n = distinct seeds.
  p = _cli("report", "--results", out, "--compare", "loss.name=ce,poly")
  assert p.returncode == 0, p.stderr
  assert _lines(p.stderr, "warning") == [f"polyjax.analysis: warning: {warning}"]
  assert "0.7333 ± 0.1528 (n=3)" in p.stdout and "(n=6)" not in p.stdout


def _table_rows(text):
  return [line for line in text.splitlines() if line.startswith("| ")][1:]


def test_only_settings_with_runs_get_a_row():
  rows = [_result(f"/r/{d}-{loss}-{s}", "evaluate:last", 0.5 + s / 10, seed=s,
                  **{"data.name": d, "loss.name": loss, "lr": lr})
          for d, loss, lr in (("digits", "ce", 0.1), ("digits", "poly", 0.01),
                              ("gaussians", "ce", 0.1))
          for s in (0, 1)]
  df = pd.DataFrame(rows)
  for by in (["data.name", "loss.name"], None):
    text = report.format_summary(report.summarize(df, by=by), "markdown")
    lines = _table_rows(text)
    assert [line.split(" | ")[:2] for line in lines] == [
        ["| digits", "ce"], ["| digits", "poly"], ["| gaussians", "ce"]], text
    assert all("(n=2)" in line for line in lines)
  latex = report.format_summary(report.summarize(df), "latex")
  assert latex.count(r"(n=2) \\") == 3


def test_losses_and_weighting_modes_read_the_fields_the_report_says():
  import inspect

  from polyjax import losses, weighting

  for name, builder in losses.LOSSES.items():
    read = {f"loss.{p}" for p in inspect.signature(builder).parameters
            if p not in ("class_counts", "group_counts", "_name", "_")}
    assert read == set(report.LOSS_PARAMS[name]), name
  assert set(report.LOSS_PARAMS) == set(losses.LOSSES)
  assert set(report.WEIGHTING_PARAMS) == set(weighting.WEIGHTING_MODES)
  fields = set(config_lib.flatten(config_lib.base_config()))
  assert report.params("loss.name") == {f for f in fields if f.startswith("loss.")} - {
      "loss.name"}
  assert report.params("weighting.mode") <= fields


def _caption(df, **kw):
  return report.format_summary(report.summarize(df, **kw), "markdown").split("\n\n")[0]


def test_captions_name_only_the_parameters_a_rows_loss_reads():
  ce = [_result(f"/r/ce{s}", "evaluate:last", 0.8, seed=s, **{"loss.name": "ce"})
        for s in (0, 1)]
  poly = [_result(f"/r/poly{a}-{s}", "evaluate:last", 0.9, seed=s,
                  **{"loss.name": "poly", "loss.alpha": a, "loss.beta": 1.0,
                     "loss.kind": "logit", "loss.tau": 1.0})
          for a in (1.0, 2.0) for s in (0, 1)]
  only_ce = _caption(pd.DataFrame(ce))
  assert only_ce.endswith("All rows: data.name=digits, weighting.mode=none, loss.name=ce.")
  assert "loss.alpha" not in only_ce and "weighting.exponent" not in only_ce
  one_alpha = _caption(pd.DataFrame(ce + poly[:2]))
  assert one_alpha.endswith("All rows: data.name=digits, weighting.mode=none; loss.name=poly "
                            "rows: loss.alpha=1.0, loss.beta=1.0, loss.kind=logit.")
  assert "loss.tau" not in one_alpha
  # A varying parameter is a column, blank ('-') where the row's loss does not read it.
  text = report.format_summary(report.summarize(pd.DataFrame(ce + poly)), "markdown")
  assert [line.split(" | ")[:2] for line in _table_rows(text)] == [
      ["| 1.0", "poly"], ["| 2.0", "poly"], ["| -", "ce"]]
  reweighted = [{**r, "weighting.mode": "reweighted", "weighting.exponent": 2.0} for r in ce]
  mixed = _caption(pd.DataFrame(ce + reweighted), by=["weighting.mode", "weighting.exponent"])
  assert mixed.endswith("weighting.mode=reweighted rows: weighting.exponent=2.0.")


def _ranged_results(values):
  """Two methods, two seeds each, one rule: values {loss.name: [seed 0, seed 1]}."""
  return pd.DataFrame([
      _result(f"/r/{loss}{s}", "logged:best_val_reweighted_acc", v, seed=s,
              **{"loss.name": loss})
      for loss, vs in values.items() for s, v in enumerate(vs)])


def test_plot_y_axis_fits_the_data_and_says_what_it_shows(tmp_path):
  import matplotlib.pyplot as plt

  df = _ranged_results({"ce": [0.88, 0.90], "poly": [0.93, 0.95]})
  fig = plots.figure(df)
  try:
    (ax,) = fig.axes
    # Means 0.89 and 0.94, std 0.01 * sqrt(2): the range is mean - std to mean + std.
    lo, hi = 0.89 - 0.01 * math.sqrt(2), 0.94 + 0.01 * math.sqrt(2)
    pad = plots.PAD * (hi - lo)
    assert ax.get_ylim() == pytest.approx((lo - pad, hi + pad))
    assert ax.get_ylabel() == ("test reweighted accuracy\n"
                               "(early-stopped on val/reweighted_acc, logged)")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ce", "poly"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "early-stopped on val/reweighted_acc, logged", "runs, one per seed"]
  finally:
    plt.close(fig)
  assert plots.ylim([0.5, math.nan]) == pytest.approx((0.475, 0.525))  # PAD of 0.5.
  assert plots.ylim([0.1]) == pytest.approx((0.09, 0.11))  # At least 0.01.
  assert plots.rule_label("evaluate:best", ["best val/worst_group_acc"]) == (
      "early-stopped on val/worst_group_acc, recomputed from the checkpoint")
  assert plots.rule_label("logged:last") == "last epoch, logged"


def test_plot_legend_lies_inside_the_saved_image(tmp_path):
  import matplotlib.pyplot as plt
  from PIL import Image

  rows = _ranged_results({"ce": [0.88, 0.90], "poly": [0.93, 0.95]})
  rows = pd.concat([rows, rows.assign(task="logged", checkpoint="last"),
                    rows.assign(task="evaluate", checkpoint="last")])
  rows = pd.concat([rows, rows.assign(**{"data.name": "gaussians"})], ignore_index=True)
  fig = plots.figure(rows)
  try:
    path = tmp_path / "fig.png"
    fig.savefig(path, dpi=plots.DPI, bbox_inches="tight")  # As `plot` saves it.
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer).transformed(fig.transFigure.inverted())
    assert 0 <= box.x0 < box.x1 <= 1 and 0 <= box.y0 < box.y1 <= 1  # Inside the figure.
    # The saved image is the tight box around every artist, padded.
    pad = plt.rcParams["savefig.pad_inches"]
    tight = fig.get_tightbbox(renderer).padded(pad)
    legend_in = legend.get_window_extent(renderer).transformed(fig.dpi_scale_trans.inverted())
    assert tight.x0 <= legend_in.x0 and legend_in.x1 <= tight.x1
    assert tight.y0 <= legend_in.y0 and legend_in.y1 <= tight.y1
    with Image.open(path) as im:
      assert im.size == pytest.approx((tight.width * plots.DPI, tight.height * plots.DPI),
                                      abs=2)
    assert [ax.get_title() for ax in fig.axes] == ["digits", "gaussians"]
    assert fig.axes[0].get_ylabel() == "test reweighted accuracy"  # Rules: in the legend.
  finally:
    plt.close(fig)
  assert plots.plot(rows, tmp_path / "cli.png", by=["loss.name"]).exists()


def _member_dir(root, name, val, test, *, status="completed", summary=True):
  run = root / name
  run.mkdir(parents=True)
  (run / "config.json").write_text(json.dumps({"seed": 0}))
  if summary:
    (run / "summary.json").write_text(json.dumps({"status": status,
                                                  "epochs_completed": len(val)}))
  with open(run / "metrics.jsonl", "w") as f:
    for epoch, (v, t) in enumerate(zip(val, test), 1):
      f.write(json.dumps({"epoch": epoch, "step": 10 * epoch, "split": "val",
                          "reweighted_acc": v}) + "\n")
      f.write(json.dumps({"epoch": epoch, "step": 10 * epoch, "split": "test",
                          "reweighted_acc": t}) + "\n")


def test_members_table_lists_a_sweeps_members_best_first(tmp_path):
  from polyjax.analysis import members_table

  sweep = tmp_path / "sweep"
  _member_dir(sweep, "lr=0.1", [0.80, 0.90], [0.70, 0.75])
  _member_dir(sweep, "lr=0.3", [0.95, 0.93], [0.80, 0.82])
  _member_dir(sweep, "lr=0.01", [0.90, 0.90], [0.60, 0.65])  # A tie: the earlier epoch.
  _member_dir(sweep, "lr=3.0", [0.99, "nan"], [0.5, "nan"], status="diverged")
  _member_dir(sweep, "lr=1.0", [0.85], [0.84], summary=False)  # Still running.
  (sweep / "notes").mkdir()  # Not a run directory.
  text = members_table(sweep)
  title, header, *lines = text.splitlines()
  assert title == (f"{sweep}: 5 members, best first by val/reweighted_acc at each one's best "
                   "epoch (highest value; ties: the earliest epoch)")
  assert header.split() == ["member", "status", "epochs", "val/reweighted_acc", "final",
                            "val/reweighted_acc", "best", "best", "epoch",
                            "test/reweighted_acc", "at", "best", "epoch"]
  assert [line.split() for line in lines] == [
      ["lr=0.3", "completed", "2", "0.9300", "0.9500", "1", "0.8000"],
      ["lr=0.01", "completed", "2", "0.9000", "0.9000", "1", "0.6000"],
      ["lr=0.1", "completed", "2", "0.9000", "0.9000", "2", "0.7500"],
      ["lr=1.0", "no", "summary", "1", "0.8500", "0.8500", "1", "0.8400"],
      ["lr=3.0", "diverged", "2", "-", "0.9900", "1", "0.5000"]]
  lowest = members_table(sweep, metric="val/reweighted_acc", mode="min").splitlines()[2:]
  assert [line.split()[0] for line in lowest] == [
      "lr=0.1", "lr=1.0", "lr=0.01", "lr=0.3", "lr=3.0"]
  with pytest.raises(ValueError, match="expected '<split>/<metric>'"):
    members_table(sweep, metric="reweighted_acc")
  with pytest.raises(FileNotFoundError):
    members_table(tmp_path / "missing")


def test_members_table_of_a_real_sweep_matches_its_summaries_without_jax(made):
  script = ("import sys\nfrom polyjax.analysis import members_table\n"
            f"print(members_table({str(made / 'sweep')!r}))\n"
            "print('imported:', *(m for m in ('jax', 'pandas') if m in sys.modules))\n")
  p = subprocess.run([sys.executable, "-c", script], env=subprocess_env.env(),
                     capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stderr
  *table, imported = p.stdout.rstrip("\n").split("\n")
  assert imported == "imported:"  # Neither JAX nor pandas.
  best = []
  for line in table[2:]:
    name, status, epochs, _, val, epoch, test = line.split()
    summary = json.loads((made / "sweep" / name / "summary.json").read_text())
    assert (status, int(epochs), int(epoch)) == ("completed", 2, summary["best_epoch"])
    assert float(val) == pytest.approx(summary["best"]["val/reweighted_acc"], abs=5e-5)
    assert float(test) == pytest.approx(summary["best"]["test/reweighted_acc"], abs=5e-5)
    best.append(float(val))
  assert len(best) == 4 and best == sorted(best, reverse=True)
