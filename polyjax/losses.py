"""Per-example classification losses (SPEC §2), unreduced.

Every loss here maps `(logits_BxC, labels_B, groups_B) -> loss_B`. The weighted
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
import optax

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
  """The polynomially-tailed loss as a function of the margin `v` (SPEC §2).

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


def _ignore_groups(fn: Callable[..., Array]) -> LossFn:

  def loss(logits_BxC, labels_B, groups_B):
    del groups_B
    return fn(logits_BxC, labels_B)

  return loss


def _make_ce(**_) -> LossFn:
  return _ignore_groups(cross_entropy)


def _make_poly(*, alpha: float, beta: float, kind: str, **_) -> LossFn:
  return _ignore_groups(functools.partial(poly_tailed, alpha=alpha, beta=beta, kind=kind))


# name -> builder(**loss_config, class_counts=..., group_counts=...) -> LossFn.
# Builders receive the training split's class and group counts so that losses
# which need them (LDAM, LA, VS) never take hand-typed counts.
LOSSES: dict[str, Callable[..., LossFn]] = {
    "ce": _make_ce,
    "poly": _make_poly,
}


def get_loss(name: str, **kwargs) -> LossFn:
  """Returns the per-example loss `name`, built with the given parameters."""
  if name not in LOSSES:
    raise ValueError(f"loss.name must be one of {sorted(LOSSES)}, got {name!r}")
  return LOSSES[name](**kwargs)
