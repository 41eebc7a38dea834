"""How long a checkpoint save takes: `python benchmarks/checkpoint_save.py`.

Saves the train state of the digits MLP (64 inputs, 3 hidden layers of 200), the
ConvNet (32x32x3 inputs, 2 classes) and a state with the parameter shapes of
ResNet-50 (2 classes, BatchNorm statistics, SGD momentum) through
`polyjax.checkpointing.Checkpoints`, several times each, and prints the time the
training loop is blocked by `save` (the copy to host memory and Orbax's own
preparation; the write goes on in the background) and the time until the
checkpoint is committed on disk. Each is measured as `save` does it (the state's
host copy given to Orbax, `checkpointing.host_copy`) and, alternately in the same
process, with the device arrays given to Orbax as they are.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
from flax import nnx

from polyjax import checkpointing, train_state


def resnet50_shapes(num_classes: int = 2):
  """(params, batch_stats): ResNet-50 (ImageNet layout) parameter and BatchNorm shapes."""
  params, stats = {}, {}

  def bn(name, c):
    params[f"{name}/scale"], params[f"{name}/bias"] = (c,), (c,)
    stats[f"{name}/mean"], stats[f"{name}/var"] = (c,), (c,)

  params["stem/conv"] = (7, 7, 3, 64)
  bn("stem/bn", 64)
  cin = 64
  for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
    for b in range(blocks):
      name = f"stage{stage}/block{b}"
      params[f"{name}/conv1"] = (1, 1, cin, width)
      bn(f"{name}/bn1", width)
      params[f"{name}/conv2"] = (3, 3, width, width)
      bn(f"{name}/bn2", width)
      params[f"{name}/conv3"] = (1, 1, width, 4 * width)
      bn(f"{name}/bn3", 4 * width)
      if b == 0:
        params[f"{name}/proj"] = (1, 1, cin, 4 * width)
        bn(f"{name}/proj_bn", 4 * width)
      cin = 4 * width
  params["head/kernel"], params["head/bias"] = (cin, num_classes), (num_classes,)
  return params, stats


def state_from_shapes(params_shapes, stats_shapes):
  key = jax.random.key(0)
  params = nnx.State({k: jax.random.normal(jax.random.fold_in(key, i), s) * 0.01
                      for i, (k, s) in enumerate(params_shapes.items())})
  stats = nnx.State({k: jnp.ones(s) for k, s in stats_shapes.items()})
  tx = train_state.make_optimizer(lr=0.1, momentum=0.9, weight_decay=0.0)
  return train_state.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                model_state=stats, opt_state=tx.init(params), rng=key,
                                adv_probs=jnp.full((2,), 0.5))


def model_state(model_name: str, in_shape: tuple[int, ...]):
  _, state = train_state.create(
      model_name=model_name, model_kwargs={}, in_shape=in_shape, num_classes=2,
      num_groups=2, tx=train_state.make_optimizer(lr=0.1, momentum=0.9, weight_decay=0.0),
      seed=0)
  return state


def measure(state, repeats: int, *, device_arrays: bool = False) -> dict[str, float]:
  """Median blocked and committed times of `repeats` saves (after a first one)."""
  blocked, committed = [], []
  with tempfile.TemporaryDirectory() as d:
    ckpts = checkpointing.Checkpoints(d, every_epochs=1)
    for epoch in range(1, repeats + 2):
      t0 = time.perf_counter()
      if device_arrays:  # What `save` did before it made a host copy.
        ckpts._write(epoch, checkpointing._to_saved(state), meta={"step": epoch},
                     best_value=0.5)
      else:
        ckpts.end_epoch(epoch, state, meta={"step": epoch}, value=0.5, is_best=False,
                        force=True)
      t1 = time.perf_counter()
      ckpts.wait()
      t2 = time.perf_counter()
      if epoch > 1:  # The first save also sets up the directory and threads.
        blocked.append(t1 - t0)
        committed.append(t2 - t0)
    ckpts.close()
  return {"blocked_s": statistics.median(blocked), "committed_s": statistics.median(committed)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=3,
                      help="alternating rounds of host-copy and device-array saves")
  args = parser.parse_args()
  print(f"device: {jax.devices()[0].device_kind}", flush=True)
  for name, state in (("digits mlp", model_state("mlp", (64,))),
                      ("convnet", model_state("convnet", (32, 32, 3))),
                      ("resnet50-shaped", state_from_shapes(*resnet50_shapes()))):
    n = sum(x.size for x in jax.tree.leaves(state.params))
    size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(
        checkpointing.host_copy(state)))
    runs = {"host copy": [], "device arrays": []}
    for _ in range(args.rounds):
      for way in runs:
        runs[way].append(measure(state, args.repeats, device_arrays=way == "device arrays"))
    shown = "; ".join(
        f"{way}: blocks {statistics.median(r['blocked_s'] for r in rs) * 1e3:.1f} ms, "
        f"committed after {statistics.median(r['committed_s'] for r in rs) * 1e3:.1f} ms"
        for way, rs in runs.items())
    print(f"{name}: {n / 1e6:.2f}M params, state {size / 2**20:.1f} MiB; {shown} "
          f"(medians of {args.rounds} rounds x {args.repeats} saves)", flush=True)


if __name__ == "__main__":
  main()
