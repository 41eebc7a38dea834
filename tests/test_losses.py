"""Losses against an independent float64 NumPy reference, at the edges, with gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyjax import losses
from polyjax.config import base_config

SP1 = np.log1p(np.exp(-1.0))  # softplus(-1)


def np_softplus(x):
  return np.logaddexp(0.0, x)


def np_sigmoid(x):
  return 0.5 * (1 + np.tanh(0.5 * x))


def ref_poly(v, alpha, beta, kind):
  """docs/losses.md, written directly in float64; returns (loss, dloss/dv)."""
  v = np.asarray(v, np.float64)
  u = v - beta + 1
  with np.errstate(all="ignore"):
    if kind == "logit":
      head, dhead = np_softplus(-u) / SP1, -np_sigmoid(-u) / SP1
      tail, dtail = u ** -alpha, -alpha * u ** (-alpha - 1)
    elif kind == "exp":
      head, dhead = np.exp(1 - u), -np.exp(1 - u)
      tail, dtail = u ** -alpha, -alpha * u ** (-alpha - 1)
    else:
      head, dhead = -u + alpha / (alpha - 1), -np.ones_like(u)
      tail, dtail = u ** -alpha / (alpha - 1), -alpha * u ** (-alpha - 1) / (alpha - 1)
  right = v > beta
  return np.where(right, tail, head), np.where(right, dtail, dhead)


def ref_ce(logits, labels):
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -logp[np.arange(len(labels)), labels]


def binary_logits(v, labels):
  """Logits whose margin for `labels` is exactly v: f_y - f_other = v."""
  v = np.asarray(v, np.float32)
  s = 2 * labels - 1
  return np.stack([-s * v / 2, s * v / 2], axis=-1).astype(np.float32)


EDGE_MARGINS = [-1e4, -50.0, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 1.0 + 1e-4, 2.0, 37.0, 1e4]
CASES = [("logit", 1.0, 1.0), ("logit", 2.0, 1.0), ("logit", 0.5, 0.0), ("logit", 3.0, 2.5),
         ("exp", 1.0, 1.0), ("exp", 2.0, 0.5), ("linear", 2.0, 1.0), ("linear", 1.5, 3.0)]


@pytest.mark.parametrize("kind,alpha,beta", CASES)
def test_poly_matches_reference_at_edges(kind, alpha, beta):
  margins = np.array(EDGE_MARGINS + [beta, beta - 1e-3, beta + 1e-3], np.float32)
  if kind == "exp":  # exp(1 - u) overflows float32 below about u = -87.
    margins = margins[margins - beta > -80]
  labels = np.arange(len(margins)) % 2
  logits = binary_logits(margins, labels)
  v = np.asarray(losses.margin(jnp.asarray(logits), jnp.asarray(labels)))
  got = np.asarray(losses.poly_tailed(jnp.asarray(logits), jnp.asarray(labels),
                                      alpha=alpha, beta=beta, kind=kind))
  want, dwant = ref_poly(v.astype(np.float64), alpha, beta, kind)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)

  grad = jax.grad(lambda z: jnp.sum(losses.poly_tailed(
      z, jnp.asarray(labels), alpha=alpha, beta=beta, kind=kind)))(jnp.asarray(logits))
  grad = np.asarray(grad)
  assert np.all(np.isfinite(grad))
  # d loss / d f_y = dl/dv and d loss / d f_other = -dl/dv.
  s = 2 * labels - 1
  np.testing.assert_allclose(grad[:, 1] * s, dwant, rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(grad[:, 0] * s, -dwant, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("kind,alpha,beta", CASES)
def test_poly_is_continuous_at_switch_point(kind, alpha, beta):
  eps = 1e-3
  left, _ = ref_poly(np.array([beta]), alpha, beta, kind)
  for v in (beta - eps, beta + eps):
    got = losses.poly_tailed_of_margin(jnp.float32(v), alpha=alpha, beta=beta, kind=kind)
    assert abs(float(got) - float(left[0])) < 5 * eps * max(1.0, alpha / max(alpha - 1, 1e-3))


def test_poly_reference_gradient_is_right():
  """Guards the reference itself: its derivative matches central differences."""
  for kind, alpha, beta in CASES:
    v = np.array([-3.0, -0.3, 0.2, beta - 0.01, beta + 0.01, 4.0])
    h = 1e-6
    fd = (ref_poly(v + h, alpha, beta, kind)[0] - ref_poly(v - h, alpha, beta, kind)[0]) / (2 * h)
    np.testing.assert_allclose(ref_poly(v, alpha, beta, kind)[1], fd, rtol=1e-5, atol=1e-7)


def test_poly_beta_one_is_the_paper_form():
  v = np.array([-2.0, 0.0, 0.5, 1.0, 1.5, 10.0], np.float32)
  got = np.asarray(losses.poly_tailed_of_margin(jnp.asarray(v), alpha=2.0))
  with np.errstate(divide="ignore"):
    want = np.where(v <= 1, np_softplus(-v) / SP1, v ** -2.0)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_multiclass_margin_is_true_minus_best_other():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(50, 5)).astype(np.float32)
  labels = rng.integers(0, 5, 50)
  other = np.where(np.eye(5, dtype=bool)[labels], -np.inf, logits).max(-1)
  want = logits[np.arange(50), labels] - other
  got = losses.margin(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
  # Two classes: the binary definition s * (f_1 - f_0).
  l2, y2 = logits[:, :2], labels % 2
  np.testing.assert_allclose(np.asarray(losses.margin(jnp.asarray(l2), jnp.asarray(y2))),
                             (2 * y2 - 1) * (l2[:, 1] - l2[:, 0]), rtol=1e-6)


def test_cross_entropy_matches_reference_and_is_finite_at_extremes():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(20, 3)).astype(np.float32) * 5
  logits[0] = [1e4, -1e4, 0.0]
  logits[1] = [-1e4, 1e4, 0.0]
  labels = rng.integers(0, 3, 20)
  labels[:2] = 0
  got = np.asarray(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels)))
  np.testing.assert_allclose(got, ref_ce(logits.astype(np.float64), labels), rtol=1e-5, atol=1e-5)
  grad = jax.grad(lambda z: losses.cross_entropy(z, jnp.asarray(labels)).sum())(jnp.asarray(logits))
  assert np.all(np.isfinite(np.asarray(grad)))


def test_registry_builds_per_example_losses_and_rejects_unknown_names():
  counts = np.array([10, 1])
  params = base_config().loss.to_dict()  # every loss's parameters, as experiment.build passes them
  del params["name"]
  for name in losses.LOSSES:
    fn = losses.get_loss(name, class_counts=counts, group_counts=counts, **params)
    out = fn(jnp.zeros((4, 2)), jnp.array([0, 1, 0, 1]), jnp.array([0, 1, 0, 1]))
    assert out.shape == (4,)
  with pytest.raises(ValueError, match="loss.name must be one of"):
    losses.get_loss("polyloss")
