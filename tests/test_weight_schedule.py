"""Focal loss, class-balanced weights, DRW and annealed importance weights
(docs/losses.md): against NumPy/float64 transcriptions of the peer code's formulas,
at the edges; inside the compiled step, a stacked sweep and a resumed run."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyjax import config as config_lib, grid, lifecycle, losses, run_dir, steps, sweep, train
from polyjax import weight_schedule, weighting

COUNTS = np.array([5000, 500, 120, 1, 0])


def np_effective_number(counts, beta):
  # LDAM-DRW's cifar_train.py: (1 - beta) / (1 - beta^n), scaled to sum to the count
  # of classes (here: of groups present), in float64 with plain powers.
  counts = np.asarray(counts, np.float64)
  present = counts > 0
  w = np.zeros_like(counts)
  w[present] = (1.0 - beta) / (1.0 - np.power(beta, counts[present]))
  return w / w.sum() * present.sum()


@pytest.mark.parametrize("beta", [0.5, 0.9, 0.999, 0.9999, 0.999999])
def test_effective_number_weights_match_the_reference(beta):
  got = weighting.effective_number_weights(COUNTS, beta=beta)
  # (1 - beta) and (1 - beta^n) cancel ~|log10(1 - beta)| digits in the reference.
  np.testing.assert_allclose(got, np_effective_number(COUNTS, beta),
                             rtol=1e-16 / (1 - beta) * 10)
  assert got[-1] == 0 and got.sum() == pytest.approx(4)
  assert np.all(np.diff(got[:4]) >= 0)  # Rarer groups weigh no less ...
  assert got[3] > got[0]  # ... and a group of one more than one of 5000.
  # Equal counts: weights 1 (LDAM-DRW's beta = 0 before DRW gives the same).
  np.testing.assert_allclose(weighting.effective_number_weights([7, 7, 7], beta=beta), 1.0)
  np.testing.assert_allclose(
      weighting.group_weights(COUNTS, mode="reweighted", cb_beta=beta), got, rtol=1e-6)


def np_paper_anneal_weights(w, t, T, name, c=10.0):
  # The paper's `undersampling_schedule`: w scaled to max 1, keep probability g(w, t),
  # the kept examples reweighted by w / g(w, t).
  w = np.asarray(w, np.float64) / np.max(w)
  sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
  g = {"linear": lambda: w ** (1 - t / T),
       "sigmoid": lambda: w ** sig(-c * (t / T - 0.5)),
       "step": lambda: np.ones_like(w) if t > T // 2 else w}[name]()
  return w / g


@pytest.mark.parametrize("name", ["linear", "sigmoid", "step"])
def test_anneal_fraction_is_the_exponent_of_the_paper_schedules_weights(name):
  T = 9
  w = np.array([1.0, 0.2, 0.01])
  for t in range(T + 1):
    s = weight_schedule.anneal_fraction(name, t, T)
    ref = np_paper_anneal_weights(w, t, T, name)
    np.testing.assert_allclose((w / w.max()) ** s, ref, rtol=1e-12)
    js = weight_schedule.anneal_fraction(name, jnp.float32(t), T)
    assert float(js) == pytest.approx(float(s), rel=1e-6)
  assert weight_schedule.anneal_fraction(name, 0, T) <= 0.01  # Starts at (about) 0 ...
  assert weight_schedule.anneal_fraction(name, T, T) >= 0.99  # ... and ends at 1.


@pytest.mark.parametrize("exponent", [0.0, 1.0, 3.0, 40.0])
def test_annealed_group_weights_are_importance_weights_of_the_scaled_exponent(exponent):
  counts = COUNTS
  for s in (0.0, 0.25, 1.0):
    ref = weighting.importance_weights(counts, exponent=exponent * s)
    got = weight_schedule.annealed_group_weights(jnp.asarray(counts, jnp.float32),
                                                 exponent=exponent, fraction=jnp.float32(s))
    # float32 logs and exps of at most exponent * log(5000) ~ 340: relative error
    # ~ that times eps32.
    tol = 4 * np.finfo(np.float32).eps * max(1.0, exponent * s * np.log(counts.max()))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=tol, atol=1e-30)
    np.testing.assert_allclose(weight_schedule.annealed_group_weights(
        counts, exponent=exponent, fraction=s), ref, rtol=1e-12)


def test_weight_fns_switch_and_anneal_with_the_step():
  spe, T = 3, 4
  assert weight_schedule.make_weight_fn(steps_per_epoch=spe, num_epochs=T) is None
  drw = jax.jit(weight_schedule.make_weight_fn(drw_epoch=2, steps_per_epoch=spe, num_epochs=T))
  w_B, g_B = jnp.asarray([0.5, 5.0]), jnp.asarray([0, 1])
  for step in range(T * spe):
    got = np.asarray(drw(w_B, g_B, jnp.int32(step)))
    np.testing.assert_array_equal(got, [0.5, 5.0] if step >= 2 * spe else [1.0, 1.0])
  counts = np.array([600, 60])
  ann = jax.jit(weight_schedule.make_weight_fn(anneal="linear", steps_per_epoch=spe,
                                               num_epochs=T, train_group_counts=counts,
                                               exponent=2.0))
  for step in range(T * spe):
    ref = weighting.importance_weights(counts, exponent=2.0 * (step // spe) / T)
    np.testing.assert_allclose(np.asarray(ann(w_B, g_B, jnp.int32(step))), ref, rtol=1e-5)


LOGITS = [[0.0, 0.0], [3.0, -2.0], [-40.0, 40.0], [200.0, -200.0], [1e4, -1e4],
          [-1e4, 1e4], [0.3, 0.1]]


def np_focal(logits, labels, gamma):
  z = np.asarray(logits, np.float64)
  log_p = z - np.logaddexp.reduce(z, axis=1, keepdims=True)
  log_py = log_p[np.arange(len(z)), labels]
  return (1 - np.exp(log_py)) ** gamma * -log_py


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
def test_focal_matches_numpy_and_has_finite_gradients(gamma):
  logits, labels = jnp.asarray(LOGITS, jnp.float32), jnp.zeros(len(LOGITS), jnp.int32)
  loss_fn = losses.get_loss("focal", focal_gamma=gamma)
  got = np.asarray(loss_fn(logits, labels, labels))
  ref = np_focal(LOGITS, np.zeros(len(LOGITS), int), gamma)
  # float32 CE is exact to ~eps32 relative, or ~eps32 absolute near 0 (log of a sum
  # near 1); the factor's power multiplies the relative error by at most 1 + gamma.
  eps = np.finfo(np.float32).eps
  np.testing.assert_allclose(got, ref, rtol=4 * (1 + gamma) * eps, atol=4 * eps)
  if gamma == 0:
    np.testing.assert_array_equal(got, np.asarray(losses.cross_entropy(logits, labels)))
  grads = jax.grad(lambda z: jnp.sum(loss_fn(z, labels, labels)))(logits)
  assert np.all(np.isfinite(np.asarray(grads)))
  assert np.all(np.asarray(grads)[:, 0] <= 0)  # Raising the label's logit never hurts.


@pytest.mark.parametrize("override, match", [
    ({"loss.focal_gamma": -1.0}, "loss.focal_gamma"),
    ({"loss.focal_gamma": math.inf}, "loss.focal_gamma"),
    ({"weighting.cb_beta": 1.0}, "weighting.cb_beta"),
    ({"weighting.cb_beta": 0.0}, "weighting.cb_beta"),
    ({"weighting.cb_beta": 0.99, "weighting.exponent": 2.0}, "weighting.exponent"),
    ({"weighting.cb_beta": 0.99, "weighting.mode": "none"}, "weighting.cb_beta"),
    ({"weighting.drw_epoch": 20}, "weighting.drw_epoch"),
    ({"weighting.drw_epoch": -1}, "weighting.drw_epoch"),
    ({"weighting.drw_epoch": 2, "weighting.mode": "resampled"}, "weighting.drw_epoch"),
    ({"weighting.anneal": "cosine"}, "weighting.anneal"),
    ({"weighting.anneal": "linear", "weighting.mode": "dro"}, "weighting.anneal"),
    ({"weighting.anneal": "linear", "weighting.drw_epoch": 3}, "weighting.anneal"),
    ({"weighting.anneal": "step", "weighting.cb_beta": 0.9}, "weighting.anneal"),
    ({"weighting.anneal_sigmoid_c": 0.0}, "weighting.anneal_sigmoid_c"),
    ({"weighting.resample_once": True}, "weighting.resample_once"),
])
def test_bad_values_are_one_line_naming_the_field(override, match):
  c = config_lib.base_config()
  for field, value in override.items():
    config_lib.set_field(c, field, value)
  with pytest.raises(config_lib.ConfigError, match=match) as e:
    config_lib.validate(c, device_count=1)
  assert "\n" not in str(e.value)


def test_annealed_runs_cannot_change_num_epochs_on_resume():
  old = config_lib.base_config()
  new = config_lib.base_config()
  new.num_epochs = 40
  assert config_lib.resume_changes(old.to_dict(), new.to_dict()) == []
  old.weighting.anneal = new.weighting.anneal = "sigmoid"
  assert config_lib.resume_changes(old.to_dict(), new.to_dict()) == ["num_epochs"]


def small_config(num_epochs=4, **changes):
  from configs import digits_poly
  c = digits_poly.get_config()
  c.model.hidden = 32
  c.num_epochs = num_epochs
  for field, value in changes.items():
    config_lib.set_field(c, field, value)
  return c


def metric_rows(path):
  return run_dir.RunDir(path).read_metrics()


def test_an_lr_sweep_is_one_program_per_method_and_equals_single_runs(tmp_path):
  methods = [{"weighting.anneal": ["linear"], "weighting.exponent": [2.0]},
             {"loss.name": ["focal"], "weighting.cb_beta": [0.9999], "weighting.drw_epoch": [1]},
             {"weighting.mode": ["resampled"], "weighting.resample_once": [True]}]
  members = grid.expand(small_config(num_epochs=3), [{**m, "lr": [0.02, 0.1]} for m in methods])
  assert [len(g) for g in grid.groups(members)] == [2, 2, 2]
  sweep.run_sweep(members, str(tmp_path / "stacked"))
  annealed = members[:2]  # Each in turn with its single run's program: bit for bit.
  sweep.run_sweep(annealed, str(tmp_path / "one_by_one"), member_batch=1)
  for name, cfg in members:
    train.train_and_evaluate(cfg, str(tmp_path / name))
    single = metric_rows(tmp_path / name)
    if (name, cfg) in annealed:
      assert metric_rows(tmp_path / "one_by_one" / name) == single
    for a, b in zip(metric_rows(tmp_path / "stacked" / name), single, strict=True):
      assert a.keys() == b.keys()
      for k, v in b.items():
        assert a[k] == pytest.approx(v, abs=1e-5), (name, b["epoch"], k)


def test_weights_switch_where_the_schedule_says(tmp_path):
  # DRW at epoch 2 trains epochs 0-1 exactly as unweighted ERM, then differs.
  drw = small_config(num_epochs=3, lr=0.1,
                     **{"weighting.cb_beta": 0.9999, "weighting.drw_epoch": 2})
  erm = small_config(num_epochs=3, lr=0.1, **{"weighting.mode": "none"})
  for name, cfg in (("drw", drw), ("erm", erm)):
    train.train_and_evaluate(cfg, str(tmp_path / name))
  a, b = metric_rows(tmp_path / "drw"), metric_rows(tmp_path / "erm")
  loss = lambda rows, e: [r["loss"] for r in rows if r["epoch"] == e]  # noqa: E731
  for e in (1, 2):
    assert loss(a, e) == loss(b, e)
  assert all(x != y for x, y in zip(loss(a, 3), loss(b, 3), strict=True))


def test_an_interrupted_annealed_run_resumes_to_the_uninterrupted_one(tmp_path, monkeypatch):
  cfg = small_config(**{"weighting.anneal": "sigmoid", "weighting.exponent": 2.0,
                        "checkpoint_every_epochs": 1})
  monkeypatch.setattr(train, "FUSED_STEPS", 1)  # One epoch per call.
  train.train_and_evaluate(cfg, str(tmp_path / "whole"))
  calls = {"n": 0}

  def stop_after_two_epochs(self):
    calls["n"] += 1
    return calls["n"] > 2  # The set-up's check, then after epochs 1 and 2.

  with monkeypatch.context() as m:
    m.setattr(lifecycle.StopSignals, "received_anywhere", stop_after_two_epochs)
    train.train_and_evaluate(cfg, str(tmp_path / "resumed"))
  assert run_dir.read_json(tmp_path / "resumed" / run_dir.SUMMARY)["status"] == "interrupted"
  train.train_and_evaluate(cfg, str(tmp_path / "resumed"))
  assert metric_rows(tmp_path / "resumed") == metric_rows(tmp_path / "whole")


def test_la_with_importance_weights_is_the_papers_class_weighted_logit_adjusted_loss():
  # The paper's LogitAdjustedLoss(weight=w, reduction='none'): w_y CE(f + tau log pi, y).
  rng = np.random.default_rng(0)
  counts = np.array([600, 60, 6])
  logits = rng.normal(scale=5.0, size=(32, 3))
  labels = rng.integers(0, 3, size=32)
  w_G = weighting.group_weights(counts, mode="reweighted", exponent=1.0)
  loss_B = losses.get_loss("la", tau=1.5, class_counts=counts)(
      jnp.asarray(logits, jnp.float32), jnp.asarray(labels), jnp.asarray(labels))
  got, _ = weighting.weighted_reduction(loss_B, jnp.asarray(w_G[labels]), None, None)
  z = logits + 1.5 * np.log(counts / counts.sum())
  ce = np.logaddexp.reduce(z, axis=1) - z[np.arange(32), labels]
  ref = np.mean(weighting.importance_weights(counts)[labels] * ce)
  assert float(got) == pytest.approx(ref, rel=1e-5)


def test_resampling_once_permutes_one_draw_every_epoch():
  counts = np.array([900, 100])
  groups = np.repeat(np.arange(2), counts)
  p = weighting.sampling_probs(groups, counts, mode="resampled", exponent=1.0)
  n = len(groups)
  once = [steps.epoch_indices(n, 50, seed=3, epoch=e, p=p, once=True) for e in range(4)]
  fresh = [steps.epoch_indices(n, 50, seed=3, epoch=e, p=p) for e in range(4)]
  # Batches of 50 divide n: every epoch is the whole draw, in a new order.
  drawn = np.sort(once[0].ravel())
  for e in range(1, 4):
    np.testing.assert_array_equal(np.sort(once[e].ravel()), drawn)
    assert not np.array_equal(once[e], once[0])
  assert not np.array_equal(np.sort(fresh[1].ravel()), np.sort(fresh[0].ravel()))
  # A pure function of (seed, epoch): a resumed run gets the same batches.
  np.testing.assert_array_equal(
      steps.epochs_indices(n, 50, seed=3, epochs=range(2, 4), p=p, once=True),
      np.concatenate(once[2:]))
  # The draw: n with replacement, P(i) = p_i; exponent 1 gives each group half of it,
  # within 4 binomial standard deviations.
  minority = np.sum(groups[drawn] == 1)
  assert abs(minority - n / 2) <= 4 * np.sqrt(n / 4)
  assert len(np.unique(drawn)) < n  # With replacement: repeats, and examples left out.
