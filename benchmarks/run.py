"""Throughput of polyjax's own training code on the PyTorch reference's workloads.

    PYTHONPATH=$PWD python benchmarks/run.py convnet --batch-size 64 --steps 32
    PYTHONPATH=$PWD python benchmarks/run.py mlp --batch-size 512 --steps 200
    PYTHONPATH=$PWD python benchmarks/run.py fig1 --steps 20000

Workloads are named and shaped like `torch_reference.py`'s:
  convnet: the Byrd & Lipton ConvNet on 32x32x3 inputs, 2 classes, weighted CE,
           SGD lr 1e-3 momentum 0.9; examples per second of training.
  mlp:     3 hidden layers of 200 on 64-dimensional inputs, same step.
  fig1:    the Figure 1 problem (220 2-D points, linear model, importance-weighted
           poly-tailed loss alpha 1, plain SGD lr 0.1), full batch reshuffled every
           step; steps per second of the compiled loop.

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
import json
import os
import platform
import time

import jax
import numpy as np

from polyjax import data, losses, steps, train_state

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


def _fig1(num_steps: int, seed: int = 1):
  ds = data.load("gaussians", weighting_mode="reweighted", exponent=1.0, seed=seed)
  tx = train_state.make_optimizer(lr=0.1, momentum=0.0, weight_decay=0.0)
  model_def, state = train_state.create(
      model_name="linear", model_kwargs={}, in_shape=ds.in_shape, num_classes=2,
      num_groups=2, tx=tx, seed=seed)
  loss_fn = losses.get_loss("poly", alpha=1.0, beta=1.0, kind="logit")
  return model_def, loss_fn, tx, state, steps.split_arrays(ds.train), len(ds.train)


def _reshuffled(n: int, num_steps: int, seed: int) -> np.ndarray:
  """(num_steps, n): a fresh permutation of all n examples for every step."""
  return np.random.default_rng(seed).permuted(
      np.tile(np.arange(n, dtype=np.int32), (num_steps, 1)), axis=1)


def run(workload: str, *, batch_size: int, num_steps: int, mode: str = "epoch") -> dict:
  mesh = steps.make_mesh(jax.devices()[:1])
  sh = steps.Shardings(mesh)
  if workload == "fig1":
    model_def, loss_fn, tx, state, train, n = _fig1(num_steps)
    batch_size = n
    make_idx = lambda call: _reshuffled(n, num_steps, seed=call)  # noqa: E731
  else:
    model_def, loss_fn, tx, state, train, idx_SxB = _classifier(
        workload, batch_size, num_steps)
    make_idx = lambda call: idx_SxB  # noqa: E731
  train_step = steps.make_train_step(model_def=model_def, loss_fn=loss_fn, tx=tx)
  state = jax.device_put(state, sh.replicated)
  train = jax.device_put(train, sh.replicated)

  if mode == "epoch":
    train_epoch = steps.make_train_epoch(train_step, sh)

    def call(state, c):
      idx = jax.device_put(make_idx(c), sh.stacked_batches)
      state, obj_S = train_epoch(state, train, idx)
      return state, obj_S
  else:
    jit_step = jax.jit(train_step, donate_argnums=(0,))

    def call(state, c):
      idx = make_idx(c)
      obj = None
      for i in range(len(idx)):
        batch = jax.tree.map(lambda a: a[idx[i]], train)
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
  args = parser.parse_args(argv)
  if args.batch_size < 1 or args.steps < 1:
    parser.error("--batch-size and --steps must be >= 1")
  print(json.dumps(run(args.workload, batch_size=args.batch_size, num_steps=args.steps,
                       mode=args.mode)), flush=True)


if __name__ == "__main__":
  main()
