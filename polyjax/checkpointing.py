"""Orbax checkpoints of the train state under `<workdir>/checkpoints`: the latest and the best.

The checkpoint step is the number of completed epochs, which is also the input
pipeline's position: epoch order is a pure function of (order seed, epoch), so a
run restored at epoch E continues with the batches of epoch E + 1. A checkpoint
holds two items: `state`, the whole `TrainState` (typed PRNG keys stored as their
raw key data), and `meta`, a small JSON record (epoch, optimizer steps, the best
epoch so far and its metric value).

What is kept is decided by Orbax policy objects: the most recent checkpoint
(`LatestN(1)`) and the one with the best validation metric (`BestN(1)` over the
metrics saved with each checkpoint; ties go to the earlier epoch, like an argmax
over `metrics.jsonl`). The caller decides when to save: every `every_epochs`
epochs (the save decision policy), and with `force=True` for the last epoch and
an interruption.

Writes go through one queue of pending writes (host copies of the state): at
most one latest (a due save) and one best (a new best epoch), a newer one of a
kind replacing the older, and one write for an epoch that is both. They go out
oldest epoch first, so a best is written before any later latest: a crash
resumes from a latest written after every best before it (a pending best that a
newer one replaced is found again by the resumed run's deterministic replay).
A best waits for the next save rather than being written when it happens: a run
that evaluates every epoch finds many bests early on, and each write has a cost
whatever the state's size.

With `defer_while_writing` (one-process runs), a call starts at most one pending
write, and only when the writer is free: Orbax starts a save only after the
previous one is committed, so a loop whose epochs are shorter than a commit would
otherwise wait for the disk at every save. A run of several processes writes at
every interval: Orbax's save is collective, and the processes' writers are not
free at the same moments. A forced save, and `flush` (a run that diverges: the
pending states are finite), start every pending write at once.

Orbax writes each checkpoint into a temporary directory and renames it when the
write is complete, so a crash during a save leaves no step that is later restored.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import sys
import uuid
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as keep_policy
from orbax.checkpoint.checkpoint_managers import save_decision_policy as save_policy

from polyjax.train_state import TrainState

BEST_KEY = "best_metric_value"  # Name of the ranking metric saved beside each checkpoint.
EPOCH_KEY = "epoch"


class CheckpointDirError(OSError):
  """The checkpoint directory cannot be written; the message names it."""


class CheckpointMismatch(ValueError):
  """An intact checkpoint whose state does not fit the current model or optimizer."""


DAMAGED = "checkpoints.damaged"  # Beside `checkpoints/`: damaged epochs moved aside.


def _to_saved(state: TrainState) -> TrainState:
  """The state as stored: the typed key as its raw key data (kept if already raw)."""
  if jax.dtypes.issubdtype(state.rng.dtype, jax.dtypes.prng_key):
    return state.replace(rng=jax.random.key_data(state.rng))
  return state


def _stored_tree(state: TrainState) -> dict[str, Any]:
  """What Orbax writes and reads: the state's fields as a dict, less those that are
  None (`dro_auto` unless group DRO's automatic adjustment), so that a field added
  as optional leaves the checkpoints of runs without it exactly as they were (and
  theirs restorable)."""
  fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
  return {k: v for k, v in fields.items() if v is not None}


def from_saved(state: TrainState) -> TrainState:
  """The inverse of `_to_saved`: raw key data back to a typed key."""
  return state.replace(rng=jax.random.wrap_key_data(state.rng))


def host_copy(state: TrainState) -> TrainState:
  """The state as stored (`_to_saved`), copied into host memory (numpy arrays).

  Orbax writes host arrays faster than device arrays (`benchmarks/checkpoint_save.py`;
  docs/BENCHMARKS.md, "Checkpoint saves"), and a host copy
  outlives the device buffers that the next training call donates. Every array
  must be whole on this process: a run's train state is replicated (Orbax writes
  replicated host arrays from process 0), a sweep's stack is held by the process
  that trains it.
  """
  return jax.device_get(_to_saved(state))


def _first_line(e: BaseException) -> str:
  text = str(e).splitlines()[0][:300] if str(e) else ""
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _arrays(tree) -> list[tuple[tuple[int, ...], str]]:
  """The (shape, dtype) of every array of `tree` (a state, or Orbax's metadata of a
  saved one), sorted: equal for a checkpoint that the state can be restored from."""
  return sorted((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(tree))


def _arrays_difference(saved, like) -> str:
  a, b = _arrays(saved), _arrays(like)
  only_saved = [x for x in a if x not in b][:3]
  only_like = [x for x in b if x not in a][:3]
  return f"{len(a)} arrays against {len(b)}; e.g. saved {only_saved}, expected {only_like}"


def _ranking(mode: str):
  """Orbax `best_fn`: larger is better; among equal values the earlier epoch wins."""
  sign = 1.0 if mode == "max" else -1.0
  return lambda m: (sign * m[BEST_KEY], -m[EPOCH_KEY])


class _Write(NamedTuple):
  """A pending write: the state of epoch `epoch` as `host_copy` gives it."""
  epoch: int
  state: TrainState
  value: float | None  # The ranking metric; None: not evaluated, never kept as the best.
  meta: dict[str, Any]


def check_writable(directory: str | os.PathLike, what: str = "checkpoint directory") -> None:
  """Raises CheckpointDirError unless a file can be created in `directory` (made if missing).

  A real write is tried because permission bits do not tell the whole story
  (read-only mounts, quotas, root).
  """
  path = pathlib.Path(directory)
  probe = path / f".polyjax-write-test-{uuid.uuid4().hex}"
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    raise CheckpointDirError(
        f"{what} {path} is not writable: {e.strerror or e}") from e


class Checkpoints:
  """The run's checkpoint manager: keeps the latest checkpoint and the best one."""

  def __init__(self, directory: str | os.PathLike, *, every_epochs: int = 1,
               best_mode: str = "max", read_only: bool = False,
               defer_while_writing: bool = False):
    """Opens (or creates) the checkpoints of one run.

    Args:
      directory: `<workdir>/checkpoints`.
      every_epochs: the save interval of the latest checkpoint.
      best_mode: 'max' or 'min': which way the ranking metric is better.
      read_only: only restore (e.g. for analysis); nothing is written or deleted.
      defer_while_writing: keep an interval save pending while a write is in
        progress (see the module docstring); one-process runs only.
    """
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    if not read_only:
      check_writable(directory)
    ranking = _ranking(best_mode)
    if read_only:
      options = ocp.CheckpointManagerOptions(best_fn=ranking, best_mode="max",
                                             create=False, read_only=True,
                                             save_interval_steps=0)
    else:
      options = ocp.CheckpointManagerOptions(
          save_decision_policy=save_policy.FixedIntervalPolicy(every_epochs),
          preservation_policy=keep_policy.AnyPreservationPolicy([
              keep_policy.LatestN(1),
              keep_policy.BestN(get_metric_fn=ranking, n=1,
                                keep_checkpoints_without_metrics=False),
          ]),
          # `best_fn` makes the manager write each checkpoint's metrics (which BestN
          # reads back after a restart) and answer `best_step()`.
          best_fn=ranking, best_mode="max", create=True,
          # Temporary directories of saves cut short by a kill are removed.
          cleanup_tmp_directories=True)
    self._defer = defer_while_writing
    self._pending: dict[str, _Write] = {}  # 'latest', 'best': the newest of each kind.
    self._written_best: _Write | None = None  # For `best_state` without a disk read.
    self._directory = pathlib.Path(os.path.abspath(directory))
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory), options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def end_epoch(self, epoch: int, state, *, meta: dict[str, Any], value: float | None,
                is_best: bool, force: bool = False) -> None:
    """What the training loop calls once per finished epoch.

    Queues `state` as the latest when the interval (or `force`: the last epoch, a
    stop) asks for it and as the best when `is_best`, then starts pending writes:
    all of them when forced (or due, without `defer_while_writing`), else the
    oldest one if a latest is pending and the writer is free.

    Args:
      epoch: completed epochs; the checkpoint's step.
      state: the train state after `epoch` epochs, finite, or a function returning
        it (called only when it is saved or kept); on device or as `host_copy`
        gives it.
      meta: JSON-serialisable record saved beside the state.
      value: the epoch's value of the ranking metric (None: not evaluated).
      is_best: the epoch is the run's new best.
      force: save even off the interval.
    """
    due = self.due(epoch, force=force)
    if due or is_best:
      write = _Write(epoch, host_copy(state() if callable(state) else state), value,
                     dict(meta))
      self._pending.update({kind: write for kind, on in (("latest", due), ("best", is_best))
                            if on})
    if force or (due and not self._defer):
      self._start()
    elif "latest" in self._pending and not self._manager.is_saving_in_progress():
      self._start(1)  # A second would wait for this one's commit.

  def due(self, epoch: int, *, force: bool = False) -> bool:
    """Whether `end_epoch(epoch, ..., force=force)` saves epoch `epoch` as the latest."""
    if epoch in self._manager.all_steps():
      return False  # Already saved (e.g. restored from it).
    return force or self._manager.should_save(epoch)

  def flush(self) -> None:
    """Starts every pending write now (e.g. when the run diverges: they are finite,
    evaluated states)."""
    self._start()

  def _start(self, count: int | None = None) -> None:
    """Starts the `count` oldest pending writes (all by default), oldest first."""
    for epoch, write in sorted({w.epoch: w for w in self._pending.values()}.items())[:count]:
      kinds = [kind for kind, w in self._pending.items() if w.epoch == epoch]
      for kind in kinds:
        del self._pending[kind]
      if "best" in kinds:
        self._written_best = write
      if epoch not in self._manager.all_steps():
        self._write(write)

  def best_state(self, epoch: int, like: TrainState) -> TrainState:
    """The state of the best epoch `epoch` (e.g. to test it at the end): the copy
    this object wrote, if it is that epoch (no disk read; host arrays), else restored."""
    if self._written_best is not None and self._written_best.epoch == epoch:
      return from_saved(self._written_best.state)
    self.wait()
    return self.restore(epoch, like=like)[0]

  def _write(self, write: _Write) -> None:
    """Starts the save of `write` (it completes in the background)."""
    metrics = None
    if write.value is not None and math.isfinite(write.value):
      metrics = {BEST_KEY: float(write.value), EPOCH_KEY: int(write.epoch)}
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(_stored_tree(write.state)),
        meta=ocp.args.JsonSave({**write.meta, EPOCH_KEY: int(write.epoch)}))
    self._manager.save(write.epoch, args=args, metrics=metrics, force=True)

  def latest_epoch(self) -> int | None:
    return self._manager.latest_step()

  def best_epoch(self) -> int | None:
    """The epoch of the best checkpoint kept (None if no saved epoch was evaluated)."""
    return self._manager.best_step()

  def all_epochs(self) -> list[int]:
    return list(self._manager.all_steps())

  def restore(self, epoch: int, like: TrainState | None = None
              ) -> tuple[Any, dict[str, Any]]:
    """Restores epoch `epoch`.

    Args:
      epoch: a saved epoch (`latest_epoch()`, `best_epoch()`).
      like: a TrainState whose structure, dtypes and shardings the restored state
        takes; None restores the saved tree as it is (nested dicts of arrays, the
        rng as raw key data), enough to read parameters without building a model.

    Returns:
      The train state and the JSON record saved with it.
    """
    if like is None:
      # On this process's first device, whatever mesh the run was saved from.
      on_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      saved = self._manager.item_metadata(epoch)["state"]
      abstract = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=on_device), saved)
      restored = self._manager.restore(epoch, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      return restored["state"], dict(restored["meta"])
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_saved(like))
    restored = self._manager.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_stored_tree(abstract)), meta=ocp.args.JsonRestore()))
    return from_saved(abstract.replace(**restored["state"])), dict(restored["meta"])

  def restore_latest(self, like: TrainState
                     ) -> tuple[int, TrainState, dict[str, Any]] | None:
    """Restores the newest intact checkpoint: (epoch, state, meta), or None if there
    is no checkpoint.

    A checkpoint that cannot be read (a truncated or missing file, garbage metadata,
    an empty directory) is damaged: it is moved aside to `<workdir>/checkpoints.damaged/`
    with a warning naming it and the error, and the next older one is tried, so the
    run replays the epochs after it and ends as it would have.

    Raises:
      CheckpointMismatch: an intact checkpoint does not fit `like` (another model or
        optimizer).
      CheckpointDirError: checkpoints exist but none is intact.
    """
    damaged = []
    for epoch in sorted(self.all_epochs(), reverse=True):
      try:
        saved = self._manager.item_metadata(epoch)["state"]
      except Exception as e:  # noqa: BLE001  (no readable metadata: damaged)
        damaged.append(self._move_damaged(epoch, e))
        continue
      if _arrays(saved) != _arrays(_to_saved(like)):
        # Checked before restoring: a restore that fails on a misfit leaves Orbax's
        # reads behind, to fail once its event loop is closed.
        raise CheckpointMismatch(
            f"the checkpoint of epoch {epoch} in {self._directory} does not fit the current "
            f"config's model or optimizer (it holds other arrays: "
            f"{_arrays_difference(saved, _to_saved(like))})")
      try:
        state, meta = self.restore(epoch, like=like)
        return epoch, state, meta
      except Exception as e:  # noqa: BLE001  (classified below)
        error = e
      try:
        self.restore(epoch)  # As saved: if this works, the checkpoint is intact.
      except Exception as e:  # noqa: BLE001
        damaged.append(self._move_damaged(epoch, e))
        continue
      raise CheckpointMismatch(
          f"the checkpoint of epoch {epoch} in {self._directory} does not fit the current "
          f"config's model or optimizer ({_first_line(error)})") from error
    if damaged:
      raise CheckpointDirError(
          f"no intact checkpoint in {self._directory}; the damaged ones were moved to "
          f"{self._directory.parent / DAMAGED} (delete the run directory to start over)")
    return None

  def _move_damaged(self, epoch: int, error: BaseException) -> pathlib.Path:
    source = self._directory / str(epoch)
    target = self._directory.parent / DAMAGED / f"{epoch}-{uuid.uuid4().hex[:8]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)
    self._manager.reload()
    print(f"polyjax: warning: checkpoint {source} is damaged ({_first_line(error)}); "
          f"moved to {target}; trying an earlier one", file=sys.stderr, flush=True)
    return target

  def wait(self) -> None:
    """Blocks until every started save is committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
