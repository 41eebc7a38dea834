"""The data-parallel step: 8 devices give the same training as 1 device."""

import jax
import numpy as np

from configs import digits_poly
from polyjax import experiment, placement, steps, xla_runtime


def _config():
  c = digits_poly.get_config()
  c.num_epochs = 2
  c.batch_size = 64
  return c


def _train_params(mesh, epochs=3):
  exp = experiment.build(_config(), mesh=mesh)
  data = jax.device_put(steps.split_arrays(exp.dataset.train), exp.shardings.replicated)
  state = exp.state
  for epoch in range(1, epochs + 1):
    idx = steps.epoch_indices(len(exp.dataset.train), 64, seed=exp.order_seed, epoch=epoch)
    state, objective = exp.train_epoch(state, data,
                                       jax.device_put(idx, exp.shardings.stacked_batches))
  return jax.device_get(state.params), np.asarray(objective)


def test_sharded_step_matches_single_device():
  assert jax.device_count() == 8
  p8, obj8 = _train_params(placement.make_mesh())
  p1, obj1 = _train_params(placement.make_mesh(jax.devices()[:1]))
  np.testing.assert_allclose(obj8, obj1, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_batch_is_actually_sharded_over_the_mesh():
  mesh = placement.make_mesh()
  sh = placement.Shardings(mesh)
  idx = jax.device_put(np.zeros((3, 64), np.int32), sh.stacked_batches)
  assert len(idx.addressable_shards) == 8
  assert idx.addressable_shards[0].data.shape == (3, 8)


def test_epoch_indices_are_a_function_of_seed_and_epoch():
  a = steps.epoch_indices(100, 16, seed=3, epoch=2)
  assert a.shape == (6, 16) and len(np.unique(a)) == 96
  np.testing.assert_array_equal(a, steps.epoch_indices(100, 16, seed=3, epoch=2))
  assert not np.array_equal(a, steps.epoch_indices(100, 16, seed=3, epoch=3))
  assert not np.array_equal(a, steps.epoch_indices(100, 16, seed=4, epoch=2))


def test_epochs_indices_concatenate_epochs_and_a_full_batch_keeps_its_order():
  many = steps.epochs_indices(100, 16, seed=3, epochs=range(2, 5))
  np.testing.assert_array_equal(many, np.concatenate(
      [steps.epoch_indices(100, 16, seed=3, epoch=e) for e in (2, 3, 4)]))
  full = steps.epochs_indices(100, 100, seed=3, epochs=range(1, 4))
  np.testing.assert_array_equal(full, np.tile(np.arange(100), (3, 1)))
  np.testing.assert_array_equal(steps.epoch_indices(100, 100, seed=3, epoch=9), full[:1])
  # Resampling draws a full batch anew each epoch.
  p = np.full(100, 0.01)
  drawn = steps.epochs_indices(100, 100, seed=3, epochs=range(1, 3), p=p)
  assert not np.array_equal(drawn[0], drawn[1])


def test_only_tiny_models_get_xla_options_on_cpu():
  tiny = xla_runtime.train_compiler_options(num_params=6, batch_size=220)
  assert tiny == {"xla_cpu_experimental_ynn_fusion_type": "",
                  "xla_cpu_experimental_xnn_fusion_type": ""}
  assert xla_runtime.train_compiler_options(num_params=93_000, batch_size=64) is None


def test_eval_batches_are_as_few_and_as_full_as_possible():
  from polyjax.data.splits import make_split
  split = lambda n: make_split(np.zeros((n, 2), np.float32), np.zeros(n, np.int32))  # noqa: E731
  # Digits: 1,125 examples in all; at most 1000 a batch -> 2 batches of 563 (8 devices: 568).
  assert steps.eval_batch_size(1000, [split(660), split(165), split(300)], 1) == 563
  assert steps.eval_batch_size(1000, [split(660), split(165), split(300)], 8) == 568
  assert steps.eval_batch_size(2000, [split(660), split(165), split(300)], 8) == 1128
  assert steps.eval_batch_size(1000, [split(4000), split(165)], 8) == 840  # 5 batches
  assert steps.eval_batch_size(1000, [split(5000)], 8) == 1000
  assert steps.eval_batch_size(256, [split(7)], 8) == 8


def test_packed_splits_keep_every_row_once_with_its_split():
  from polyjax.data.splits import make_split
  splits = [make_split(np.arange(n, dtype=np.float32)[:, None] + 100 * i,
                       np.full(n, i, np.int32)) for i, n in enumerate((5, 3, 4))]
  packed = steps.pack_for_eval(splits, 5)
  assert packed["x"].shape == (3, 5, 1) and packed["mask"].shape == (3, 5, 3)
  mask = packed["mask"].reshape(15, 3)
  x, y = packed["x"].reshape(15), packed["y"].reshape(15)
  for i, s in enumerate(splits):
    np.testing.assert_array_equal(x[mask[:, i]], s.x[:, 0])
    np.testing.assert_array_equal(y[mask[:, i]], i)
  assert mask.sum(1).tolist() == [1] * 12 + [0] * 3  # Each row in one split; padding in none.
  only = steps.pack_for_eval(splits, 5, keys=("weight",))
  assert only.keys() == {"weight", "mask"} and only["weight"].sum() == 12


def test_to_global_places_host_values_and_keeps_placed_arrays():
  sh = placement.Shardings(placement.make_mesh())
  tree = {"w": np.arange(6.0, dtype=np.float32).reshape(2, 3), "key": jax.random.key(3)}
  placed = placement.to_global(tree, sh.replicated)
  assert all(a.sharding == sh.replicated for a in jax.tree.leaves(placed))
  np.testing.assert_array_equal(placed["w"], tree["w"])
  np.testing.assert_array_equal(jax.random.key_data(placed["key"]),
                                jax.random.key_data(tree["key"]))
  again = placement.to_global(placed, sh.replicated)
  assert again["w"] is placed["w"] and again["key"] is placed["key"]


def test_set_deterministic_adds_the_gpu_flag_once_and_keeps_the_users():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  xla_runtime.set_deterministic(True, env)
  assert env["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=2 "
                              "--xla_gpu_deterministic_ops=true")
  xla_runtime.set_deterministic(True, env)
  assert env["XLA_FLAGS"].count("--xla_gpu_deterministic_ops") == 1
  users = {"XLA_FLAGS": "--xla_gpu_deterministic_ops=false"}
  xla_runtime.set_deterministic(True, users)
  assert users == {"XLA_FLAGS": "--xla_gpu_deterministic_ops=false"}
  empty: dict[str, str] = {}
  xla_runtime.set_deterministic(False, empty)
  assert empty == {}
  xla_runtime.set_deterministic(True, empty)
  assert empty == {"XLA_FLAGS": "--xla_gpu_deterministic_ops=true"}
