"""How long a checkpoint save takes: `python benchmarks/checkpoint_save.py`.

Saves the train state of the ConvNet (32x32x3 inputs, 2 classes) and a state with
the parameter shapes of ResNet-50 (2 classes, BatchNorm statistics, SGD momentum)
through `polyjax.checkpointing.Checkpoints`, several times each, and prints the
time the training loop is blocked by `save` (device-to-host copy; the write goes
on in the background) and the time until the checkpoint is committed on disk.
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


def convnet_state():
  _, state = train_state.create(
      model_name="convnet", model_kwargs={}, in_shape=(32, 32, 3), num_classes=2,
      num_groups=2, tx=train_state.make_optimizer(lr=0.1, momentum=0.9, weight_decay=0.0),
      seed=0)
  return state


def measure(state, repeats: int) -> dict[str, float]:
  blocked, committed = [], []
  with tempfile.TemporaryDirectory() as d:
    ckpts = checkpointing.Checkpoints(d, every_epochs=1)
    for epoch in range(1, repeats + 2):
      t0 = time.perf_counter()
      ckpts.save(epoch, state, meta={"step": epoch}, best_value=0.5)
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
  args = parser.parse_args()
  for name, state in (("convnet", convnet_state()),
                      ("resnet50-shaped", state_from_shapes(*resnet50_shapes()))):
    n = sum(x.size for x in jax.tree.leaves(state.params))
    size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(
        state.replace(rng=jax.random.key_data(state.rng))))
    r = measure(state, args.repeats)
    print(f"{name}: {n / 1e6:.2f}M params, state {size / 2**20:.0f} MiB; save blocks "
          f"{r['blocked_s'] * 1e3:.0f} ms, committed after {r['committed_s'] * 1e3:.0f} ms "
          f"(median of {args.repeats})", flush=True)


if __name__ == "__main__":
  main()
