"""One valid 3x3 convolution layer inside a compiled loop, per CPU formulation.

    PYTHONPATH=$PWD python benchmarks/conv_layer.py --shape 64,30,64,64
    PYTHONPATH=$PWD python benchmarks/conv_layer.py --shape 64,12,128,128 --steps 4

Times `--steps` iterations of a `lax.scan` (the setting of polyjax's epoch loop)
of the forward pass or of the gradient (input and kernel) of one convolution of
a (B, H, H, C) input with a (3, 3, C, O) kernel, for each formulation below, the
formulations alternating over `--rounds`. Reports medians of process CPU time
per step (stable on a shared machine, where wall time depends on whether the
second core is free) and of wall time, and GFLOP per CPU second. Prints one JSON
line per formulation and pass. The ConvNet's conv2 is `--shape 64,30,64,64` at
batch 64; conv4 is `64,12,128,128`.

Formulations (see docs/BENCHMARKS.md, "ConvNet on CPU: what was tried"):
  im2col      `conv.im2col` differentiated by JAX (what polyjax uses for layers
              with few input channels or an odd output size)
  winograd    `conv.winograd_2x2_3x3`, its transforms with hand-written
              transposes, the rest differentiated by JAX (what polyjax uses
              for 3x3 kernels with >= 16 input channels and an even output
              size that 4 does not divide)
  winograd4   `conv.winograd_4x4_3x3`, the same for F(4x4, 3x3) (what polyjax
              uses where 4 divides the output size)
  xla         `lax.conv_general_dilated` differentiated by JAX
  im2col_dxconv  im2col forward; custom VJP whose input gradient is a valid XLA
              convolution of the explicitly padded output gradient with the
              flipped kernel, and whose kernel gradient is the patch matmul
  xla_canonical  XLA convolution forward; custom VJP with the same input
              gradient and the kernel gradient as a valid convolution with the
              batch as feature axis (all three convolutions in the canonical
              NHWC/HWIO layout that XLA:CPU hands to its libraries in a loop)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from polyjax import conv

_DN = ("NHWC", "HWIO", "NHWC")


def _xla(x, k):
  return jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=_DN)


def _dx_conv(g, k):
  """Input gradient: a valid convolution of the padded output gradient with the flipped kernel."""
  kh, kw = k.shape[:2]
  g_pad = jnp.pad(g, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
  # Without the barrier XLA folds the pad into the convolution's window, and a
  # padded convolution goes to Eigen instead of YNNPACK.
  return _xla(jax.lax.optimization_barrier(g_pad), jnp.flip(k, (0, 1)).swapaxes(2, 3))


def _dk_conv(x, g):
  """Kernel gradient as a valid convolution: C as batch, B as input features."""
  dk_CxKxKxO = _xla(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)))
  return jnp.transpose(dk_CxKxKxO, (1, 2, 0, 3))


def _custom(forward, dk):

  @jax.custom_vjp
  def conv(x, k):
    return forward(x, k)

  def fwd(x, k):
    return forward(x, k), (x, k)

  def bwd(res, g):
    x, k = res
    return _dx_conv(g, k), dk(x, g, k)

  conv.defvjp(fwd, bwd)
  return conv


def _dk_patches(x, g, k):
  return jax.vjp(lambda k: conv.im2col(x, k), k)[1](g)[0]


FORMULATIONS = {
    "im2col": conv.im2col,
    "winograd": conv.winograd_2x2_3x3,
    "winograd4": conv.winograd_4x4_3x3,
    "xla": _xla,
    "im2col_dxconv": _custom(conv.im2col, _dk_patches),
    "xla_canonical": _custom(_xla, lambda x, g, k: _dk_conv(x, g)),
}


def _compiled(conv, grad: bool, k, x_SxBxHxHxC):
  def f(k, x):
    if grad:
      return jax.grad(lambda k, x: jnp.mean(conv(x, k) ** 2), argnums=(0, 1))(k, x)
    return conv(x, k)

  def loop(k, xs):
    def body(c, x):  # The carry changes the input every step: nothing is hoisted.
      out = f(k * c, x)
      return c * 1.0000001, jax.tree.reduce(lambda a, b: a + jnp.sum(b), out, 0.0)
    return jax.lax.scan(body, jnp.float32(1), xs)[1]

  compiled = jax.jit(loop).lower(k, x_SxBxHxHxC).compile()
  compiled(k, x_SxBxHxHxC).block_until_ready()
  return compiled


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shape", default="64,30,64,64", help="B,H,C,O")
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--rounds", type=int, default=3)
  # "xla" is left out by default: its gradient takes seconds per step in a loop.
  parser.add_argument("--only", default="im2col,winograd,im2col_dxconv,xla_canonical")
  args = parser.parse_args(argv)
  b, h, c, o = (int(v) for v in args.shape.split(","))
  names = args.only.split(",")
  unknown = sorted(set(names) - set(FORMULATIONS))
  if unknown or h < 3 or min(b, c, o, args.steps, args.rounds) < 1:
    parser.error(f"--only must name {sorted(FORMULATIONS)}, got {unknown}; sizes must be >= 1, H >= 3")
  if "winograd" in names and h % 2:
    parser.error(f"winograd needs an even output size: --shape H must be even, got {h}")
  if "winograd4" in names and (h - 2) % 4:
    parser.error(f"winograd4 needs an output size divisible by 4: --shape H - 2, got {h - 2}")
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((args.steps, b, h, h, c), dtype=np.float32))
  k = jnp.asarray(rng.standard_normal((3, 3, c, o), dtype=np.float32))
  cases = {(n, p): _compiled(FORMULATIONS[n], p == "grad", k, x)
           for n in names for p in ("forward", "grad")}
  cpu = {key: [] for key in cases}
  wall = {key: [] for key in cases}
  for r in range(args.rounds):
    for key in (list(cases) if r % 2 == 0 else list(cases)[::-1]):
      p0, t0 = time.process_time(), time.perf_counter()
      cases[key](k, x).block_until_ready()
      cpu[key].append(time.process_time() - p0)
      wall[key].append(time.perf_counter() - t0)
  flops = 2 * b * (h - 2) ** 2 * 9 * c * o
  for (name, kind), times in cpu.items():
    per_step = statistics.median(times) / args.steps
    print(json.dumps({
        "formulation": name, "pass": kind, "shape": [b, h, c, o],
        "cpu_ms_per_step": round(per_step * 1e3, 2),
        "wall_ms_per_step": round(statistics.median(wall[(name, kind)]) / args.steps * 1e3, 2),
        "gflop_per_cpu_s": round(flops * (3 if kind == "grad" else 1) / per_step / 1e9, 1),
    }))


if __name__ == "__main__":
  main()
