"""Jitted, data-parallel training and evaluation over a one-axis device mesh.

The state is replicated and every batch is sharded along the mesh's 'data' axis;
XLA inserts the gradient all-reduce. Datasets that fit on the device are placed
there once, and a whole epoch runs inside one compiled call: the host only sends
the epoch's (steps, batch) index array, and the batch gather happens on device.
Evaluation sums counts inside jit and divides on the host (`polyjax.metrics`).

In a multi-process run the mesh spans every process's devices. Each process
holds the whole (small) host dataset and the same epoch index array, and
`to_global` makes each process transfer only the shards of its own devices.

Datasets too large for that (`data.pipeline='stream'`) stay in their source:
`streamed_batches` reads each process's rows of every batch with grain, ahead of
the device, and a jitted step runs per batch (`make_streamed_train_epoch`,
`make_streamed_eval_counts`), in the same batch order as the in-memory path.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, MutableMapping, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from polyjax import checkpointing, metrics, weighting
from polyjax.errors import ConfigError
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
  keys are placed as their key data and rewrapped. Arrays that already have
  `sharding` are returned as they are.
  """

  def put(a):
    if isinstance(a, jax.Array) and a.sharding == sharding:
      return a  # Already placed (e.g. restored with this sharding).
    if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(a)),
                                      impl=jax.random.key_impl(a))
    a = np.asarray(a)
    return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

  return jax.tree.map(put, tree)


def split_arrays(split: Split) -> dict[str, np.ndarray]:
  if not isinstance(split, Split):  # A StreamSplit: its images are not in memory.
    raise ConfigError(f"config.data.pipeline='stream' splits are read per batch; this code "
                      f"path needs the split in memory (data.pipeline='memory'), got "
                      f"{type(split).__name__}")
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


