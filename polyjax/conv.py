"""2-D convolutions of `nnx.Conv` layers (NHWC input, HWIO kernel), in the form a
model picks for its platform when it is built (`for_backend`).

Off the CPU a model keeps XLA's convolution (`lax.conv_general_dilated`, cuDNN on
GPU), and its programs hold nothing else. XLA:CPU runs a convolution inside a
while loop (the whole-epoch `lax.scan`) 15-50x slower than the same convolution
outside one (jax-ml/jax#12868), so a model built for the CPU computes its
convolutions as matrix products (`cpu_conv`), which run at full speed in loops:

- `winograd_4x4_3x3` and `winograd_2x2_3x3` for stride-1 3x3 kernels with at
  least `WINOGRAD_MIN_CHANNELS` input channels, where 4 (or else 2) divides the
  output size: Winograd's minimal filtering F(m x m, 3 x 3) (Lavin & Gray, "Fast
  Algorithms for Convolutional Neural Networks", 2016). Each m x m output tile
  comes from an (m + 2) x (m + 2) input tile through (m + 2)^2 matrix products
  (2.25 multiply-adds per output and channel pair for m = 4, 4 for m = 2, against
  9 directly); the input, kernel and output transforms are weighted sums that XLA
  fuses, and their transposes (the gradients) are written out by hand.
- `im2col` otherwise, strided too: one matrix product over the K*K shifted copies
  of the input (for a 1x1 kernel, a matrix product of the input itself).

All forms compute the same function up to float32 rounding (tests/test_models_conv.py).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

# Below this many input channels the transforms cost about what the products save
# (the crossover measured by benchmarks/conv_layer.py: docs/BENCHMARKS.md).
WINOGRAD_MIN_CHANNELS = 16

_NHWC = ("NHWC", "HWIO", "NHWC")


def for_backend(backend: str | None = None) -> Callable[..., jax.Array]:
  """The `conv_general_dilated` of the `nnx.Conv` layers of a model built for
  `backend` ('cpu', 'gpu', 'tpu'; `jax.default_backend()` when None)."""
  if backend is None:
    backend = jax.default_backend()
  return cpu_conv if backend == "cpu" else jax.lax.conv_general_dilated


def cpu_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
             dimension_numbers=None, feature_group_count=1, batch_group_count=1,
             precision=None, preferred_element_type=None, out_sharding=None) -> jax.Array:
  """`lax.conv_general_dilated` as matrix products (`cpu_form`) for the 2-D NHWC
  convolutions `nnx.Conv` makes. Dilated or grouped convolutions, other layouts, an
  explicit precision, element type or sharding go to XLA's (no model here has them)."""
  plain = (lhs.ndim == 4 and feature_group_count == 1 and batch_group_count == 1
           and precision is None and preferred_element_type is None and out_sharding is None
           and all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
           and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
           == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
  if not plain:
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type, out_sharding=out_sharding)
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  if any(p != 0 for pair in padding for p in pair):
    lhs = jax.lax.pad(lhs, jnp.zeros((), lhs.dtype),
                      [(0, 0, 0), *((lo, hi, 0) for lo, hi in padding), (0, 0, 0)])
  strides = tuple(window_strides)
  form = cpu_form(lhs.shape, rhs.shape, strides)
  return im2col(lhs, rhs, strides) if form == "im2col" else CPU_FORMS[form](lhs, rhs)


def im2col(x_BxHxWxC: jax.Array, kernel_KxKxCxO: jax.Array,
           strides: Sequence[int] = (1, 1)) -> jax.Array:
  """Valid convolution: one matmul of the K*K shifted (strided) copies of the input
  (the patches) with the kernel."""
  kh, kw, c, o = kernel_KxKxCxO.shape
  _, h, w, _ = x_BxHxWxC.shape
  sh, sw = strides
  ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
  patches_BxHoxWoxKKC = jnp.concatenate(
      [x_BxHxWxC[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :]
       for i in range(kh) for j in range(kw)], axis=-1)
  return jnp.einsum("bhwk,ko->bhwo", patches_BxHoxWoxKKC,
                    kernel_KxKxCxO.reshape(kh * kw * c, o))


