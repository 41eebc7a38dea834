"""Learning-rate schedules: multipliers against closed forms, and SGD with momentum
under a schedule against a NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from polyjax import schedules, train_state


def _values(factor, steps):
  return np.array([float(factor(t)) for t in steps])


def test_constant_and_warmup():
  t = np.arange(0, 50)
  np.testing.assert_array_equal(
      _values(schedules.lr_factor("constant", steps_per_epoch=10, num_epochs=5), t), 1.0)
  warm = _values(schedules.lr_factor("constant", steps_per_epoch=10, num_epochs=5,
                                     warmup_epochs=2), t)
  np.testing.assert_allclose(warm, np.minimum(t / 20, 1.0), rtol=1e-6)


def test_cosine_matches_closed_form():
  spe, epochs, warm, final = 10, 6, 1, 0.1
  f = schedules.lr_factor("cosine", steps_per_epoch=spe, num_epochs=epochs,
                          warmup_epochs=warm, final_frac=final)
  t = np.arange(0, spe * epochs + 1)
  decay = spe * (epochs - warm)
  u = np.clip(t - spe * warm, 0, decay) / decay
  want = np.where(t < spe * warm, t / (spe * warm),
                  final + (1 - final) * 0.5 * (1 + np.cos(np.pi * u)))
  np.testing.assert_allclose(_values(f, t), want, rtol=1e-5, atol=1e-7)
  assert float(f(spe * epochs)) == pytest.approx(final)


def test_step_applies_after_the_named_epochs():
  f = schedules.lr_factor("step", steps_per_epoch=10, num_epochs=10, step_epochs=(3, 6),
                          step_factor=0.1)
  t = np.arange(0, 100)
  want = np.where(t < 30, 1.0, np.where(t < 60, 0.1, 0.01))
  np.testing.assert_allclose(_values(f, t), want, rtol=1e-6)
  g = schedules.lr_factor("step", steps_per_epoch=10, num_epochs=10, step_epochs=(3,),
                          step_factor=0.5, warmup_epochs=1)
  np.testing.assert_allclose(_values(g, [0, 5, 10, 29, 30]), [0, 0.5, 1, 1, 0.5], rtol=1e-6)


def test_unknown_schedule():
  with pytest.raises(ValueError, match="valid: constant, cosine, step"):
    schedules.lr_factor("linear", steps_per_epoch=1, num_epochs=1)


def test_sgd_momentum_under_a_schedule_matches_numpy():
  lr, momentum, wd = 0.3, 0.9, 0.01
  factor = schedules.lr_factor("cosine", steps_per_epoch=4, num_epochs=2, warmup_epochs=0.5)
  tx = train_state.make_optimizer(lr=lr, momentum=momentum, weight_decay=wd,
                                  lr_factor=factor)
  rng = np.random.default_rng(0)
  w = rng.normal(size=(3, 2)).astype(np.float32)
  params = {"w": jnp.asarray(w)}
  state = tx.init(params)
  w_ref, buf = w.astype(np.float64), np.zeros_like(w, np.float64)
  for t in range(8):
    g = rng.normal(size=w.shape).astype(np.float32)
    updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
    buf = momentum * buf + (g + wd * w_ref)
    w_ref = w_ref - lr * float(factor(t)) * buf
    np.testing.assert_allclose(np.asarray(params["w"]), w_ref, rtol=1e-5, atol=1e-6)
  # The base lr stays a plain number in the state, where sweeps can set it per model.
  assert float(state.hyperparams["learning_rate"]) == pytest.approx(lr)
  assert jax.tree.structure(state.hyperparams) == jax.tree.structure(
      train_state.make_optimizer(lr=lr, momentum=momentum, weight_decay=wd)
      .init(params).hyperparams)
