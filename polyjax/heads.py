"""Classifier heads, the last layer of every model (`model.head`, docs/DATASETS.md).

- 'linear': an affine map, `x W + b` (every model's default).
- 'normed': the cosine classifier of LDAM-DRW (Cao et al. 2019, its `NormedLinear`):
  logit_c = <x / |x|, w_c / |w_c|>, the cosine between the features and class c's
  weight vector, in [-1, 1], without bias. Its weights start uniform in [-1, 1] with
  each class's column scaled to unit norm, as there. The logits are bounded, so a loss
  needs a scale to make confident predictions: LDAM's `loss.inv_temperature` (s = 30
  in LDAM-DRW, which uses this head exactly when it trains with LDAM).

A head is always the model's attribute `head`, the one layer `model.freeze_features`
trains.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

HEADS = ("linear", "normed")
# F.normalize's: a zero vector stays zero instead of dividing by zero.
NORM_EPS = 1e-12


def normalize(x: jax.Array, axis: int) -> jax.Array:
  """`x / max(|x|, NORM_EPS)` along `axis`; finite gradients at x = 0 too (the norm is
  taken of the clamped squared sum, whose gradient is 0 where it is clamped)."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x / jnp.sqrt(jnp.maximum(sq, NORM_EPS ** 2))


class NormedLinear(nnx.Module):
  """Cosine classifier: `normalize(x_BxD, rows) @ normalize(kernel_DxK, columns)`."""

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
    w = jax.random.uniform(rngs.params(), (in_features, out_features), jnp.float32, -1.0, 1.0)
    self.kernel = nnx.Param(normalize(w, axis=0))

  def __call__(self, x_BxD: jax.Array) -> jax.Array:
    return normalize(x_BxD, axis=-1) @ normalize(self.kernel[...], axis=0)


def make_head(kind: str, in_features: int, num_classes: int, *, rngs: nnx.Rngs,
              kernel_init: Callable | None = None,
              bias_init: Callable | None = None) -> nnx.Module:
  """The head `kind` (HEADS); `kernel_init`, `bias_init` set a linear head's
  initialisers (None: Flax's defaults)."""
  if kind == "linear":
    init = {k: v for k, v in (("kernel_init", kernel_init), ("bias_init", bias_init))
            if v is not None}
    return nnx.Linear(in_features, num_classes, rngs=rngs, **init)
  if kind == "normed":
    return NormedLinear(in_features, num_classes, rngs=rngs)
  raise ValueError(f"model.head must be one of {HEADS}, got {kind!r}")
