"""Valid, stride-1 2-D convolutions (NHWC input, HWIO kernel) in the forms XLA runs fast.

XLA:CPU runs a convolution inside a while loop (the whole-epoch `lax.scan`) about
15x slower than the same convolution outside one (jax-ml/jax#12868), so on CPU a
convolution is written as matrix products, which run at full speed in loops:

- `winograd_2x2_3x3` for 3x3 kernels with an even output size and at least
  `WINOGRAD_MIN_CHANNELS` input channels: Winograd's minimal filtering F(2x2, 3x3)
  (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016). Each
  2x2 output tile comes from a 4x4 input tile through 16 products per channel pair
  instead of 36, as 16 matrix products; the input, kernel and output transforms
  are additions that XLA fuses. The gradients are Winograd-shaped products
  too, with the transforms' transposes written out.
- `im2col` otherwise: one matrix product over the K*K shifted copies of the input.

Other platforms keep XLA's convolution (cuDNN on GPU). All forms compute the same
function up to float32 rounding (tests/test_models_conv.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Below this many input channels the transforms cost more than the products save.
# CPU time of a layer's gradient in a loop, batch 64, 30x30 input, 64 outputs,
# im2col vs Winograd (benchmarks/conv_layer.py, 2026-11-23): 8 channels 65 vs 74
# ms, 16: 98 vs 78, 24: 172 vs 118, 64: 314 vs 195.
WINOGRAD_MIN_CHANNELS = 16


def xla(x_BxHxWxC: jax.Array, kernel_KxKxCxO: jax.Array) -> jax.Array:
  """XLA's own convolution."""
  return jax.lax.conv_general_dilated(x_BxHxWxC, kernel_KxKxCxO, (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def im2col(x_BxHxWxC: jax.Array, kernel_KxKxCxO: jax.Array) -> jax.Array:
  """One matmul of the K*K shifted copies of the input (the patches) with the kernel."""
  kh, kw, c, o = kernel_KxKxCxO.shape
  _, h, w, _ = x_BxHxWxC.shape
  ho, wo = h - kh + 1, w - kw + 1
  patches_BxHoxWoxKKC = jnp.concatenate(
      [x_BxHxWxC[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)], axis=-1)
  return jnp.einsum("bhwk,ko->bhwo", patches_BxHoxWoxKKC,
                    kernel_KxKxCxO.reshape(kh * kw * c, o))


# F(2, 3) in one dimension: y = A^T [(G g) * (B^T d)] for 4 inputs d, 3 taps g, 2 outputs.
def _input_transform(d0, d1, d2, d3):  # B^T d
  return (d0 - d2, d1 + d2, d2 - d1, d1 - d3)


def _input_transform_T(g0, g1, g2, g3):  # B g: its transpose, for the gradient.
  return (g0, g1 - g2 + g3, g1 + g2 - g0, -g3)


def _kernel_transform(g0, g1, g2):  # G g
  return (g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2)


def _output_transform(m0, m1, m2, m3):  # A^T m
  return (m0 + m1 + m2, m1 - m2 - m3)


def _output_transform_T(g0, g1):  # A g: its transpose, for the gradient.
  return (g0, g0 + g1, g0 - g1, -g1)


def _tile_inputs(x, axis: int, tiles: int):
  """The 4 inputs of each tile along `axis` (tile t starts at 2t): d0..d3.
  `x` has 2 * tiles + 2 entries along `axis`."""
  # Reshaped into pairs of rows: tile t reads pairs t and t + 1 (no strided slices).
  pairs = x.reshape(x.shape[:axis] + (tiles + 1, 2) + x.shape[axis + 1:])

  def take(first: int, offset: int):
    p = jax.lax.slice_in_dim(pairs, first, first + tiles, axis=axis)
    return jax.lax.index_in_dim(p, offset, axis=axis + 1, keepdims=False)

  return take(0, 0), take(0, 1), take(1, 0), take(1, 1)


def _tile_inputs_T(d0, d1, d2, d3, axis: int, tiles: int):
  """The transpose of `_tile_inputs`: each entry sums what the (at most two) tiles
  that read it received, written as one concatenation per pair offset."""

  def overlap_add(first, second):  # pairs[t] = first[t] + second[t - 1], t = 0..tiles
    parts = [jax.lax.slice_in_dim(first, 0, 1, axis=axis)]
    if tiles > 1:
      parts.append(jax.lax.slice_in_dim(first, 1, tiles, axis=axis)
                   + jax.lax.slice_in_dim(second, 0, tiles - 1, axis=axis))
    parts.append(jax.lax.slice_in_dim(second, tiles - 1, tiles, axis=axis))
    return jnp.concatenate(parts, axis=axis)

  pairs = jnp.stack([overlap_add(d0, d2), overlap_add(d1, d3)], axis=axis + 1)
  return pairs.reshape(d0.shape[:axis] + (2 * tiles + 2,) + d0.shape[axis + 1:])


# The input and output transforms have hand-written gradients (their transposes).
# Differentiated by JAX, each tile input's slice became a pad, and XLA wrote every
# padded array out before summing them: 16+ passes over the layer's input per
# step. Written as overlap-adds they cost a few passes: the ConvNet's training
# epoch on CPU runs 1.2x faster (docs/BENCHMARKS.md).


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _winograd_inputs(x_BxHxWxC: jax.Array, tiles: tuple[int, int, int]) -> jax.Array:
  """(16, B * th * tw, C): B^T d B of every 4x4 input tile, (row, column) position-major;
  `tiles` is (B, th, tw)."""
  _, th, tw = tiles
  # Rows first, the 4 row positions stacked, then columns for all of them at once:
  # 4 + 4 fusions, where one per position (16, each reading the input) ran 1.1x
  # slower in the ConvNet's epoch.
  rows_4xBxthxWxC = jnp.stack(_input_transform(*_tile_inputs(x_BxHxWxC, 1, th)))
  v_4x4xBxthxtwxC = jnp.stack(_input_transform(*_tile_inputs(rows_4xBxthxWxC, 3, tw)),
                              axis=1)
  return v_4x4xBxthxtwxC.reshape(16, -1, x_BxHxWxC.shape[-1])


def _winograd_inputs_fwd(x_BxHxWxC, tiles):
  return _winograd_inputs(x_BxHxWxC, tiles), None


def _winograd_inputs_bwd(tiles, _, dv_16xNxC):
  b, th, tw = tiles
  dv = dv_16xNxC.reshape(4, 4, b, th, tw, -1)
  rows = [_tile_inputs_T(*_input_transform_T(*dv[i]), axis=2, tiles=tw) for i in range(4)]
  return (_tile_inputs_T(*_input_transform_T(*rows), axis=1, tiles=th),)


_winograd_inputs.defvjp(_winograd_inputs_fwd, _winograd_inputs_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _winograd_outputs(m_16xNxO: jax.Array, tiles: tuple[int, int, int]) -> jax.Array:
  """(B, 2 th, 2 tw, O): A^T m A of every tile's products, the 2x2 outputs in place;
  `tiles` is (B, th, tw)."""
  b, th, tw = tiles
  m_4x4xBxthxtwxO = m_16xNxO.reshape(4, 4, b, th, tw, -1)
  by_row = _output_transform(*m_4x4xBxthxtwxO)  # 2 x (4 x B x th x tw x O)
  y = [_output_transform(*r) for r in by_row]     # y[row offset][column offset]
  y_Bxthx2xtwx2xO = jnp.stack([jnp.stack(y_row, axis=3) for y_row in y], axis=2)
  return y_Bxthx2xtwx2xO.reshape(b, 2 * th, 2 * tw, -1)


def _winograd_outputs_fwd(m_16xNxO, tiles):
  return _winograd_outputs(m_16xNxO, tiles), None


def _winograd_outputs_bwd(tiles, _, dy_BxHoxWoxO):
  b, th, tw = tiles
  dy = dy_BxHoxWoxO.reshape(b, th, 2, tw, 2, -1)
  # by_col[r][q]: the gradient of by_row[r] at column position q.
  by_col = [_output_transform_T(dy[:, :, r, :, 0], dy[:, :, r, :, 1]) for r in range(2)]
  by_pos = [_output_transform_T(by_col[0][q], by_col[1][q]) for q in range(4)]  # [q][p]
  dm = [by_pos[q][p] for p in range(4) for q in range(4)]
  return (jnp.stack(dm).reshape(16, b * th * tw, -1),)


_winograd_outputs.defvjp(_winograd_outputs_fwd, _winograd_outputs_bwd)


def winograd_2x2_3x3(x_BxHxWxC: jax.Array, kernel_3x3xCxO: jax.Array) -> jax.Array:
  """Valid 3x3 convolution by Winograd's F(2x2, 3x3); the output's H and W must be even."""
  b, h, w, _ = x_BxHxWxC.shape
  ho, wo = h - 2, w - 2
  if kernel_3x3xCxO.shape[:2] != (3, 3) or ho % 2 or wo % 2 or ho < 2 or wo < 2:
    raise ValueError(f"winograd_2x2_3x3 needs a 3x3 kernel and an even output size, "
                     f"got input {x_BxHxWxC.shape}, kernel {kernel_3x3xCxO.shape}")
  th, tw = ho // 2, wo // 2
  v_16xNxC = _winograd_inputs(x_BxHxWxC, (b, th, tw))
  u = []
  for rows_3xCxO in _kernel_transform(*kernel_3x3xCxO):
    u.extend(_kernel_transform(*rows_3xCxO))
  m_16xNxO = jnp.einsum("pnc,pco->pno", v_16xNxC, jnp.stack(u))
  return _winograd_outputs(m_16xNxO, (b, th, tw))


def cpu_form(in_shape_BxHxWxC: tuple[int, ...], kernel_shape: tuple[int, ...]) -> str:
  """'winograd' or 'im2col': the form a CPU computes this convolution in."""
  _, h, w, c = in_shape_BxHxWxC
  if (tuple(kernel_shape[:2]) == (3, 3) and c >= WINOGRAD_MIN_CHANNELS
      and h >= 4 and w >= 4 and (h - 2) % 2 == 0 and (w - 2) % 2 == 0):
    return "winograd"
  return "im2col"


def _cpu(x_BxHxWxC, kernel_KxKxCxO):
  if cpu_form(x_BxHxWxC.shape, kernel_KxKxCxO.shape) == "winograd":
    return winograd_2x2_3x3(x_BxHxWxC, kernel_KxKxCxO)
  return im2col(x_BxHxWxC, kernel_KxKxCxO)


def valid(x_BxHxWxC: jax.Array, kernel_KxKxCxO: jax.Array) -> jax.Array:
  """Valid, stride-1 convolution (no bias): matrix products on CPU, XLA's elsewhere."""
  return jax.lax.platform_dependent(x_BxHxWxC, kernel_KxKxCxO, cpu=_cpu, default=xla)
