"""Per-example classification losses (docs/losses.md), unreduced.

Every loss here maps `(logits_BxC, labels_B, groups_B) -> loss_B`: cross-entropy,
the polynomially-tailed loss (logit/exp/linear kinds, switch point beta,
multi-class margin) and the baselines focal, LDAM, logit adjustment (LA), VS, CDT and
group VS. Those that need class or group counts get them from the training split
through their builders (`LOSSES`), never from the user. The weighted
reduction over a batch lives in one place, `polyjax.weighting`. Names are resolved
once, by `get_loss`, so the training step never branches on a string.

Note: `optax.losses.poly_loss_cross_entropy` is PolyLoss (Leng et al. 2022), a
different loss from the polynomially-tailed loss implemented here.
"""

from __future__ import annotations

import functools
from typing import Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from polyjax.errors import ConfigError

Array = jax.Array

POLY_KINDS = ("logit", "exp", "linear")


class LossFn(Protocol):

  def __call__(self, logits_BxC: Array, labels_B: Array, groups_B: Array) -> Array:
    ...


def margin(logits_BxC: Array, labels_B: Array) -> Array:
  """Multi-class margin `f_y - max_{j != y} f_j`; for two classes `s * (f_1 - f_0)`."""
  num_classes = logits_BxC.shape[-1]
  is_label_BxC = jax.nn.one_hot(labels_B, num_classes, dtype=bool)
  true_B = jnp.sum(jnp.where(is_label_BxC, logits_BxC, 0.0), axis=-1)
  other_B = jnp.max(jnp.where(is_label_BxC, -jnp.inf, logits_BxC), axis=-1)
  return true_B - other_B


def cross_entropy(logits_BxC: Array, labels_B: Array) -> Array:
  """Softmax cross-entropy with integer labels, any number of classes."""
  return optax.losses.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B)


def poly_tailed_of_margin(v: Array, *, alpha: float = 1.0, beta: float = 1.0,
                          kind: str = "logit") -> Array:
  """The polynomially-tailed loss as a function of the margin `v` (docs/losses.md).

  Left of the switch point `beta` the loss follows a light-tailed curve
  (logistic, exponential or linear); right of it, `u ** -alpha` with
  `u = v - beta + 1`. Both pieces equal their common value at `v = beta`.
  Each branch is evaluated on inputs clamped to its own side so that the branch
  not taken never produces a NaN value or gradient (the `jnp.where` trap).
  """
  if kind not in POLY_KINDS:
    raise ValueError(f"loss.kind must be one of {POLY_KINDS}, got {kind!r}")
  u = v - beta + 1.0
  right = u > 1.0
  u_left = jnp.where(right, 1.0, u)
  u_right = jnp.where(right, u, 1.0)
  tail = u_right ** (-alpha)
  if kind == "logit":
    head = jax.nn.softplus(-u_left) / jax.nn.softplus(-1.0)
  elif kind == "exp":
    head = jnp.exp(1.0 - u_left)
  else:  # linear: continuous at u = 1 only with the 1/(alpha-1) scaling.
    head = -u_left + alpha / (alpha - 1.0)
    tail = tail / (alpha - 1.0)
  return jnp.where(right, tail, head)


def poly_tailed(logits_BxC: Array, labels_B: Array, *, alpha: float = 1.0,
                beta: float = 1.0, kind: str = "logit") -> Array:
  """Polynomially-tailed loss of the multi-class margin, per example."""
  return poly_tailed_of_margin(
      margin(logits_BxC, labels_B), alpha=alpha, beta=beta, kind=kind)


def focal(logits_BxC: Array, labels_B: Array, *, gamma: float) -> Array:
  """Focal loss (Lin et al. 2017; LDAM-DRW's code): `(1 - p_y)^gamma * CE` with
  `p_y = exp(-CE)`, the softmax probability of the label.

  `1 - p_y` is `-expm1(-CE)`, accurate where p_y is near 1. Where it is 0 (a
  margin so large that CE rounds to 0) the factor is its limit, 0 (1 for gamma 0),
  taken outside the power so that neither value nor gradient is NaN there.
  """
  ce_B = cross_entropy(logits_BxC, labels_B)
  if gamma == 0:
    return ce_B
  one_minus_p = -jnp.expm1(-ce_B)
  positive = one_minus_p > 0
  factor = jnp.where(positive, jnp.exp(gamma * jnp.log(jnp.where(positive, one_minus_p, 1.0))),
                     0.0)
  return factor * ce_B


def ldam(logits_BxC: Array, labels_B: Array, *, margins_C: Array,
         inv_temperature: float) -> Array:
  """LDAM (Cao et al. 2019): CE of `s * (f - m_y e_y)`, a margin subtracted from the
  true-class logit before scaling by the inverse temperature `s`."""
  is_label_BxC = jax.nn.one_hot(labels_B, logits_BxC.shape[-1], dtype=logits_BxC.dtype)
  return cross_entropy(inv_temperature * (logits_BxC - is_label_BxC * margins_C[None, :]),
                       labels_B)


def vector_scaling(logits_BxC: Array, labels_B: Array, *, delta_C: Array,
                   iota_C: Array) -> Array:
  """VS loss (Kini et al. 2021): CE of `delta_c * f_c + iota_c`. LA is delta = 1,
  CDT is iota = 0."""
  return cross_entropy(delta_C[None, :] * logits_BxC + iota_C[None, :], labels_B)


