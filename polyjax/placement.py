"""The device mesh and where arrays live on it.

A run's mesh has one axis, 'data': the train state is replicated and every batch
is split along it (XLA inserts the gradient all-reduce). A sweep's group adds a
'members' axis in front (`member_mesh`): each device trains its own members, and
each member's batch is split along 'data' as in a single run.

In a multi-process run the mesh spans every process's devices; each process holds
the whole (small) host dataset, and `to_global` makes each process transfer only
the shards of its own devices.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

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

