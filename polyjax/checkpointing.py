"""Orbax checkpoints of the train state, one per saved epoch, under `<workdir>/checkpoints`.

The checkpoint step is the number of completed epochs, which is also the input
pipeline's position: epoch order is a pure function of (order seed, epoch).
Typed PRNG keys are stored as their raw key data.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as keep_policy
from orbax.checkpoint.checkpoint_managers import save_decision_policy as save_policy

from polyjax.train_state import TrainState


def _to_saved(state: TrainState) -> TrainState:
  return state.replace(rng=jax.random.key_data(state.rng))


def _from_saved(state: TrainState) -> TrainState:
  return state.replace(rng=jax.random.wrap_key_data(state.rng))


class Checkpoints:
  """The run's checkpoint manager: saves every `every_epochs` epochs, keeps the latest."""

  def __init__(self, directory: str | os.PathLike, *, every_epochs: int):
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=save_policy.FixedIntervalPolicy(every_epochs),
        preservation_policy=keep_policy.LatestN(1),
        create=True)
    self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)

  def save(self, epoch: int, state: TrainState, *, force: bool = False) -> bool:
    return self._manager.save(epoch, args=ocp.args.StandardSave(_to_saved(state)),
                              force=force)

  def latest_epoch(self) -> int | None:
    return self._manager.latest_step()

  def restore(self, epoch: int, like: TrainState) -> TrainState:
    """Restores epoch `epoch` with the structure, dtypes and shardings of `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_saved(like))
    restored = self._manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
    return _from_saved(restored)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
