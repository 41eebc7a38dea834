"""Host-side pieces of a run's lifecycle that the training loop calls between epochs.

- `StopSignals`: SIGTERM and SIGINT ask the loop to stop after the current epoch
  (an epoch is one compiled call and cannot be cut short), or before the first one
  when the signal came during set-up; the loop then saves and exits cleanly. A
  second signal stops at once, without saving. In a
  multi-process run the processes agree (`received_anywhere`): a signal that
  reaches one process stops them all after the same epoch.
- `is_finite`: whether every floating-point array of a state is finite, so that
  a non-finite state is never checkpointed.
- `exit`: the end of a command-line run, after its files are written and closed.
"""

from __future__ import annotations

import gc
import signal
import sys
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class StopSignals:
  """Context manager: while active, SIGTERM/SIGINT set `.received` instead of killing.

  Outside the main thread (where Python cannot install handlers) it does nothing.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, extra: tuple[int, ...] = ()):
    self.signals = self.SIGNALS + tuple(extra)  # E.g. SLURM's SIGUSR2 before a time limit.
    self.received: int | None = None  # This process's own signal.
    self._elsewhere: int | None = None  # Another process's, once agreed on.
    self._previous = {}

  def _handle(self, signum, frame):
    if self.received is not None:
      # A second signal: restore the default behaviour and deliver it again.
      self._restore()
      signal.raise_signal(signum)
      return
    self.received = signum
    print(f"polyjax: {signal.Signals(signum).name} received: stopping at the end of this "
          f"epoch, or before the first (checkpoint, summary); send it again to stop at once",
          file=sys.stderr, flush=True)

  def _restore(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  @property
  def name(self) -> str | None:
    """The signal that stopped the run: this process's own, else another's."""
    signum = self.received if self.received is not None else self._elsewhere
    return None if signum is None else signal.Signals(signum).name

  def received_anywhere(self) -> bool:
    """Whether any process of the run has received a stop signal (`name` then
    names it on every process). Every process must ask at the same point of the
    loop: a process that stopped on its own signal alone would leave the others
    waiting in their next collective. Only a process's own signal counts as the
    first of two: its own signal arriving later still stops it cleanly."""
    if jax.process_count() == 1:
      return self.received is not None
    from jax.experimental import multihost_utils
    # The answer is the gathered one: a signal arriving after the gather counts next time.
    got = np.asarray(multihost_utils.process_allgather(np.int32(self.received or 0))).ravel()
    if np.any(got):
      self._elsewhere = int(got[np.flatnonzero(got)[0]])
    return bool(np.any(got))

  def __enter__(self) -> StopSignals:
    if threading.current_thread() is threading.main_thread():
      for signum in self.signals:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    self._restore()


def finite_rows(arrays, rows: int) -> jax.Array:
  """(rows,) bool, traceable: whether row r of every floating-point array in `arrays`
  (each with leading axis `rows`) is finite; other dtypes are skipped.

  One reduction over the arrays' concatenation per dtype, which XLA fuses into one
  loop: it compiles faster than a reduction per array and runs no slower
  (docs/BENCHMARKS.md, "Start-up").
  """
  by_dtype: dict[Any, list[jax.Array]] = {}
  for x in arrays:
    if jnp.issubdtype(x.dtype, jnp.inexact):
      by_dtype.setdefault(x.dtype, []).append(x.reshape(rows, -1))
  ok = jnp.ones((rows,), bool)
  for xs in by_dtype.values():
    ok = ok & jnp.all(jnp.isfinite(jnp.concatenate(xs, axis=1)), axis=1)
  return ok


@jax.jit
def _all_finite(arrays) -> jax.Array:
  return finite_rows([x.reshape(1, -1) for x in arrays], 1)[0]


def is_finite(state) -> bool:
  """True if every floating-point array in `state` (params, model and optimizer state,
  DRO probabilities) is finite. Typed PRNG keys are skipped."""
  arrays = [x for x in jax.tree.leaves(state)
            if not jnp.issubdtype(x.dtype, jax.dtypes.prng_key)]
  return bool(np.asarray(_all_finite(arrays)))


def exit(code: int) -> None:  # noqa: A001  (the command's exit, like sys.exit)
  """Exits with `code`, skipping the interpreter's last full garbage collection.

  That collection walks every object JAX, Flax and Orbax created in the process, a
  sizeable part of a short run (docs/BENCHMARKS.md, "Start-up"), although the process
  frees everything when it ends. `gc.freeze()` moves them out of its reach; objects are
  still released by reference counting and `atexit` handlers still run. Called only
  once the run's files are written and closed.
  """
  gc.freeze()
  sys.exit(code)
