"""Jitted, data-parallel training and evaluation over a one-axis device mesh.

The state is replicated and every batch is sharded along the mesh's 'data' axis;
XLA inserts the gradient all-reduce. Datasets that fit on the device are placed
there once, and a whole epoch runs inside one compiled call: the host only sends
the epoch's (steps, batch) index array, and the batch gather happens on device.
Evaluation sums counts inside jit and divides on the host (`polyjax.metrics`).

In a multi-process run the mesh spans every process's devices. Each process
holds the whole (small) host dataset and the same epoch index array, and
`to_global` makes each process transfer only the shards of its own devices.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from polyjax import metrics, weighting
from polyjax.data.splits import Split
from polyjax.losses import LossFn
from polyjax.train_state import ModelDef, TrainState

Batch = dict[str, jax.Array]
DATA_AXIS = "data"


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A one-axis mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


@dataclasses.dataclass(frozen=True)
class Shardings:
  mesh: jax.sharding.Mesh

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def batch(self) -> NamedSharding:
    """Leading (example) axis split over devices."""
    return NamedSharding(self.mesh, P(DATA_AXIS))

  @property
  def stacked_batches(self) -> NamedSharding:
    """(num_batches, batch, ...) arrays: the batch axis split over devices."""
    return NamedSharding(self.mesh, P(None, DATA_AXIS))


def to_global(tree, sharding: jax.sharding.Sharding):
  """Global arrays with `sharding` from host values that every process holds whole.

  Each process copies only the slices that its addressable devices hold (for a
  batch-sharded array: its slice of every batch), so nothing crosses processes
  and, unlike `jax.device_put`, no cross-process equality check runs. Typed PRNG
  keys are placed as their key data and rewrapped.
  """

  def put(a):
    if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(a)),
                                      impl=jax.random.key_impl(a))
    a = np.asarray(a)
    return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

  return jax.tree.map(put, tree)


def split_arrays(split: Split) -> dict[str, np.ndarray]:
  return {"x": split.x, "y": split.y, "group": split.group, "weight": split.weight}


def epoch_indices(n: int, batch_size: int, *, seed: int, epoch: int,
                  p: np.ndarray | None = None) -> np.ndarray:
  """(steps, batch_size) example indices for one epoch; the last partial batch is dropped.

  With `p` (the `resampled` weighting), the epoch is n draws with replacement with
  probabilities `p`, drawn anew every epoch (like PyTorch's WeightedRandomSampler);
  otherwise a permutation. Either way the order is a pure function of (seed,
  epoch), so a resumed run sees the same batches as an uninterrupted one. A full
  batch (`batch_size == n`, no resampling) is every example in stored order:
  shuffling it would only reorder the gradient's sum, and drawing a permutation
  (about 20 us) costs more than a full-batch step of a small model.
  """
  if p is None and batch_size == n:
    return np.arange(n, dtype=np.int32)[None]
  rng = np.random.default_rng([seed, epoch])
  perm = rng.permutation(n) if p is None else rng.choice(n, size=n, replace=True, p=p)
  steps = n // batch_size
  return perm[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def epochs_indices(n: int, batch_size: int, *, seed: int, epochs: range,
                   p: np.ndarray | None = None) -> np.ndarray:
  """(len(epochs) * steps, batch_size): `epoch_indices` of consecutive epochs, in order."""
  if p is None and batch_size == n:  # Full batch: stored order (see epoch_indices).
    return np.tile(np.arange(n, dtype=np.int32), (len(epochs), 1))
  return np.concatenate([epoch_indices(n, batch_size, seed=seed, epoch=e, p=p)
                         for e in epochs])


def pad_for_eval(split: Split, batch_size: int) -> dict[str, np.ndarray]:
  """Split arrays padded to whole batches, shaped (num_batches, batch_size, ...), plus a mask."""
  arrays = split_arrays(split)
  n = len(split)
  num_batches = max(1, -(-n // batch_size))
  pad = num_batches * batch_size - n
  out = {}
  for k, a in arrays.items():
    a = np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)])
    out[k] = a.reshape((num_batches, batch_size) + a.shape[1:])
  out["mask"] = (np.arange(num_batches * batch_size) < n).reshape(num_batches, batch_size)
  return out


def make_train_step(*, model_def: ModelDef, loss_fn: LossFn,
                    tx: optax.GradientTransformation,
                    reduction: weighting.Reduction = weighting.weighted_reduction,
                    preprocess: Callable | None = None) -> Callable[[TrainState, Batch], tuple]:
  """One SGD step on a batch; returns the new state and the batch objective.

  `reduction` (from `weighting.make_reduction`) turns per-example losses into the
  objective and updates group DRO's probabilities; the default is the weighted mean.
  `preprocess(x, rng=)` (the dataset's, e.g. uint8 -> normalised and augmented
  float32) runs on device with a key derived from the step.
  """

  def train_step(state: TrainState, batch: Batch):
    x = batch["x"]
    if preprocess is not None:
      x = preprocess(x, rng=jax.random.fold_in(state.rng, state.step))

    def objective(params):
      logits_BxC, model_state = model_def.apply(
          state.replace(params=params), x, train=True)
      loss_B = loss_fn(logits_BxC, batch["y"], batch["group"])
      obj, adv_probs = reduction(loss_B, batch["weight"], batch["group"], state.adv_probs)
      return obj, (model_state, adv_probs)

    (obj, (model_state, adv_probs)), grads = jax.value_and_grad(
        objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                              opt_state=opt_state, adv_probs=adv_probs)
    return new_state, obj

  return train_step


# XLA:CPU hands matmuls to YNNPACK/XNNPACK, whose fixed cost per call (about a
# microsecond) outweighs a tiny model's whole matmul: the Figure 1 linear model's
# full-batch step ran 1.5-2x faster with XLA's own emitters. Models whose step does
# at least this many multiply-adds (parameters x batch size) gain from them instead
# (the digits MLP at batch 64 ran about 1.2x slower without them).
SMALL_STEP_MACS = 100_000


def train_compiler_options(*, num_params: int, batch_size: int) -> dict[str, str] | None:
  """XLA options for the training program: none, except for tiny models on CPU."""
  if jax.default_backend() != "cpu" or num_params * batch_size >= SMALL_STEP_MACS:
    return None
  return {"xla_cpu_experimental_ynn_fusion_type": "",
          "xla_cpu_experimental_xnn_fusion_type": ""}


def make_train_epoch(train_step, shardings: Shardings, *,
                     compiler_options: dict[str, str] | None = None):
  """Jitted `(state, data, idx_SxB) -> (state, objective_S)`: a whole epoch in one call.

  `data` is the training split on device (replicated); `idx_SxB` holds the
  epoch's batches as example indices, sharded along the batch axis. `idx_SxB` may
  hold several consecutive epochs (`epochs_indices`): one call then trains them all.
  `compiler_options` (`train_compiler_options`) go to XLA with this program only.
  """

  def train_epoch(state, data, idx_SxB):

    def body(state, idx_B):
      batch = jax.tree.map(lambda a: a[idx_B], data)
      batch = jax.lax.with_sharding_constraint(batch, shardings.batch)
      return train_step(state, batch)

    return jax.lax.scan(body, state, idx_SxB)

  return jax.jit(
      train_epoch,
      in_shardings=(shardings.replicated, shardings.replicated, shardings.stacked_batches),
      out_shardings=(shardings.replicated, shardings.replicated),
      donate_argnums=(0,), compiler_options=compiler_options)


def make_eval_counts(*, model_def: ModelDef, loss_fn: LossFn, num_groups: int,
                     shardings: Shardings, preprocess: Callable | None = None):
  """Jitted `(state, padded) -> counts` summed over all batches of a padded split."""

  def eval_counts(state, padded):

    def body(total, batch):
      x = batch["x"] if preprocess is None else preprocess(batch["x"])
      logits_BxC, _ = model_def.apply(state, x, train=False)
      loss_B = loss_fn(logits_BxC, batch["y"], batch["group"])
      counts = metrics.batch_counts(
          logits_BxC=logits_BxC, labels_B=batch["y"], groups_B=batch["group"],
          loss_B=loss_B, weight_B=batch["weight"], mask_B=batch["mask"],
          num_groups=num_groups)
      return (counts if total is None else metrics.add(total, counts)), None

    first = jax.tree.map(lambda a: a[0], padded)
    rest = jax.tree.map(lambda a: a[1:], padded)
    total, _ = body(None, first)
    total, _ = jax.lax.scan(body, total, rest)
    return total

  return jax.jit(eval_counts,
                 in_shardings=(shardings.replicated, shardings.stacked_batches),
                 out_shardings=shardings.replicated)
