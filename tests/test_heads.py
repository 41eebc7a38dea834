"""Classifier heads (`model.head`): the cosine head against a float64 NumPy reference, at
its edges (huge, tiny and zero features), and in every model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from polyjax import config as config_lib
from polyjax import heads, losses, models, steps, train_state

U32 = 2.0 ** -24  # float32 unit roundoff


def _reference(x, w):
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), heads.NORM_EPS)
  return xn @ (w / np.linalg.norm(w, axis=0, keepdims=True))


def test_normed_head_is_the_cosine_of_features_and_class_weights():
  d, k = 64, 10
  head = heads.NormedLinear(d, k, rngs=nnx.Rngs(0))
  w = np.asarray(head.kernel[...])
  assert w.shape == (d, k) and len(jax.tree.leaves(nnx.state(head, nnx.Param))) == 1  # no bias
  np.testing.assert_allclose(np.linalg.norm(w, axis=0), 1.0, rtol=4 * d * U32)
  x = np.random.default_rng(0).standard_normal((6, d)).astype(np.float32)
  x[1] *= 1e4
  x[2] *= 1e-4
  x[3] = 0.0
  out = np.asarray(head(jnp.asarray(x)))
  # A float32 dot of two unit vectors errs by at most ~d units of roundoff, and the two
  # normalisations by ~d/2 + 3 each.
  tol = (2 * d + 8) * U32
  np.testing.assert_allclose(out, _reference(x, w), rtol=0, atol=tol)
  assert np.all(np.abs(out) <= 1 + tol) and np.all(out[3] == 0)
  np.testing.assert_allclose(np.asarray(head(jnp.asarray(x * 1e3))), out, rtol=0, atol=2 * tol)
  grads = jax.grad(lambda m, x: jnp.sum(m(x) ** 2), argnums=(0, 1))(head, jnp.asarray(x))
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
  assert np.all(np.asarray(grads[1])[3] == 0)  # a zero feature vector gets no gradient


@pytest.mark.parametrize("name", ["linear", "mlp", "convnet"])
def test_every_model_takes_either_head(name):
  shape = (32, 32, 3) if name == "convnet" else (8, 8, 1)

  def build(head):
    make = lambda: models.get_model(name, in_shape=shape, num_classes=3,  # noqa: E731
                                    rngs=nnx.Rngs(0), head=head)
    return nnx.eval_shape(make) if name == "convnet" else make()  # ConvNet: shapes only

  linear, normed = build("linear"), build("normed")
  assert isinstance(normed.head, heads.NormedLinear) and isinstance(linear.head, nnx.Linear)
  count = lambda m: sum(v.size for v in jax.tree.leaves(nnx.state(m, nnx.Param)))  # noqa: E731
  assert count(linear) - count(normed) == 3  # the bias
  if name != "convnet":
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4,) + shape), jnp.float32)
    assert np.all(np.abs(np.asarray(normed(x))) <= 1 + 1e-6)
  with pytest.raises(ValueError, match="model.head"):
    build("cosine")


def test_config_refuses_an_unknown_head():
  c = config_lib.base_config()
  c.model.head = "cosine"
  with pytest.raises(config_lib.ConfigError, match=r"config.model.head='cosine' is not known"):
    config_lib.validate(c, device_count=1)


def test_ldam_trains_the_normed_head_of_an_mlp():
  tx = train_state.make_optimizer(lr=0.1, momentum=0.9, weight_decay=2e-4)
  model_def, state = train_state.create(
      model_name="mlp", model_kwargs={"hidden": 16, "depth": 2, "head": "normed"},
      in_shape=(8,), num_classes=2, num_groups=2, tx=tx, seed=0)
  ldam = losses.get_loss("ldam", max_margin=0.5, inv_temperature=30.0,
                         class_counts=np.array([100, 10]), group_counts=np.array([100, 10]))
  step = jax.jit(steps.make_train_step(model_def=model_def, loss_fn=ldam, tx=tx))
  rng = np.random.default_rng(0)
  batch = {"x": jnp.asarray(rng.standard_normal((8, 8)), jnp.float32),
           "y": jnp.arange(8, dtype=jnp.int32) % 2, "group": jnp.arange(8, dtype=jnp.int32) % 2,
           "weight": jnp.ones((8,), jnp.float32)}
  objs = []
  for _ in range(20):
    state, obj = step(state, batch)
    objs.append(float(obj))
  assert np.all(np.isfinite(objs)) and objs[-1] < objs[0]
  logits, _ = model_def.apply(state, batch["x"], train=False)
  assert np.all(np.abs(np.asarray(logits)) <= 1 + 1e-6)  # still cosines after training