def eval_indices(n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(num_batches, batch_size) example indices covering 0..n-1 once, in order, with -1
  padding the last batch, and the mask (True for real examples)."""
  num_batches = max(1, -(-n // batch_size))
  idx = np.arange(num_batches * batch_size)
  mask = idx < n
  return (np.where(mask, idx, -1).reshape(num_batches, batch_size),
          mask.reshape(num_batches, batch_size))


def eval_batch_size(batch_size: int, splits: Sequence[Split], multiple_of: int) -> int:
  """The batch size that evaluates all `splits` in one pass (`pack_for_eval`) in as
  few batches of at most `batch_size` as possible, with the least padding: their
  total divided evenly over those batches, rounded up to `multiple_of` (the mesh
  size). Digits' 1,126 examples at 1000: 2 batches of 563, not 2 of 1000."""
  total = max(1, sum(len(s) for s in splits))
  num_batches = -(-total // batch_size)
  per_batch = -(-total // num_batches)
  return -(-per_batch // multiple_of) * multiple_of


def pack_for_eval(splits: Sequence[Split], batch_size: int,
                  keys: Sequence[str] = ("x", "y", "group", "weight")) -> dict[str, np.ndarray]:
  """The splits' arrays (`keys` of them) one after another, padded to whole batches
  and shaped (num_batches, batch_size, ...), plus 'mask' (num_batches, batch_size,
  S): True where a row is a real example of split s. One pass (`make_eval_counts`)
  evaluates every split, with one partial batch in all rather than one per split."""
  arrays = [split_arrays(s) for s in splits]
  sizes = [len(s) for s in splits]
  _, real = eval_indices(sum(sizes), batch_size)
  pad = real.size - sum(sizes)
  out = {}
  for k in keys:
    a = arrays[0][k]
    a = np.concatenate([arr[k] for arr in arrays] + [np.zeros((pad,) + a.shape[1:], a.dtype)])
    out[k] = a.reshape(real.shape + a.shape[1:])
  split_of_row = np.repeat(np.arange(len(splits) + 1), sizes + [pad])  # Padding: split S.
  mask = split_of_row[:, None] == np.arange(len(splits))[None, :]
  out["mask"] = mask.reshape(real.shape + (len(splits),))
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


DETERMINISTIC_GPU_FLAG = "--xla_gpu_deterministic_ops"


def set_deterministic(on: bool, environ: MutableMapping[str, str] = os.environ) -> None:
  """With `on`, asks XLA:GPU for deterministic programs (`--xla_gpu_deterministic_ops`
  in XLA_FLAGS: no autotuning, whose pick of convolution algorithm varies between
  processes, and deterministic reductions and scatters); XLA reads XLA_FLAGS when
  its backend starts, so this runs before JAX's first computation. An XLA_FLAGS that
  already names the flag is left as the user set it. CPU programs are deterministic
  either way."""
  flags = environ.get("XLA_FLAGS", "")
  if on and DETERMINISTIC_GPU_FLAG not in flags:
    environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_GPU_FLAG}=true".strip()


# config.matmul_precision -> jax_default_matmul_precision ('default': the platform's
# choice, e.g. TF32 products and convolutions on NVIDIA GPUs from Ampere on).
MATMUL_PRECISIONS = {"default": None, "bfloat16": "bfloat16",
                     "tensorfloat32": "tensorfloat32", "float32": "float32"}


class WithMatmulPrecision:
  """`fn` (a jitted program, or a function that calls some) traced under
  `config.matmul_precision`: every product and convolution whose precision is not
  set explicitly, the model's, the loss's and the custom CPU convolution forms'
  alike. JAX keys its compiled programs by this setting, so the wrapped program
  does not change what other callers of `fn` get."""

  def __init__(self, fn: Callable, matmul_precision: str):
    if matmul_precision not in MATMUL_PRECISIONS:
      raise ConfigError(f"config.matmul_precision={matmul_precision!r} is not known; "
                        f"valid: {', '.join(MATMUL_PRECISIONS)}")
    self.fn, self.precision = fn, MATMUL_PRECISIONS[matmul_precision]

  def __call__(self, *args, **kwargs):
    with jax.default_matmul_precision(self.precision):
      return self.fn(*args, **kwargs)

  def lower(self, *args, **kwargs):
    with jax.default_matmul_precision(self.precision):
      return self.fn.lower(*args, **kwargs)


def use_compilation_cache(directory: str) -> None:
  """Keeps every program XLA compiles from here on (training and evaluation
  programs, and the model's initialisation) in `directory`,
  so that a later run of the same shapes loads it instead of compiling: JAX's
  persistent cache, keyed by the program, the compile options and the JAX/XLA
  versions, with no minimum compile time, since a small run's programs each compile
  in well under JAX's default threshold of a second.

  Raises checkpointing.CheckpointDirError (naming --compilation_cache_dir) if the
  directory cannot be written.
  """
  directory = os.path.abspath(os.path.expanduser(directory))
  checkpointing.check_writable(directory, "--compilation_cache_dir")
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


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


def _eval_batch(*, model_def: ModelDef, loss_fn: LossFn, num_groups: int,
                preprocess: Callable | None):
  """`(state, batch) -> counts` of one padded batch, with a leading split axis: the
  model runs once on the batch, and the counts of split s take the rows of
  `batch['mask'][:, s]`."""

  def eval_batch(state, batch):
    x = batch["x"] if preprocess is None else preprocess(batch["x"])
    logits_BxC, _ = model_def.apply(state, x, train=False)
    loss_B = loss_fn(logits_BxC, batch["y"], batch["group"])

    def split_counts(mask_B):
      return metrics.batch_counts(
          logits_BxC=logits_BxC, labels_B=batch["y"], groups_B=batch["group"],
          loss_B=loss_B, weight_B=batch["weight"], mask_B=mask_B, num_groups=num_groups)

    return jax.vmap(split_counts, in_axes=1)(batch["mask"])

  return eval_batch


def make_eval_counts(*, model_def: ModelDef, loss_fn: LossFn, num_groups: int,
                     shardings: Shardings, preprocess: Callable | None = None):
  """Jitted `(state, packed) -> counts` of every split of `pack_for_eval`'s arrays,
  summed over all batches, with a leading axis over the splits (in packed order)."""
  eval_batch = _eval_batch(model_def=model_def, loss_fn=loss_fn, num_groups=num_groups,
                           preprocess=preprocess)

  def eval_counts(state, packed):

    def body(total, batch):
      return metrics.add(total, eval_batch(state, batch)), None

    # Zeros, then every batch in the scan: one copy of the model in the program.
    shapes = jax.eval_shape(eval_batch, state, jax.tree.map(lambda a: a[0], packed))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return jax.lax.scan(body, zeros, packed)[0]

  return jax.jit(eval_counts,
                 in_shardings=(shardings.replicated, shardings.stacked_batches),
                 out_shardings=shardings.replicated)


# --- Streamed input (data.pipeline='stream') ---------------------------------------
# The split stays in its source (`polyjax.data.stream.StreamSplit`); every global
# batch of `epoch_indices` / `eval_indices` is read by grain, each process decoding
# only the rows its own devices hold, and assembled into a global array with
# `jax.make_array_from_process_local_data`. One jitted step runs per batch while
# grain's threads decode the next ones.

STREAM_THREADS = 8  # grain reader threads, each decoding one local batch (decoding releases the GIL).
STREAM_PREFETCH_BATCHES = 8  # Local batches read ahead of the device step (at least the threads).


def process_rows(sharding: jax.sharding.Sharding, batch_size: int, *,
                 process_index: int | None = None,
                 process_of: Callable[[jax.Device], int] | None = None) -> slice:
  """The rows [start, stop) of a (batch_size, ...) array with `sharding` that the
  devices of process `process_index` (default: this one) hold.

  `process_of(device)` (default `device.process_index`) lets a test split one
  process's devices into pretend processes. Raises ValueError when those rows are
  not one contiguous block (a mesh whose device order interleaves processes).
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_of = (lambda d: d.process_index) if process_of is None else process_of
  rows: set[int] = set()
  for device, index in sharding.devices_indices_map((batch_size,)).items():
    if process_of(device) == process_index:
      rows.update(range(batch_size)[index[0]])
  if not rows:
    raise ValueError(f"process {process_index} holds no rows of the batch under {sharding}")
  start, stop = min(rows), max(rows) + 1
  if len(rows) != stop - start:
    raise ValueError(f"process {process_index}'s rows of the batch are not contiguous under "
                     f"{sharding}; order the mesh's devices by process")
  return slice(start, stop)


def read_local_batches(split, idx_SxB: np.ndarray, rows: slice, *,
                       mask_SxB: np.ndarray | None = None, num_threads: int = STREAM_THREADS,
                       prefetch_batches: int = STREAM_PREFETCH_BATCHES):
  """Yields, in order, the host arrays of rows `rows` of each batch `idx_SxB` of a
  `StreamSplit` (x decoded, y, group, weight; 'mask' from `mask_SxB` if given).

  grain's reader threads each decode one local batch, up to `prefetch_batches`
  ahead of the consumer, so decoding overlaps the device step. (One thread per
  batch rather than per example: per-example hand-offs cost more than decoding a
  32x32 image.) Index -1 is padding: a zero image, y, group and weight 0.
  """
  local_SxL = np.ascontiguousarray(idx_SxB[:, rows])
  mask_SxL = None if mask_SxB is None else np.ascontiguousarray(mask_SxB[:, rows])

  def read(s):
    idx_L = local_SxL[s]
    valid_L = idx_L >= 0
    safe_L = np.where(valid_L, idx_L, 0)
    local = {"x": split.read(idx_L)}
    for k in ("y", "group", "weight"):
      a = getattr(split, k)
      local[k] = np.where(valid_L, a[safe_L], 0).astype(a.dtype)
    if mask_SxL is not None:
      local["mask"] = mask_SxL[s]
    return local

  batches = (grain.MapDataset.range(len(local_SxL)).map(read)
             .to_iter_dataset(grain.ReadOptions(
                 num_threads=num_threads,
                 prefetch_buffer_size=max(prefetch_batches, num_threads))))
  count = 0
  for local in batches:
    yield local
    count += 1
  if count != len(local_SxL):
    raise RuntimeError(f"streamed {count} batches, expected {len(local_SxL)}")


def streamed_batches(split, idx_SxB: np.ndarray, sharding: jax.sharding.Sharding,
                     **read_kwargs):
  """Yields the global batches `idx_SxB` of a `StreamSplit`, in order, with `sharding`:
  this process reads only its rows of each (`process_rows`, `read_local_batches`),
  and `jax.make_array_from_process_local_data` joins the processes' rows."""
  batch_size = idx_SxB.shape[1]
  rows = process_rows(sharding, batch_size)

  def to_global(a):
    return jax.make_array_from_process_local_data(sharding, a, (batch_size,) + a.shape[1:])

  for local in read_local_batches(split, idx_SxB, rows, **read_kwargs):
    yield {k: to_global(v) for k, v in local.items()}


def make_streamed_train_epoch(train_step, shardings: Shardings, **read_kwargs):
  """`(state, split, idx_SxB) -> (state, objective_S)` like `make_train_epoch`, for a
  `StreamSplit`: one jitted `train_step` per streamed batch, same batch order."""
  step = jax.jit(train_step, in_shardings=(shardings.replicated, shardings.batch),
                 out_shardings=(shardings.replicated, shardings.replicated),
                 donate_argnums=(0,))

  def train_epoch(state, split, idx_SxB):
    objectives = []
    for batch in streamed_batches(split, np.asarray(idx_SxB), shardings.batch, **read_kwargs):
      state, obj = step(state, batch)
      objectives.append(obj)
    return state, np.stack([np.asarray(o) for o in objectives])

  return train_epoch


def make_streamed_eval_counts(*, model_def: ModelDef, loss_fn: LossFn, num_groups: int,
                              shardings: Shardings, batch_size: int,
                              preprocess: Callable | None = None, **read_kwargs):
  """`(state, splits) -> counts` like `make_eval_counts`, for `StreamSplit`s, each
  read in padded, masked batches of `batch_size` (`eval_indices`); the counts have
  a leading axis over `splits`."""
  eval_batch = jax.jit(
      _eval_batch(model_def=model_def, loss_fn=loss_fn, num_groups=num_groups,
                  preprocess=preprocess),
      in_shardings=(shardings.replicated, shardings.batch), out_shardings=shardings.replicated)
  add = jax.jit(metrics.add, out_shardings=shardings.replicated)

  def split_counts(state, split):
    idx_NxB, mask_NxB = eval_indices(len(split), batch_size)
    total = None
    for batch in streamed_batches(split, idx_NxB, shardings.batch,
                                  mask_SxB=mask_NxB[..., None], **read_kwargs):
      counts = eval_batch(state, batch)
      total = counts if total is None else add(total, counts)
    return total

  def eval_counts(state, splits):
    return jax.tree.map(lambda *c: jnp.concatenate(c), *[split_counts(state, s) for s in splits])

  return eval_counts
