"""Throughput of polyjax's own training code on the PyTorch reference's workloads.

    PYTHONPATH=$PWD python benchmarks/run.py convnet --batch-size 64 --steps 32
    PYTHONPATH=$PWD python benchmarks/run.py mlp --batch-size 512 --steps 200
    PYTHONPATH=$PWD python benchmarks/run.py fig1 --steps 20000

Workloads are named and shaped like `torch_reference.py`'s:
  convnet: the Byrd & Lipton ConvNet on 32x32x3 inputs, 2 classes, weighted CE,
           SGD lr 1e-3 momentum 0.9; examples per second of training.
  mlp:     3 hidden layers of 200 on 64-dimensional inputs, same step.
  fig1:    the Figure 1 problem (220 2-D points, linear model, importance-weighted
           poly-tailed loss alpha 1, plain SGD lr 0.1, full batch, one step per
           epoch): `configs/gaussians_poly.py` built by `experiment.build`, trained the
           way `train.train_and_evaluate` trains it: calls of `train.FUSED_STEPS`
           one-step epochs, each call's order from `steps.epochs_indices` (a full
           batch is not shuffled: see `steps.epoch_indices`), its objectives fetched
           and checked; steps per second.

Everything timed is the code a user's run executes: `train_state.create` and
`make_optimizer`, `losses.get_loss`, `steps.make_train_step` inside
`steps.make_train_epoch` (the whole epoch in one compiled call, as in
`train.train_and_evaluate`). XLA flags come from the environment (`XLA_FLAGS`).
`--mode step` instead times the jitted train step called once per batch from
Python. The first call (compilation plus one run) is reported separately; the
timed call follows it and ends with `block_until_ready`. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import time

import jax
import numpy as np

from polyjax import experiment, losses, placement, steps, train_state, xla_runtime
from polyjax import train as train_lib

WORKLOADS = ("convnet", "mlp", "fig1")


def _classifier(workload: str, batch_size: int, steps_per_call: int, seed: int = 0):
  """(train_epoch, step_fn, state, data, idx_SxB) for the convnet or mlp workload."""
  if workload == "convnet":
    model_name, in_shape = "convnet", (32, 32, 3)
  else:
    model_name, in_shape = "mlp", (64,)
  tx = train_state.make_optimizer(lr=1e-3, momentum=0.9, weight_decay=0.0)
  model_def, state = train_state.create(
      model_name=model_name, model_kwargs={}, in_shape=in_shape, num_classes=2,
      num_groups=2, tx=tx, seed=seed)
  loss_fn = losses.get_loss("ce")
  # A small on-device training set (4 batches), visited in a fresh order each
  # pass, like the reference's fixed batch but through the real gather.
  n = 4 * batch_size
  rng = np.random.default_rng(seed)
  train = {
      "x": rng.standard_normal((n,) + in_shape, dtype=np.float32),
      "y": rng.integers(0, 2, n).astype(np.int32),
      "group": rng.integers(0, 2, n).astype(np.int32),
      "weight": rng.random(n, dtype=np.float32),
  }
  idx_SxB = np.concatenate([
      steps.epoch_indices(n, batch_size, seed=seed, epoch=e)
      for e in range(-(-steps_per_call // 4))])[:steps_per_call]
  return model_def, loss_fn, tx, state, train, idx_SxB


def _fig1(seed: int = 1):
  """`configs/gaussians_poly.py` with the reference's data seed, built as a run builds it."""
  spec = importlib.util.spec_from_file_location(
      "gaussians_poly", pathlib.Path(__file__).resolve().parents[1] / "configs" /
      "gaussians_poly.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.seed = config.data.seed = seed
  return config


def _fig1_calls(exp, state, train, num_steps: int):
  """`num_steps` one-step epochs in calls of at most train.FUSED_STEPS, as a run does."""
  n = len(exp.dataset.train)
  sh = exp.shardings
  done = 0
  while done < num_steps:
    epochs = range(done + 1, min(num_steps, done + train_lib.FUSED_STEPS) + 1)
    idx = steps.epochs_indices(n, n, seed=exp.order_seed, epochs=epochs)
    state, obj = exp.train_epoch(state, train, placement.to_global(idx, sh.stacked_batches))
    obj = np.asarray(obj)
    if not np.all(np.isfinite(obj)):
      raise RuntimeError("fig1: the training objective is not finite")
    done = epochs[-1]
  return state, obj


def run(workload: str, *, batch_size: int, num_steps: int, mode: str = "epoch") -> dict:
  mesh = placement.make_mesh(jax.devices()[:1])
  sh = placement.Shardings(mesh)
  if workload == "fig1":
    if mode != "epoch":
      raise ValueError("fig1 times a run's own loop: --mode epoch only")
    exp = experiment.build(_fig1(), mesh=mesh)
    train = placement.to_global(steps.split_arrays(exp.dataset.train), sh.replicated)

    def call(state, c):
      return _fig1_calls(exp, state, train, num_steps)
    state = exp.state
  else:
    model_def, loss_fn, tx, state, train, idx_SxB = _classifier(
        workload, batch_size, num_steps)
    train_step = steps.make_train_step(model_def=model_def, loss_fn=loss_fn, tx=tx)
    state = jax.device_put(state, sh.replicated)
    train = jax.device_put(train, sh.replicated)

    if mode == "epoch":
      train_epoch = steps.make_train_epoch(train_step, sh)

      def call(state, c):
        idx = jax.device_put(idx_SxB, sh.stacked_batches)
        state, obj_S = train_epoch(state, train, idx)
        return state, obj_S
    else:
      jit_step = jax.jit(train_step, donate_argnums=(0,))

      def call(state, c):
        obj = None
        for i in range(len(idx_SxB)):
          batch = jax.tree.map(lambda a: a[idx_SxB[i]], train)
          state, obj = jit_step(state, batch)
        return state, obj

  t0 = time.perf_counter()
  state, obj = call(state, 0)
  jax.block_until_ready((state, obj))
  first_call = time.perf_counter() - t0
  t0 = time.perf_counter()
  state, obj = call(state, 1)
  jax.block_until_ready((state, obj))
  seconds = time.perf_counter() - t0
  if not np.all(np.isfinite(np.asarray(obj))):
    raise RuntimeError(f"{workload}: the training objective is not finite")

  result = {"workload": workload, "mode": mode}
  if workload == "fig1":
    result.update(steps=num_steps, seconds=seconds, steps_per_s=num_steps / seconds)
  else:
    result.update(batch_size=batch_size, steps=num_steps, seconds=seconds,
                  examples_per_s=num_steps * batch_size / seconds)
  result.update(
      first_call_seconds=first_call,
      device=f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}",
      jax=jax.__version__, jaxlib=jax.lib.__version__ if hasattr(jax.lib, "__version__")
      else None, host=platform.node(), xla_flags=os.environ.get("XLA_FLAGS", ""))
  return result


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("workload", choices=WORKLOADS)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=32)
  parser.add_argument("--mode", choices=("epoch", "step"), default="epoch",
                      help="epoch: the whole-epoch compiled call; step: one jitted step per batch")
  parser.add_argument("--matmul_precision", choices=tuple(xla_runtime.MATMUL_PRECISIONS),
                      default="default", help="as config.matmul_precision")
  args = parser.parse_args(argv)
  if args.batch_size < 1 or args.steps < 1:
    parser.error("--batch-size and --steps must be >= 1")
  # What `xla_runtime.WithMatmulPrecision` does for a run's programs.
  with jax.default_matmul_precision(xla_runtime.MATMUL_PRECISIONS[args.matmul_precision]):
    result = run(args.workload, batch_size=args.batch_size, num_steps=args.steps,
                 mode=args.mode)
  print(json.dumps({**result, "matmul_precision": args.matmul_precision}), flush=True)


if __name__ == "__main__":
  main()
