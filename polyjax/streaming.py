"""Streamed input (data.pipeline='stream'): splits too large to place on the devices.

The split stays in its source (`polyjax.data.stream.StreamSplit`); every global
batch of `steps.epoch_indices` / `steps.eval_indices` is read by grain, each
process decoding only the rows its own devices hold, and assembled into a global
array with `jax.make_array_from_process_local_data`. One jitted step runs per
batch while grain's threads decode the next ones, in the same batch order as the
in-memory path.
"""

from __future__ import annotations

from typing import Callable

import grain
import jax
import jax.numpy as jnp
import numpy as np

from polyjax import metrics
from polyjax.losses import LossFn
from polyjax.placement import Shardings
from polyjax.steps import eval_batch_counts, eval_indices
from polyjax.train_state import ModelDef

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
      eval_batch_counts(model_def=model_def, loss_fn=loss_fn, num_groups=num_groups,
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
