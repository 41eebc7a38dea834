"""End-to-end runs: the run directory's files, and divergence."""

import json
import os
import subprocess
import sys

import jax
import pytest

from configs import digits_poly, gaussians_poly
from polyjax import checkpointing, experiment, placement, steps, train
from polyjax import config as config_lib
import subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLIT_KEYS = {"n", "loss", "weighted_loss", "acc", "reweighted_acc", "train_reweighted_acc",
              "worst_group_acc", "frac_predicted_pos", "class_0_acc", "class_1_acc",
              "class_0_precision", "class_1_precision", "class_0_recall", "class_1_recall",
              "group_0_acc", "group_1_acc"}


def test_two_epoch_run_writes_the_whole_run_directory(tmp_path):
  c = digits_poly.get_config()
  c.num_epochs = 2
  workdir = tmp_path / "run"
  summary = train.train_and_evaluate(c, str(workdir))

  config = json.loads((workdir / "config.json").read_text())
  assert config["lr"] == c.lr and config["loss"]["name"] == "poly"
  for key in ("seed", "workdir", "data_dir", "host", "versions", "device_count", "xla_flags"):
    assert key in config
  assert config["workdir"] == str(workdir) and config["device_count"] == 8
  assert {"jax", "flax", "optax"} <= set(config["versions"])

  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [(r["epoch"], r["split"]) for r in rows] == [
      (e, s) for e in (1, 2) for s in ("train", "val", "test")]
  for r in rows:
    assert SPLIT_KEYS <= set(r) and r["step"] == r["epoch"] * (len_train(c) // 64)
  assert "objective" in rows[0]
  assert rows[-1]["n"] == 300  # the whole balanced test split, no example dropped

  on_disk = json.loads((workdir / "summary.json").read_text())
  assert on_disk["status"] == "completed" and on_disk["epochs_completed"] == 2
  assert on_disk["final"]["test/reweighted_acc"] == rows[-1]["reweighted_acc"]
  assert {f"{s}/{k}" for s in ("train", "val", "test") for k in SPLIT_KEYS} <= set(on_disk["final"])
  assert summary["final"] == on_disk["final"]

  ckpt = checkpointing.Checkpoints(workdir / "checkpoints", every_epochs=2)
  assert ckpt.latest_epoch() == 2
  ckpt.close()


def len_train(c):
  from polyjax import data
  return len(data.load("digits", weighting_mode="none", exponent=1.0, seed=c.data.seed).train)


def test_same_seed_same_result(tmp_path):
  c = digits_poly.get_config()
  c.num_epochs = 2
  a = train.train_and_evaluate(c, str(tmp_path / "a"))["final"]
  b = train.train_and_evaluate(c, str(tmp_path / "b"))["final"]
  assert a == b
  c.seed = 1
  assert train.train_and_evaluate(c, str(tmp_path / "c"))["final"] != a


def test_gaussians_full_batch_learns_the_true_boundary(tmp_path):
  c = gaussians_poly.get_config()
  c.num_epochs, c.eval_every_epochs = 300, 300
  # Full batch (220) does not divide over 8 devices; one device, as on a laptop.
  summary = train.train_and_evaluate(c, str(tmp_path / "g"),
                                     mesh=placement.make_mesh(jax.devices()[:1]))
  assert summary["final"]["test/reweighted_acc"] > 0.9


def test_nan_run_is_recorded_as_diverged(tmp_path):
  workdir = tmp_path / "nan"
  env = subprocess_env.env(XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.run(
      [sys.executable, "-m", "polyjax.main", "--config=configs/digits_poly.py",
       f"--workdir={workdir}", "--config.lr=1e30", "--config.loss.name=ce",
       "--config.num_epochs=3"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  assert "diverged" in proc.stderr and "epoch 1, step 2" in proc.stderr
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "diverged"
  assert summary["diverged_at"] == {"epoch": 1, "step": 2}
  assert summary["epochs_completed"] == 0
  assert not any(p.name.isdigit() for p in (workdir / "checkpoints").iterdir())


def test_calls_end_at_every_epoch_the_host_acts_on():
  c = gaussians_poly.get_config()
  c.num_epochs, c.eval_every_epochs, c.checkpoint_every_epochs = 12, 5, 3

  def ends(steps_per_epoch, start=0):
    out, e = [], start
    while e < c.num_epochs:
      e = train.call_end(c, e, steps_per_epoch)
      out.append(e)
    return out

  assert ends(1) == [3, 5, 6, 9, 10, 12]
  assert ends(1, start=7) == [9, 10, 12]  # A resume at any epoch keeps the same stops.
  assert ends(train.FUSED_STEPS // 2) == [2, 3, 5, 6, 8, 9, 10, 12]  # At most 2 per call.
  assert ends(train.FUSED_STEPS) == list(range(1, 13))


def test_fused_epochs_equal_one_call_per_epoch(tmp_path, monkeypatch):
  """Epochs fused into one call train, diverge and record exactly as one call each."""
  c = gaussians_poly.get_config()
  c.num_epochs, c.eval_every_epochs, c.checkpoint_every_epochs = 40, 20, 40
  mesh = placement.make_mesh(jax.devices()[:1])
  fused = train.train_and_evaluate(c, str(tmp_path / "fused"), mesh=mesh)
  monkeypatch.setattr(train, "FUSED_STEPS", 1)
  single = train.train_and_evaluate(c, str(tmp_path / "single"), mesh=mesh)
  for k, v in single["final"].items():
    assert abs(fused["final"][k] - v) <= 1e-6, k
  # A huge lr: the first update overflows. One call per epoch finds the Inf state
  # after epoch 1; a fused call (epochs 1-20) finds step 2's objective, and names it.
  c.lr = 1e38
  with pytest.raises(train.Diverged):
    train.train_and_evaluate(c, str(tmp_path / "nan_single"), mesh=mesh)
  monkeypatch.setattr(train, "FUSED_STEPS", 512)
  with pytest.raises(train.Diverged, match="at epoch 2, step 2"):
    train.train_and_evaluate(c, str(tmp_path / "nan_fused"), mesh=mesh)
  read = lambda d: json.loads((tmp_path / d / "summary.json").read_text())  # noqa: E731
  assert read("nan_single")["diverged_at"] == {"epoch": 1, "step": 1}
  assert read("nan_fused")["diverged_at"] == {"epoch": 2, "step": 2}


def test_best_metric_is_checked_by_name_before_any_work():
  from polyjax import data
  c = digits_poly.get_config()
  ds = data.load("digits", weighting_mode="reweighted", exponent=1.0)
  c.best_metric = "val/class_1_recall"
  experiment.check_best_metric(c, ds)
  c.best_metric = "val/class_7_recall"  # Digits is binary: no class 7.
  with pytest.raises(config_lib.ConfigError, match=r"config.best_metric='val/class_7_recall'"):
    experiment.check_best_metric(c, ds)


def test_the_best_state_is_tested_by_the_epochs_evaluation_program(tmp_path, monkeypatch):
  """The held best (host arrays) is placed like the run's state, so testing it at the
  end reuses the compiled evaluation instead of compiling it again."""
  compiles = []

  def listener(event, _, **kwargs):
    if event.endswith("backend_compile_duration"):
      compiles.append(event)

  per_call = []
  evaluate = experiment.evaluate

  def counted(*args, **kwargs):
    before = len(compiles)
    out = evaluate(*args, **kwargs)
    per_call.append(len(compiles) - before)
    return out

  monkeypatch.setattr(experiment, "evaluate", counted)
  c = digits_poly.get_config()
  c.num_epochs = c.checkpoint_every_epochs = 8  # The best is held in memory, then written.
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    summary = train.train_and_evaluate(c, str(tmp_path / "run"))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert summary["best_epoch"] < summary["epochs_completed"] == 8
  assert summary["best"]["test/n"] == 300
  assert len(per_call) == 9 and per_call[0] >= 1  # 8 epochs, then the best state.
  assert per_call[1:] == [0] * 8


@pytest.mark.parametrize("flag, expected", [([], "--xla_gpu_deterministic_ops=true"),
                                            (["--config.deterministic=false"], "")])
def test_main_sets_deterministic_gpu_programs_before_jax_starts(tmp_path, flag, expected):
  # The run itself is replaced by a print of the XLA_FLAGS it would start JAX with.
  script = (
      "import os, sys\n"
      "from polyjax import main, placement, train\n"
      "def run(config, workdir, **_):\n"
      "  print('FLAGS', os.environ.get('XLA_FLAGS', ''))\n"
      "  raise SystemExit(0)\n"
      "train.train_and_evaluate = run\n"
      "main.run()\n")
  env = subprocess_env.env(XLA_FLAGS="")
  out = subprocess.run(
      [sys.executable, "-c", script, "--config=configs/digits_poly.py",
       f"--workdir={tmp_path / 'run'}", *flag],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=True)
  line, = [l for l in out.stdout.splitlines() if l.startswith("FLAGS")]
  assert line.strip() == f"FLAGS {expected}".strip()


def _epoch_args(exp, config, epochs=1):
  data = placement.to_global(steps.split_arrays(exp.dataset.train), exp.shardings.replicated)
  idx = steps.epochs_indices(len(exp.dataset.train), config.batch_size, seed=0,
                             epochs=range(1, epochs + 1))
  return exp.state, data, placement.to_global(idx, exp.shardings.stacked_batches)


def test_matmul_precision_reaches_every_product_of_the_programs():
  """config.matmul_precision sets the precision of the training and evaluation
  programs' products (XLA:GPU would otherwise use TF32 for them); the CPU computes
  float32 either way, so the objectives are equal."""
  objectives = {}
  for precision in ("default", "float32"):
    c = digits_poly.get_config()
    c.matmul_precision = precision
    exp = experiment.build(c, mesh=placement.make_mesh(jax.devices()[:1]))
    args = _epoch_args(exp, c)
    texts = [exp.train_epoch.lower(*args).as_text(),
             exp.eval_counts.lower(exp.state, experiment.eval_data(exp, c)).as_text()]
    for text in texts:
      dots = [l for l in text.splitlines() if "stablehlo.dot_general" in l]
      assert dots
      highest = [l for l in dots if "precision = [HIGHEST, HIGHEST]" in l]
      assert highest == (dots if precision == "float32" else []), precision
    objectives[precision] = jax.device_get(exp.train_epoch(*args)[1])
  assert (objectives["default"] == objectives["float32"]).all()