def vector_scaling_group(logits_BxC: Array, labels_B: Array, groups_B: Array, *,
                         delta_G: Array, iota_G: Array) -> Array:
  """Group VS loss: CE of `delta_g * f + iota_g` with the example's group g.

  As in the paper's released code, `iota_g` is added to every class's logit; a
  shift shared by all classes leaves softmax CE unchanged, so only `delta_g`
  (a per-group inverse temperature) affects the loss.
  """
  delta_Bx1 = delta_G[groups_B][:, None]
  iota_Bx1 = iota_G[groups_B][:, None]
  return cross_entropy(delta_Bx1 * logits_BxC + iota_Bx1, labels_B)


def _counts(counts, *, loss: str, what: str) -> np.ndarray:
  """Training-split counts as float64, refusing empty classes/groups (log 0, 0^-1/4)."""
  if counts is None:
    raise ConfigError(f"config.loss.name={loss!r} needs the training split's {what} counts")
  counts = np.asarray(counts, np.float64)
  if np.any(counts <= 0):
    raise ConfigError(f"config.loss.name={loss!r} needs every {what} in the training "
                      f"split, got {what} counts {counts.astype(int).tolist()}")
  return counts


def ldam_margins(class_counts, *, max_margin: float) -> np.ndarray:
  """m_c proportional to n_c^(-1/4), scaled so that the largest is `max_margin`."""
  raw = _counts(class_counts, loss="ldam", what="class") ** -0.25
  return raw * (max_margin / raw.max())


def vs_params(counts, *, tau: float, gamma: float, loss: str, what: str
              ) -> tuple[np.ndarray, np.ndarray]:
  """(delta, iota) of the VS loss: `(n/n_max)**gamma` and `tau * log(n/sum n)`."""
  n = _counts(counts, loss=loss, what=what)
  return (n / n.max()) ** gamma, tau * np.log(n / n.sum())


def _ignore_groups(fn: Callable[..., Array]) -> LossFn:

  def loss(logits_BxC, labels_B, groups_B):
    del groups_B
    return fn(logits_BxC, labels_B)

  return loss


def _f32(a) -> Array:
  return jnp.asarray(a, jnp.float32)


def _make_ce(**_) -> LossFn:
  return _ignore_groups(cross_entropy)


def _make_poly(*, alpha: float, beta: float, kind: str, **_) -> LossFn:
  return _ignore_groups(functools.partial(poly_tailed, alpha=alpha, beta=beta, kind=kind))


def _make_focal(*, focal_gamma: float, **_) -> LossFn:
  return _ignore_groups(functools.partial(focal, gamma=focal_gamma))


def _make_ldam(*, max_margin: float, inv_temperature: float, class_counts=None,
               **_) -> LossFn:
  margins_C = _f32(ldam_margins(class_counts, max_margin=max_margin))
  return _ignore_groups(functools.partial(ldam, margins_C=margins_C,
                                          inv_temperature=inv_temperature))


def _make_vs(*, tau: float, gamma: float, class_counts=None, _name: str = "vs",
             **_) -> LossFn:
  delta_C, iota_C = vs_params(class_counts, tau=tau, gamma=gamma, loss=_name, what="class")
  return _ignore_groups(functools.partial(vector_scaling, delta_C=_f32(delta_C),
                                          iota_C=_f32(iota_C)))


def _make_la(*, tau: float, class_counts=None, **_) -> LossFn:
  return _make_vs(tau=tau, gamma=0.0, class_counts=class_counts, _name="la")


def _make_cdt(*, gamma: float, class_counts=None, **_) -> LossFn:
  return _make_vs(tau=0.0, gamma=gamma, class_counts=class_counts, _name="cdt")


def _make_vs_group(*, gamma: float, group_counts=None, **_) -> LossFn:
  n = _counts(group_counts, loss="vs_group", what="group")
  delta_G = (n / n.max()) ** gamma
  return functools.partial(vector_scaling_group, delta_G=_f32(delta_G),
                           iota_G=_f32(-1.0 / delta_G))


# name -> builder(**loss_config, class_counts=..., group_counts=...) -> LossFn.
# Builders receive the training split's class and group counts so that losses
# which need them (LDAM, LA, VS) never take hand-typed counts; each ignores the
# config fields of the other losses.
LOSSES: dict[str, Callable[..., LossFn]] = {
    "ce": _make_ce,
    "poly": _make_poly,
    "focal": _make_focal,  # focal_gamma.
    "ldam": _make_ldam,  # max_margin, inv_temperature; class counts.
    "la": _make_la,  # tau; class counts.
    "vs": _make_vs,  # tau, gamma; class counts.
    "cdt": _make_cdt,  # gamma (VS with tau = 0); class counts.
    "vs_group": _make_vs_group,  # gamma; group counts.
}


def get_loss(name: str, **kwargs) -> LossFn:
  """Returns the per-example loss `name`, built with the given parameters."""
  if name not in LOSSES:
    raise ValueError(f"loss.name must be one of {sorted(LOSSES)}, got {name!r}")
  return LOSSES[name](**kwargs)
