"""One training epoch of several ConvNets, one after another or stacked in one program.

    PYTHONPATH=$PWD python benchmarks/stacked_members.py [--members 10] [--steps 68]
        [--variants vmap,map,unrolled] [--forms xla,im2col,winograd4]

The question behind `polyjax.sweep` on an accelerator: is training M models in one
program faster than training them one after another? Each member is the ConvNet at
batch 64 with its own batches (`benchmarks/run.py`'s convnet workload: the train
step of `steps.make_train_step`, in a `lax.scan` over `--steps` steps). Timed, after
compilation, median of `--rounds`:
  sequential  the single member's compiled epoch, called M times
  vmap        `jax.vmap` over the stacked states inside each step (what the sweep does)
  map         `lax.map` over the members inside each step
  unrolled    the M members' steps written out one after another in one step
Each stacked variant runs with the model's convolution on this platform (on a CPU
`conv.cpu_conv`, elsewhere XLA's own), and `vmap` also with every convolution as
XLA's, `conv.im2col`, or the forms `conv.cpu_form` picks (`--forms`). Training
only: no evaluation, checkpoints or files. XLA flags come from the environment
(e.g. XLA_FLAGS=--xla_gpu_deterministic_ops=true, as polyjax runs by default).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import run as run_bench  # noqa: E402

from polyjax import conv, steps  # noqa: E402

def _xla_valid(x, k, strides=(1, 1)):
  return jax.lax.conv_general_dilated(x, k, strides, "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


# What `conv.cpu_conv` (the CPU model's convolution) computes, per --forms value: it
# looks `cpu_form` and `im2col` up when traced, so replacing them picks the form.
FORMS = {
    "xla": {"cpu_form": lambda *a, **k: "im2col", "im2col": _xla_valid},
    "im2col": {"cpu_form": lambda *a, **k: "im2col", "im2col": conv.im2col},
    "winograd4": {"cpu_form": conv.cpu_form, "im2col": conv.im2col},
}


def _timed(fn, *args, rounds: int) -> tuple[float, float]:
  """(first call s, median of `rounds` later calls s) of a fresh jit of `fn`."""
  jitted = jax.jit(fn)
  t0 = time.perf_counter()
  jax.block_until_ready(jitted(*args))
  first = time.perf_counter() - t0
  times = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    jax.block_until_ready(jitted(*args))
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--members", type=int, default=10)
  parser.add_argument("--steps", type=int, default=68)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--variants", default="vmap,map,unrolled")
  parser.add_argument("--forms", default="xla,im2col,winograd4",
                      help="convolution forms tried with vmap ('xla': XLA's convolution)")
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  m_count, b = args.members, args.batch_size
  model_def, loss_fn, tx, state, train, _ = run_bench._classifier("convnet", b, args.steps)
  step = steps.make_train_step(model_def=model_def, loss_fn=loss_fn, tx=tx)
  n = len(train["y"])
  rng = np.random.default_rng(0)
  idx_SxMxB = jnp.asarray(np.stack([
      np.stack([rng.permutation(n)[:b] for _ in range(m_count)])
      for _ in range(args.steps)]).astype(np.int32))
  train = jax.device_put(train)
  state_M = jax.tree.map(lambda a: jnp.stack([a] * m_count), state)

  def member(state, idx_B):
    return step(state, {k: a[idx_B] for k, a in train.items()})

  def stacked(over_members):
    return lambda state_M, idx: jax.lax.scan(
        lambda s, i: over_members(s, i), state_M, idx)

  def unrolled(s, i):
    outs = [member(jax.tree.map(lambda a: a[m], s), i[m]) for m in range(m_count)]
    return jax.tree.map(lambda *a: jnp.stack(a), *outs)

  variants = {"vmap": jax.vmap(member),
              "map": lambda s, i: jax.lax.map(lambda a: member(*a), (s, i)),
              "unrolled": unrolled}
  out = {"device": jax.devices()[0].device_kind, "members": m_count, "steps": args.steps,
         "batch_size": b, "jax": jax.__version__}

  single = jax.jit(lambda s, idx: jax.lax.scan(member, s, idx))
  jax.block_until_ready(single(state, idx_SxMxB[:, 0]))
  times = []
  for _ in range(args.rounds):
    t0 = time.perf_counter()
    for m in range(m_count):
      jax.block_until_ready(single(state, idx_SxMxB[:, m]))
    times.append(time.perf_counter() - t0)
  out["sequential_s"] = round(statistics.median(times), 4)

  original = {name: getattr(conv, name) for name in ("cpu_form", "im2col")}
  try:
    for form in args.forms.split(","):
      for name, fn in FORMS[form].items():
        setattr(conv, name, fn)
      for name in args.variants.split(","):
        if form != "xla" and name != "vmap":
          continue
        # A new function per variant: jit caches by function.
        first, seconds = _timed(stacked(variants[name]), state_M, idx_SxMxB,
                                rounds=args.rounds)
        out[f"{name}_{form}"] = {"epoch_s": round(seconds, 4), "first_call_s": round(first, 2)}
  finally:
    for name, fn in original.items():
      setattr(conv, name, fn)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