# Winograd's F(m, 3) in one dimension (Lavin & Gray 2016): the m outputs of a
# 3-tap filter g over n = m + 2 inputs d are  y = A^T [(G g) * (B^T d)].
# F(2, 3) uses the points 0, 1, -1 and infinity: every coefficient is 0, +-1 or
# 1/2. F(4, 3) adds +-2: coefficients up to 8 and 1/24, and about 15x the float32
# rounding error of F(2, 3) (1e-5 against 8e-7 for outputs of size 1).
_F = {
    2: dict(BT=((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
            G=((1, 0, 0), (1 / 2, 1 / 2, 1 / 2), (1 / 2, -1 / 2, 1 / 2), (0, 0, 1)),
            AT=((1, 1, 1, 0), (0, 1, -1, -1))),
    4: dict(BT=((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
                (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
            G=((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
               (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
            AT=((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0),
                (0, 1, -1, 8, -8, 1))),
}


def _combine(matrix, xs):
  """[sum_i matrix[p][i] * xs[i] for each row p], as additions where a coefficient is +-1."""
  out = []
  for row in matrix:
    terms = [x if c == 1 else -x if c == -1 else c * x for c, x in zip(row, xs) if c != 0]
    total = terms[0]
    for t in terms[1:]:
      total = total + t
    out.append(total)
  return out


def _transposed(matrix):
  return tuple(zip(*matrix))


def _tile_inputs(x, axis: int, tiles: int, m: int):
  """The n = m + 2 inputs of each tile along `axis` (tile t starts at m t): d_0..d_{n-1}.
  `x` has m * tiles + 2 entries along `axis`."""
  if m > 2:  # Padded to whole groups of m.
    x = jax.lax.pad(x, jnp.zeros((), x.dtype),
                    [(0, m - 2 if a == axis else 0, 0) for a in range(x.ndim)])
  # Reshaped into groups of m entries: tile t reads group t and the first two entries
  # of group t + 1 (no strided slices).
  groups = x.reshape(x.shape[:axis] + (tiles + 1, m) + x.shape[axis + 1:])
  return [jax.lax.index_in_dim(
      jax.lax.slice_in_dim(groups, i // m, i // m + tiles, axis=axis), i % m, axis + 1,
      keepdims=False) for i in range(m + 2)]


def _tile_inputs_T(ds, axis: int, tiles: int, m: int):
  """The transpose of `_tile_inputs`: each entry sums what the (at most two) tiles
  that read it received, one concatenation per offset in a group."""

  def overlap_add(first, second):  # group[t] = first[t] + second[t - 1], t = 0..tiles
    parts = [jax.lax.slice_in_dim(first, 0, 1, axis=axis)]
    if tiles > 1:
      parts.append(jax.lax.slice_in_dim(first, 1, tiles, axis=axis)
                   + jax.lax.slice_in_dim(second, 0, tiles - 1, axis=axis))
    parts.append(jax.lax.slice_in_dim(second, tiles - 1, tiles, axis=axis))
    return jnp.concatenate(parts, axis=axis)

  def last_padded(first):  # Offsets >= 2 of the last group are the padding.
    return jax.lax.pad(first, jnp.zeros((), first.dtype),
                       [(0, 1 if a == axis else 0, 0) for a in range(first.ndim)])

  groups = jnp.stack([overlap_add(ds[j], ds[m + j]) if j < 2 else last_padded(ds[j])
                      for j in range(m)], axis=axis + 1)
  x = groups.reshape(groups.shape[:axis] + (m * (tiles + 1),) + groups.shape[axis + 2:])
  return jax.lax.slice_in_dim(x, 0, m * tiles + 2, axis=axis)


# The input and output transforms have hand-written gradients (their transposes).
# Differentiated by JAX, each tile input's slice became a pad, and XLA wrote every
# padded array out before summing them: 16+ passes over the layer's input per
# step. Written as overlap-adds they cost a few passes: the ConvNet's training
# epoch on CPU runs 1.2x faster (docs/BENCHMARKS.md).


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _winograd_inputs(x_BxHxWxC: jax.Array, spec: tuple[int, int, int, int]) -> jax.Array:
  """(n * n, B * th * tw, C): B^T d B of every n x n input tile, (row, column)
  position-major; `spec` is (m, B, th, tw)."""
  m, _, th, tw = spec
  bt = _F[m]["BT"]
  # Rows first, the n row positions stacked, then columns for all of them at once:
  # 2n fusions, where one per position (n * n, each reading the input) ran 1.1x
  # slower in the ConvNet's epoch.
  rows_nxBxthxWxC = jnp.stack(_combine(bt, _tile_inputs(x_BxHxWxC, 1, th, m)))
  v_nxnxBxthxtwxC = jnp.stack(_combine(bt, _tile_inputs(rows_nxBxthxWxC, 3, tw, m)),
                              axis=1)
  return v_nxnxBxthxtwxC.reshape((m + 2) ** 2, -1, x_BxHxWxC.shape[-1])


def _winograd_inputs_fwd(x_BxHxWxC, spec):
  return _winograd_inputs(x_BxHxWxC, spec), None


def _winograd_inputs_bwd(spec, _, dv):
  m, b, th, tw = spec
  n, b_t = m + 2, _transposed(_F[m]["BT"])
  dv = dv.reshape(n, n, b, th, tw, -1)
  # Columns for all row positions at once, then rows (as the forward pass).
  rows_nxBxthxWxC = _tile_inputs_T(_combine(b_t, [dv[:, q] for q in range(n)]), 3, tw, m)
  return (_tile_inputs_T(_combine(b_t, list(rows_nxBxthxWxC)), 1, th, m),)


_winograd_inputs.defvjp(_winograd_inputs_fwd, _winograd_inputs_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _winograd_outputs(products: jax.Array, spec: tuple[int, int, int, int]) -> jax.Array:
  """(B, m th, m tw, O): A^T M A of every tile's (n x n) products, the m x m outputs
  in place; `spec` is (m, B, th, tw)."""
  m, b, th, tw = spec
  n, at = m + 2, _F[m]["AT"]
  products = products.reshape(n, n, b, th, tw, -1)
  # Rows, stacked, then columns for all of them at once: y[s][r] is at offset (r, s).
  by_row_mxnxBxthxtwxO = jnp.stack(_combine(at, list(products)))
  y_mxBxthxtwxmxO = jnp.stack(
      _combine(at, [by_row_mxnxBxthxtwxO[:, q] for q in range(n)]), axis=4)
  return jnp.moveaxis(y_mxBxthxtwxmxO, 0, 2).reshape(b, m * th, m * tw, -1)


def _winograd_outputs_fwd(products, spec):
  return _winograd_outputs(products, spec), None


def _winograd_outputs_bwd(spec, _, dy_BxHoxWoxO):
  m, b, th, tw = spec
  n, a = m + 2, _transposed(_F[m]["AT"])
  dy_mxBxthxtwxmxO = jnp.moveaxis(dy_BxHoxWoxO.reshape(b, th, m, tw, m, -1), 2, 0)
  # The gradient of the rows' products (m x n), then of the products (n x n).
  by_row = jnp.stack(_combine(a, [dy_mxBxthxtwxmxO[..., s, :] for s in range(m)]), axis=1)
  return (jnp.stack(_combine(a, list(by_row))).reshape(n * n, b * th * tw, -1),)


_winograd_outputs.defvjp(_winograd_outputs_fwd, _winograd_outputs_bwd)


def _tiles_fit(ho: int, wo: int, m: int) -> bool:
  """Whether an ho x wo output splits into whole m x m tiles."""
  return ho >= m and wo >= m and ho % m == 0 and wo % m == 0


def _winograd(x_BxHxWxC: jax.Array, kernel_3x3xCxO: jax.Array, m: int) -> jax.Array:
  b, h, w, _ = x_BxHxWxC.shape
  ho, wo = h - 2, w - 2
  if kernel_3x3xCxO.shape[:2] != (3, 3) or not _tiles_fit(ho, wo, m):
    raise ValueError(f"winograd_{m}x{m}_3x3 needs a 3x3 kernel and an output size "
                     f"divisible by {m}, got input {x_BxHxWxC.shape}, kernel "
                     f"{kernel_3x3xCxO.shape}")
  spec = (m, b, ho // m, wo // m)
  g = _F[m]["G"]
  u = []
  for rows_3xCxO in _combine(g, list(kernel_3x3xCxO)):
    u.extend(_combine(g, list(rows_3xCxO)))
  products = jnp.einsum("pnc,pco->pno", _winograd_inputs(x_BxHxWxC, spec), jnp.stack(u))
  return _winograd_outputs(products, spec)


def winograd_2x2_3x3(x_BxHxWxC: jax.Array, kernel_3x3xCxO: jax.Array) -> jax.Array:
  """Valid 3x3 convolution by Winograd's F(2x2, 3x3); the output's H and W must be even."""
  return _winograd(x_BxHxWxC, kernel_3x3xCxO, 2)


def winograd_4x4_3x3(x_BxHxWxC: jax.Array, kernel_3x3xCxO: jax.Array) -> jax.Array:
  """Valid 3x3 convolution by Winograd's F(4x4, 3x3): 6x6 input tiles, 36 products per
  4x4 output tile (2.25 per output, against 4 for F(2x2)); H and W of the output must
  divide by 4."""
  return _winograd(x_BxHxWxC, kernel_3x3xCxO, 4)


def cpu_form(in_shape_BxHxWxC: tuple[int, ...], kernel_shape: tuple[int, ...],
             strides: Sequence[int] = (1, 1)) -> str:
  """'winograd4', 'winograd' or 'im2col': the form a CPU computes this valid
  convolution (of an input padded already) in."""
  _, h, w, c = in_shape_BxHxWxC
  if (tuple(kernel_shape[:2]) == (3, 3) and tuple(strides) == (1, 1)
      and c >= WINOGRAD_MIN_CHANNELS):
    for m, form in ((4, "winograd4"), (2, "winograd")):
      if _tiles_fit(h - 2, w - 2, m):
        return form
  return "im2col"


CPU_FORMS = {"winograd4": winograd_4x4_3x3, "winograd": winograd_2x2_3x3, "im2col": im2col}
