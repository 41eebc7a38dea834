"""The data-parallel step: 8 devices give the same training as 1 device."""

import jax
import numpy as np

from configs import digits_poly
from polyjax import steps, train


def _config():
  c = digits_poly.get_config()
  c.num_epochs = 2
  c.batch_size = 64
  return c


def _train_params(mesh, epochs=3):
  exp = train.build(_config(), mesh=mesh)
  data = jax.device_put(steps.split_arrays(exp.dataset.train), exp.shardings.replicated)
  state = exp.state
  for epoch in range(1, epochs + 1):
    idx = steps.epoch_indices(len(exp.dataset.train), 64, seed=exp.order_seed, epoch=epoch)
    state, objective = exp.train_epoch(state, data,
                                       jax.device_put(idx, exp.shardings.stacked_batches))
  return jax.device_get(state.params), np.asarray(objective)


def test_sharded_step_matches_single_device():
  assert jax.device_count() == 8
  p8, obj8 = _train_params(steps.make_mesh())
  p1, obj1 = _train_params(steps.make_mesh(jax.devices()[:1]))
  np.testing.assert_allclose(obj8, obj1, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_batch_is_actually_sharded_over_the_mesh():
  mesh = steps.make_mesh()
  sh = steps.Shardings(mesh)
  idx = jax.device_put(np.zeros((3, 64), np.int32), sh.stacked_batches)
  assert len(idx.addressable_shards) == 8
  assert idx.addressable_shards[0].data.shape == (3, 8)


def test_epoch_indices_are_a_function_of_seed_and_epoch():
  a = steps.epoch_indices(100, 16, seed=3, epoch=2)
  assert a.shape == (6, 16) and len(np.unique(a)) == 96
  np.testing.assert_array_equal(a, steps.epoch_indices(100, 16, seed=3, epoch=2))
  assert not np.array_equal(a, steps.epoch_indices(100, 16, seed=3, epoch=3))
  assert not np.array_equal(a, steps.epoch_indices(100, 16, seed=4, epoch=2))
