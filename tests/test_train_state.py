"""The compiled model initialisation equals the same initialisation run op by op."""

import jax
import numpy as np
import pytest
from flax import nnx

from polyjax import models, resnet, train_state


def _op_by_op(model_name, in_shape, seed, **kwargs):
  """What `train_state.create` computes, without jit: the independent reference."""
  init_key, step_key = jax.random.split(jax.random.key(seed))
  model = models.get_model(model_name, in_shape=in_shape, num_classes=2,
                           rngs=nnx.Rngs(params=init_key), **kwargs)
  _, params, model_state = nnx.split(model, nnx.Param, ...)
  return params, model_state, step_key


def _create(model_name, in_shape, seed, **kwargs):
  tx = train_state.make_optimizer(lr=0.1, momentum=0.9, weight_decay=0.0)
  return train_state.create(model_name=model_name, model_kwargs=kwargs, in_shape=in_shape,
                            num_classes=2, num_groups=2, tx=tx, seed=seed)


@pytest.mark.parametrize("model_name,in_shape,kwargs", [
    ("linear", (2,), {}),
    ("mlp", (8, 8), {"hidden": 16, "depth": 2}),
    ("cifar_resnet18", (32, 32, 3), {"init_channels": 4}),  # BatchNorm statistics.
])
def test_compiled_init_equals_op_by_op(model_name, in_shape, kwargs):
  for seed in (0, 7, 2**31 + 5, -3):  # Any Python int, as jax.random.key takes it.
    _, state = _create(model_name, in_shape, seed, **kwargs)
    params, model_state, step_key = _op_by_op(model_name, in_shape, seed, **kwargs)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 state.params, params)
    jax.tree.map(np.testing.assert_array_equal, state.model_state, model_state)
    np.testing.assert_array_equal(jax.random.key_data(state.rng),
                                  jax.random.key_data(step_key))
    assert jax.tree.structure(state.params) == jax.tree.structure(params)


def test_seeds_share_one_program_and_differ():
  before = train_state._initializer.cache_info().currsize
  _, a = _create("mlp", (5,), 1, hidden=8, depth=1)
  _, b = _create("mlp", (5,), 2, hidden=8, depth=1)
  assert train_state._initializer.cache_info().currsize == before + 1
  assert not np.allclose(a.params["head"]["kernel"][...], b.params["head"]["kernel"][...])
  _, c = _create("mlp", (5,), 1, hidden=8, depth=1)
  jax.tree.map(np.testing.assert_array_equal, a.params, c.params)


def test_graphdefs_match_the_model():
  model_def, state = _create("cifar_resnet18", (32, 32, 3), 0, init_channels=4)
  x = np.zeros((2, 32, 32, 3), np.float32)
  logits, model_state = model_def.apply(state, x, train=True)
  assert logits.shape == (2, 2)
  # Training mode updates the BatchNorm statistics; evaluation mode keeps them.
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b),
                                         model_state, state.model_state))
  assert any(changed)
  _, eval_state = model_def.apply(state, x, train=False)
  jax.tree.map(np.testing.assert_array_equal, eval_state, state.model_state)


def test_pretrained_weights_loaded_over_the_init(tmp_path, monkeypatch):
  loaded = []

  def fake_load(model, path):  # The real loader is tested in test_resnet.py.
    loaded.append(path)
    model.head.bias.set_value(model.head.bias.get_value() + 1.0)

  monkeypatch.setattr(resnet, "load_torchvision_weights", fake_load)
  _, plain = _create("mlp", (5,), 0, hidden=8, depth=1)
  monkeypatch.setattr(models, "MODELS", {**models.MODELS, "mlp_pretrained": models.MODELS["mlp"]})
  _, state = _create("mlp_pretrained", (5,), 0, hidden=8, depth=1,
                     pretrained=str(tmp_path / "w.npz"))
  assert loaded == [str(tmp_path / "w.npz")]
  np.testing.assert_allclose(state.params["head"]["bias"][...],
                             plain.params["head"]["bias"][...] + 1.0)
