"""Host-side pieces of a run's lifecycle that the training loop calls between epochs.

- `StopSignals`: SIGTERM and SIGINT ask the loop to stop after the current epoch
  (an epoch is one compiled call and cannot be cut short); the loop then saves
  and exits cleanly. A second signal stops at once, without saving.
- `is_finite`: whether every floating-point array of a state is finite, so that
  a non-finite state is never checkpointed.
"""

from __future__ import annotations

import signal
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np


class StopSignals:
  """Context manager: while active, SIGTERM/SIGINT set `.received` instead of killing.

  Outside the main thread (where Python cannot install handlers) it does nothing.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: int | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    if self.received is not None:
      # A second signal: restore the default behaviour and deliver it again.
      self._restore()
      signal.raise_signal(signum)
      return
    self.received = signum
    print(f"polyjax: {signal.Signals(signum).name} received: stopping after this epoch "
          f"(checkpoint, summary); send it again to stop at once", file=sys.stderr,
          flush=True)

  def _restore(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  @property
  def name(self) -> str | None:
    return None if self.received is None else signal.Signals(self.received).name

  def __enter__(self) -> StopSignals:
    if threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    self._restore()


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def is_finite(state) -> bool:
  """True if every floating-point array in `state` (params, model and optimizer state,
  DRO probabilities) is finite. Typed PRNG keys are skipped."""
  arrays = [x for x in jax.tree.leaves(state)
            if not jnp.issubdtype(x.dtype, jax.dtypes.prng_key)]
  return bool(np.asarray(_all_finite(arrays)))
