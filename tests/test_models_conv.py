"""The CPU-fast ConvNet pieces compute the same function as Flax's own layers."""

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from polyjax import models


@pytest.mark.parametrize("shape", [(2, 7, 9, 3), (3, 6, 6, 4)])
def test_conv_valid_matches_nnx_conv(shape):
  conv = nnx.Conv(shape[-1], 5, (3, 3), padding="VALID", rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), shape)
  np.testing.assert_allclose(models.conv_valid(conv, x), conv(x), rtol=1e-5, atol=1e-5)


def test_im2col_gradients_match_xla_conv():
  x = jax.random.normal(jax.random.key(1), (2, 7, 9, 3))
  kernel = jax.random.normal(jax.random.key(2), (3, 3, 3, 5))

  def loss(conv_fn):
    return lambda k, x: jnp.sum(jnp.sin(conv_fn(x, k)))

  want = jax.grad(loss(models._conv_valid_xla), argnums=(0, 1))(kernel, x)
  got = jax.grad(loss(models._conv_valid_im2col), argnums=(0, 1))(kernel, x)
  for g, w in zip(got, want):
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("hw", [(4, 6), (5, 7)])
def test_max_pool_matches_nnx(hw):
  x = jax.random.normal(jax.random.key(2), (2, *hw, 3))
  want = nnx.max_pool(x, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(models.max_pool_2x2(x), want)


def test_convnet_matches_flax_layers():
  model = models.get_model("convnet", in_shape=(32, 32, 3), num_classes=2, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(3), (4, 32, 32, 3))

  def reference(x):  # The textbook forward pass, through Flax's own layers.
    for layer in model.block1:
      x = nnx.relu(layer(x))
    x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    for layer in model.block2:
      x = nnx.relu(layer(x))
    x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    x = nnx.relu(model.fc1(x.reshape(x.shape[0], -1)))
    return model.head(nnx.relu(model.fc2(x)))

  np.testing.assert_allclose(model(x), reference(x), rtol=1e-4, atol=1e-5)


def _conv_layer_benchmark():
  spec = importlib.util.spec_from_file_location(
      "conv_layer", pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "conv_layer.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_benchmarked_conv_formulations_match_xla_conv():
  """The formulations timed in benchmarks/conv_layer.py compute the same values and gradients."""
  bench = _conv_layer_benchmark()
  x = jax.random.normal(jax.random.key(1), (2, 7, 9, 3))
  kernel = jax.random.normal(jax.random.key(2), (3, 3, 3, 5))

  def loss(conv_fn):
    return lambda k, x: jnp.sum(jnp.sin(conv_fn(x, k)))

  want = jax.grad(loss(models._conv_valid_xla), argnums=(0, 1))(kernel, x)
  for name, conv_fn in bench.FORMULATIONS.items():
    np.testing.assert_allclose(conv_fn(x, kernel), models._conv_valid_xla(x, kernel),
                               rtol=1e-5, atol=1e-5, err_msg=name)
    got = jax.grad(loss(conv_fn), argnums=(0, 1))(kernel, x)
    for g, w in zip(got, want):
      assert np.all(np.isfinite(g)), name
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=name)


def test_conv_layer_benchmark_prints_one_line_per_case(capsys):
  _conv_layer_benchmark().main(["--shape", "2,5,3,4", "--steps", "1", "--rounds", "1",
                                "--only", "im2col,xla_canonical"])
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [(r["formulation"], r["pass"]) for r in rows] == [
      ("im2col", "forward"), ("im2col", "grad"), ("xla_canonical", "forward"),
      ("xla_canonical", "grad")]
  assert all(r["cpu_ms_per_step"] >= 0 and r["shape"] == [2, 5, 3, 4] for r in rows)
