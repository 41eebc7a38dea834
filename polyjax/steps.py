"""Jitted training and evaluation programs, and the index arrays that feed them.

Datasets that fit on the device are placed there once, and a whole epoch runs
inside one compiled call: the host only sends the epoch's (steps, batch) index
array, and the batch gather happens on device. The state is replicated and every
batch is split along the mesh's 'data' axis (`polyjax.mesh`). Evaluation sums
counts inside jit and divides on the host (`polyjax.metrics`). Splits too large
for the device are read per batch instead (`polyjax.streaming`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from polyjax import metrics, weighting
from polyjax.data.splits import Split
from polyjax.errors import ConfigError
from polyjax.losses import LossFn
from polyjax.placement import Shardings
from polyjax.train_state import ModelDef, TrainState

Batch = dict[str, jax.Array]

def split_arrays(split: Split) -> dict[str, np.ndarray]:
  if not isinstance(split, Split):  # A StreamSplit: its images are not in memory.
    raise ConfigError(f"config.data.pipeline='stream' splits are read per batch; this code "
                      f"path needs the split in memory (data.pipeline='memory'), got "
                      f"{type(split).__name__}")
  return {"x": split.x, "y": split.y, "group": split.group, "weight": split.weight}


def epoch_indices(n: int, batch_size: int, *, seed: int, epoch: int,
                  p: np.ndarray | None = None, once: bool = False) -> np.ndarray:
  """(steps, batch_size) example indices for one epoch; the last partial batch is dropped.

  With `p` (the `resampled` weighting), the epoch is n draws with replacement with
  probabilities `p`, drawn anew every epoch (like PyTorch's WeightedRandomSampler);
  with `once` as well, the n draws are made once for the whole run (from `seed`
  alone) and each epoch is a permutation of them (the paper's code: a
  `ResampledDataset` drawn at set-up, shuffled by its DataLoader every epoch);
  otherwise a permutation. Either way the order is a pure function of (seed,
  epoch), so a resumed run sees the same batches as an uninterrupted one. A full
  batch (`batch_size == n`, no resampling) is every example in stored order:
  shuffling it would only reorder the gradient's sum, and drawing a permutation
  costs more than a full-batch step of a small model (docs/BENCHMARKS.md, "Figure 1
  loop and tiny models").
  """
  if p is None and batch_size == n:
    return np.arange(n, dtype=np.int32)[None]
  rng = np.random.default_rng([seed, epoch])
  if p is None:
    perm = rng.permutation(n)
  elif once:  # Its own stream: no epoch's permutation repeats the draw's numbers.
    drawn = np.random.default_rng([seed, 0x0CE, 0]).choice(n, size=n, replace=True, p=p)
    perm = drawn[rng.permutation(n)]
  else:
    perm = rng.choice(n, size=n, replace=True, p=p)
  steps = n // batch_size
  return perm[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def epochs_indices(n: int, batch_size: int, *, seed: int, epochs: range,
                   p: np.ndarray | None = None, once: bool = False) -> np.ndarray:
  """(len(epochs) * steps, batch_size): `epoch_indices` of consecutive epochs, in order."""
  if p is None and batch_size == n:  # Full batch: stored order (see epoch_indices).
    return np.tile(np.arange(n, dtype=np.int32), (len(epochs), 1))
  return np.concatenate([epoch_indices(n, batch_size, seed=seed, epoch=e, p=p, once=once)
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
                    preprocess: Callable | None = None,
                    weight_fn: Callable | None = None) -> Callable[[TrainState, Batch], tuple]:
  """One SGD step on a batch; returns the new state and the batch objective.

  `reduction` (from `weighting.make_reduction`) turns per-example losses into the
  objective and updates group DRO's probabilities; the default is the weighted mean.
  `preprocess(x, rng=)` (the dataset's, e.g. uint8 -> normalised and augmented
  float32) runs on device with a key derived from the step.
  `weight_fn(weight_B, groups_B, step)` (`weight_schedule.make_weight_fn`) gives the
  loss weights of the step when they change over training (DRW, annealing).
  """

  def train_step(state: TrainState, batch: Batch):
    x = batch["x"]
    weight_B = batch["weight"]
    if weight_fn is not None:
      weight_B = weight_fn(weight_B, batch["group"], state.step)
    if preprocess is not None:
      x = preprocess(x, rng=jax.random.fold_in(state.rng, state.step))

    def objective(params):
      logits_BxC, model_state = model_def.apply(
          state.replace(params=params), x, train=True)
      loss_B = loss_fn(logits_BxC, batch["y"], batch["group"])
      # With the automatic adjustment, group DRO's state is a pair (its reduction's).
      group_state = (state.adv_probs if state.dro_auto is None
                     else (state.adv_probs, state.dro_auto))
      obj, group_state = reduction(loss_B, weight_B, batch["group"], group_state)
      return obj, (model_state, group_state)

    (obj, (model_state, group_state)), grads = jax.value_and_grad(
        objective, has_aux=True)(state.params)
    adv_probs, dro_auto = (group_state, None) if state.dro_auto is None else group_state
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                              opt_state=opt_state, adv_probs=adv_probs, dro_auto=dro_auto)
    return new_state, obj

  return train_step


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


def eval_batch_counts(*, model_def: ModelDef, loss_fn: LossFn, num_groups: int,
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
  eval_batch = eval_batch_counts(model_def=model_def, loss_fn=loss_fn, num_groups=num_groups,
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


