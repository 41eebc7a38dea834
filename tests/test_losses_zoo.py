"""The baselines of docs/losses.md (LDAM, LA, VS, CDT, VS-group) and the poly loss's options,
each against an independent NumPy reference, plus finite gradients at extreme logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyjax import losses, weighting
from polyjax.config import ConfigError, base_config

CLASS_COUNTS = np.array([400, 40, 4])
GROUP_COUNTS = np.array([1446, 1308, 468, 33])


def _loss_kwargs(**overrides):
  kw = base_config().loss.to_dict()
  kw.pop("name")
  kw.update(overrides)
  return kw


def get(name, class_counts=CLASS_COUNTS, group_counts=GROUP_COUNTS, **overrides):
  return losses.get_loss(name, class_counts=class_counts, group_counts=group_counts,
                         **_loss_kwargs(**overrides))


def np_ce(z_BxC, y_B):
  z = np.asarray(z_BxC, np.float64)
  m = z.max(axis=1, keepdims=True)
  lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
  return lse - z[np.arange(len(y_B)), y_B]


@pytest.fixture
def batch():
  rng = np.random.default_rng(0)
  logits = rng.normal(scale=3.0, size=(32, 3)).astype(np.float32)
  labels = rng.integers(0, 3, size=32).astype(np.int32)
  groups = rng.integers(0, 4, size=32).astype(np.int32)
  return logits, labels, groups


def test_vs_with_gamma_zero_is_logit_adjustment(batch):
  for tau in (0.5, 1.0, 3.0):
    vs = get("vs", tau=tau, gamma=0.0)(*batch)
    la = get("la", tau=tau, gamma=0.7)(*batch)  # la ignores gamma.
    np.testing.assert_allclose(vs, la, rtol=1e-6, atol=1e-6)


def test_vs_with_tau_zero_is_cdt(batch):
  for gamma in (0.1, 0.5, 1.0):
    vs = get("vs", tau=0.0, gamma=gamma)(*batch)
    cdt = get("cdt", tau=2.0, gamma=gamma)(*batch)  # cdt ignores tau.
    np.testing.assert_allclose(vs, cdt, rtol=1e-6, atol=1e-6)


def test_la_and_vs_match_numpy(batch):
  logits, labels, groups = batch
  pi = CLASS_COUNTS / CLASS_COUNTS.sum()
  delta = (CLASS_COUNTS / CLASS_COUNTS.max()) ** 0.3
  np.testing.assert_allclose(get("la", tau=1.5)(*batch),
                             np_ce(logits + 1.5 * np.log(pi), labels), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(get("vs", tau=2.0, gamma=0.3)(*batch),
                             np_ce(delta * logits + 2.0 * np.log(pi), labels),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(get("cdt", gamma=0.3)(*batch), np_ce(delta * logits, labels),
                             rtol=1e-5, atol=1e-5)


def test_ldam_margins_scale_as_n_to_minus_quarter():
  counts = np.array([5000, 500, 50, 7])
  m = losses.ldam_margins(counts, max_margin=0.7)
  assert m.max() == pytest.approx(0.7)
  assert np.argmax(m) == np.argmin(counts)
  # m_c * n_c^(1/4) is one constant across classes.
  np.testing.assert_allclose(m * counts ** 0.25, 0.7 * 7 ** 0.25, rtol=1e-12)


def test_ldam_matches_numpy(batch):
  logits, labels, _ = batch
  m = 0.5 * (CLASS_COUNTS / CLASS_COUNTS.min()) ** -0.25
  z = logits.astype(np.float64).copy()
  z[np.arange(len(labels)), labels] -= m[labels]
  np.testing.assert_allclose(get("ldam", max_margin=0.5, inv_temperature=30.0)(*batch),
                             np_ce(30.0 * z, labels), rtol=1e-4, atol=1e-4)


def test_vs_group_matches_numpy(batch):
  logits, labels, groups = batch
  delta = (GROUP_COUNTS / GROUP_COUNTS.max()) ** 0.4
  z = delta[groups][:, None] * logits - (1.0 / delta[groups])[:, None]
  np.testing.assert_allclose(get("vs_group", gamma=0.4)(*batch), np_ce(z, labels),
                             rtol=1e-5, atol=1e-5)


def np_poly(v, alpha, beta, kind):
  u = np.asarray(v, np.float64) - beta + 1.0
  out = np.empty_like(u)
  r = u > 1
  if kind == "logit":
    out[~r] = np.logaddexp(0, -u[~r]) / np.log1p(np.exp(-1.0))
    out[r] = u[r] ** -alpha
  elif kind == "exp":
    out[~r] = np.exp(1 - u[~r])
    out[r] = u[r] ** -alpha
  else:
    out[~r] = -u[~r] + alpha / (alpha - 1)
    out[r] = u[r] ** -alpha / (alpha - 1)
  return out


@pytest.mark.parametrize("kind,alpha,beta", [("logit", 1.0, 1.0), ("logit", 2.0, 3.0),
                                             ("exp", 1.5, 0.5), ("linear", 2.0, 2.0)])
def test_poly_kinds_beta_and_multiclass_margin_are_selectable(batch, kind, alpha, beta):
  logits, labels, _ = batch
  z = logits.astype(np.float64)
  true = z[np.arange(len(labels)), labels]
  other = np.where(np.eye(3, dtype=bool)[labels], -np.inf, z).max(axis=1)
  want = np_poly(true - other, alpha, beta, kind)
  got = get("poly", kind=kind, alpha=alpha, beta=beta)(*batch)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_poly_binary_margin_is_signed_logit_difference():
  logits = np.array([[0.3, 2.0], [1.0, -0.5]], np.float32)
  labels = np.array([1, 1], np.int32)
  v = np.array([1.7, -1.5])
  got = get("poly", kind="logit", alpha=1.0, beta=1.0)(logits, labels, labels)
  np.testing.assert_allclose(got, np_poly(v, 1.0, 1.0, "logit"), rtol=1e-5)


@pytest.mark.parametrize("name", ["ldam", "la", "vs", "cdt"])
def test_class_losses_refuse_empty_classes(name):
  with pytest.raises(ConfigError, match=f"loss.name='{name}'.*class"):
    get(name, class_counts=np.array([10, 0, 3]))


def test_vs_group_refuses_empty_groups():
  with pytest.raises(ConfigError, match="loss.name='vs_group'.*group"):
    get("vs_group", group_counts=np.array([10, 0]))


def _extreme_batch():
  vals = np.array([-1e4, 0.0, 1e4], np.float32)
  logits = np.stack(np.meshgrid(vals, vals, vals), -1).reshape(-1, 3)  # (27, 3)
  logits = np.concatenate([logits, logits])  # every row once per label below.
  labels = np.arange(len(logits), dtype=np.int32) % 3
  groups = np.arange(len(logits), dtype=np.int32) % 4
  return jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(groups)


def _loss_settings():
  for name in losses.LOSSES:
    if name == "poly":
      yield name, dict(kind="logit", alpha=1.0)
      yield name, dict(kind="exp", alpha=1.0, beta=1.0)
      yield name, dict(kind="linear", alpha=2.0)
    else:
      yield name, {}


def test_every_loss_and_weighting_has_finite_gradients_at_extreme_logits():
  logits, labels, groups = _extreme_batch()
  adv = jnp.full((4,), 0.25)
  # none/undersampled/resampled share the weighted mean with unit weights: checking
  # that reduction once covers all three.
  unit_modes = ("none", "undersampled", "resampled")
  for mode in unit_modes:
    assert weighting.make_reduction(mode, num_groups=4) is weighting.weighted_reduction
    assert np.all(weighting.group_weights(GROUP_COUNTS, mode=mode) == 1.0)
  reductions = []
  for mode in ("none", "reweighted", "dro"):
    w_G = weighting.group_weights(GROUP_COUNTS, mode=mode, exponent=2.0)
    reductions.append((mode, jnp.asarray(w_G)[groups],
                       weighting.make_reduction(mode, num_groups=4, adv_probs_lr=0.05)))
  for name, kw in _loss_settings():
    if name == "poly" and kw["kind"] == "exp":
      # exp(1 - u) overflows float32 for margins below about -88 (docs/losses.md:
      # finite wherever exp(1 - u) fits), so this kind is checked at +-40 (margins +-80).
      x = jnp.clip(logits, -40.0, 40.0)
    else:
      x = logits
    fn = get(name, **kw)
    for mode, weight_B, reduce in reductions:
      obj = lambda x: reduce(fn(x, labels, groups), weight_B, groups, adv)  # noqa: B023
      (o, q), g = jax.value_and_grad(obj, has_aux=True)(x)
      assert np.isfinite(o), (name, kw, mode)
      assert np.all(np.isfinite(g)), (name, kw, mode)
      assert np.all(np.isfinite(q)) and np.isclose(float(q.sum()), 1.0), (name, kw, mode)
