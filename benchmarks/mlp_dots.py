"""How fast the MLP step's matrix products alone run: a floor under the `mlp` workload.

    PYTHONPATH=$PWD python benchmarks/mlp_dots.py [--batch-size 512] [--steps 200] [--rounds 5]

The `mlp` workload's step (3 hidden layers of 200 on 64 inputs, 2 classes) does 11
matrix products: 4 forward, 3 input gradients (none for the input itself) and 4
weight gradients. This times those 11 products and nothing else (no bias, ReLU,
loss, optimizer or gather), inside a `lax.scan` over steps like the epoch program,
and the whole step (`benchmarks/run.py mlp`) in the same process, alternately. The
ratio of the two says how much of the step is the products; the products' rate
says how far any step built from XLA:CPU's dots can go. For scale it also times one
large square product (`--peak-size`, 2048 x 2048 by default), the most favourable
shape for a matrix library: its rate is about as close to the machine's peak
arithmetic as XLA gets. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from benchmarks import run as run_lib

SIZES = (64, 200, 200, 200, 2)


def products_flops(batch: int) -> int:
  """Multiply-adds x 2 of the 11 products of one step."""
  fwd = sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:])) * batch
  input_grads = sum(a * b for a, b in zip(SIZES[1:-1], SIZES[2:])) * batch
  return 2 * (2 * fwd + input_grads)  # forward + weight gradients + input gradients


def make_products(batch: int, num_steps: int):
  """Jitted scan of `num_steps` steps of the 11 products; weights change each step
  so that no step's work can be hoisted out of the loop."""
  key = jax.random.key(0)
  ws = [jax.random.normal(jax.random.fold_in(key, i), (a, b)) * 0.05
        for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:]))]
  x = jax.random.normal(key, (4 * batch, SIZES[0]))

  def step(ws, i):
    h = jax.lax.dynamic_slice_in_dim(x, (i % 4) * batch, batch)
    acts = [h]
    for w in ws:
      acts.append(acts[-1] @ w)
    g = acts[-1]
    new = []
    for layer in reversed(range(len(ws))):
      new.append(ws[layer] - 1e-6 * (acts[layer].T @ g))
      if layer > 0:
        g = g @ ws[layer].T
    return new[::-1], jnp.sum(g)

  def loop(ws):
    return jax.lax.scan(step, ws, jnp.arange(num_steps))

  return jax.jit(loop), ws


def large_product_gflop_per_s(n: int, repeats: int = 10) -> float:
  """XLA's rate on one n x n @ n x n float32 product: the best of `repeats` calls."""
  a = jax.random.normal(jax.random.key(1), (n, n))
  b = jax.random.normal(jax.random.key(2), (n, n))
  product = jax.jit(jnp.matmul)
  jax.block_until_ready(product(a, b))
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(product(a, b))
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best / 1e9


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch-size", type=int, default=512)
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--peak-size", type=int, default=2048,
                 help="side of the large square product timed for scale")
  args = p.parse_args(argv)
  products, ws = make_products(args.batch_size, args.steps)
  jax.block_until_ready(products(ws))
  dots_s, step_s = [], []
  for _ in range(args.rounds):
    t = time.perf_counter()
    jax.block_until_ready(products(ws))
    dots_s.append((time.perf_counter() - t) / args.steps)
    r = run_lib.run("mlp", batch_size=args.batch_size, num_steps=args.steps)
    step_s.append(r["seconds"] / args.steps)
  dots, step = statistics.median(dots_s), statistics.median(step_s)
  flops = products_flops(args.batch_size)
  peak = large_product_gflop_per_s(args.peak_size)
  print(json.dumps({
      "batch_size": args.batch_size, "steps": args.steps, "rounds": args.rounds,
      "products_gflop_per_step": flops / 1e9,
      "products_only_ms_per_step": dots * 1e3, "whole_step_ms_per_step": step * 1e3,
      "products_share_of_step": dots / step,
      "products_gflop_per_s": flops / dots / 1e9,
      "whole_step_gflop_per_s_of_products": flops / step / 1e9,
      "products_only_examples_per_s": args.batch_size / dots,
      "whole_step_examples_per_s": args.batch_size / step,
      "large_product_size": args.peak_size, "large_product_gflop_per_s": peak,
      "device": f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}"}), flush=True)


if __name__ == "__main__":
  main()
