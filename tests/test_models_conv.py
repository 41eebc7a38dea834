"""The CPU-fast ConvNet pieces compute the same function as Flax's own layers."""

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from polyjax import conv, models


@pytest.mark.parametrize("shape", [(2, 7, 9, 3), (3, 6, 6, 4), (2, 8, 10, 32)])
def test_conv_valid_matches_nnx_conv(shape):
  conv = nnx.Conv(shape[-1], 5, (3, 3), padding="VALID", rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), shape)
  np.testing.assert_allclose(models.conv_valid(conv, x), conv(x), rtol=1e-5, atol=1e-5)


def _numpy_conv(x, kernel):
  """Independent float64 reference: a sum over the kernel's taps of shifted inputs."""
  x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
  kh, kw = kernel.shape[:2]
  ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  return sum(np.einsum("bhwc,co->bhwo", x[:, i:i + ho, j:j + wo], kernel[i, j])
             for i in range(kh) for j in range(kw))


# F(4x4, 3x3)'s larger transform coefficients round about 15x more than F(2x2)'s.
FORM_TOLERANCE = {conv.winograd_2x2_3x3: 1e-5, conv.im2col: 1e-5, conv.xla: 1e-5,
                  conv.winograd_4x4_3x3: 5e-5}


@pytest.mark.parametrize("shape", [(2, 6, 10, 16), (1, 6, 6, 16), (3, 10, 6, 32),
                                   (2, 30, 30, 64), (1, 4, 4, 16)])
def test_winograd_matches_reference_convolution(shape):
  x = jax.random.normal(jax.random.key(1), shape)
  kernel = jax.random.normal(jax.random.key(2), (3, 3, shape[-1], 7)) / np.sqrt(9 * shape[-1])
  want = _numpy_conv(x, kernel)
  forms = [conv.winograd_2x2_3x3, conv.im2col, conv.xla]
  if (shape[1] - 2) % 4 == 0 and (shape[2] - 2) % 4 == 0:
    forms.append(conv.winograd_4x4_3x3)
  for form in forms:
    tol = FORM_TOLERANCE[form]
    np.testing.assert_allclose(form(x, kernel), want, rtol=tol, atol=tol, err_msg=form.__name__)


def _sin_loss(conv_fn):
  return lambda k, x: jnp.sum(jnp.sin(conv_fn(x, k)))


@pytest.mark.parametrize("form, shape", [(conv.im2col, (2, 7, 9, 3)),
                                         (conv.winograd_2x2_3x3, (2, 6, 8, 16)),
                                         (conv.winograd_4x4_3x3, (2, 6, 10, 16))])
def test_gradients_match_xla_conv_and_finite_differences(form, shape):
  x = jax.random.normal(jax.random.key(1), shape)
  kernel = jax.random.normal(jax.random.key(2), (3, 3, shape[-1], 5)) / np.sqrt(9 * shape[-1])
  want = jax.grad(_sin_loss(conv.xla), argnums=(0, 1))(kernel, x)
  got = jax.grad(_sin_loss(form), argnums=(0, 1))(kernel, x)
  for g, w in zip(got, want):
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
  # The hand-written transposes against central differences in float64, where
  # rounding is negligible and the error bound is derived, not tuned.
  _check_directional_derivatives(form, kernel, x)


def _check_directional_derivatives(form, kernel, x, eps=1e-3):
  """The custom VJP's directional derivatives equal float64 central differences.

  Along a unit direction (dk, dx) the convolution is bilinear, so each output is
  phi(t) = a + b t + c t^2 with b = conv(x, dk) + conv(dx, k) and c = conv(dx, dk),
  and g(t) = sum(sin(phi(t))). The central difference errs by at most eps^2/6 max|g3|,
  where g3, the third derivative, is bounded by sum(|phi'|^3 + 3 |phi'| |phi''|) with
  |phi'| <= |b| + 2 |c| eps and phi'' = 2c. Rounding adds at most
  outputs * 1e3 * float64 eps / eps (1e3 bounds the forms' amplification of rounding:
  F(4x4, 3x3) shows ~840x in float32, FORM_TOLERANCE). A wrong transpose errs by the
  order of the derivative itself, far above the bound.
  """
  with jax.enable_x64(True):
    kernel, x = np.asarray(kernel, np.float64), np.asarray(x, np.float64)
    f = _sin_loss(form)
    grad_k, grad_x = jax.grad(f, argnums=(0, 1))(kernel, x)
    assert grad_k.dtype == grad_x.dtype == np.float64
    rng = np.random.default_rng(0)
    for _ in range(3):
      dk, dx = rng.normal(size=kernel.shape), rng.normal(size=x.shape)
      norm = np.sqrt(np.vdot(dk, dk) + np.vdot(dx, dx))
      dk, dx = dk / norm, dx / norm
      numeric = float(f(kernel + eps * dk, x + eps * dx)
                      - f(kernel - eps * dk, x - eps * dx)) / (2 * eps)
      analytic = float(np.vdot(grad_k, dk) + np.vdot(grad_x, dx))
      b = np.asarray(conv.xla(x, dk) + conv.xla(dx, kernel))
      c = np.asarray(conv.xla(dx, dk))
      slope = np.abs(b) + 2 * np.abs(c) * eps
      truncation = eps ** 2 / 6 * np.sum(slope ** 3 + 6 * np.abs(c) * slope)
      rounding = b.size * 1e3 * np.finfo(np.float64).eps / eps
      assert abs(numeric - analytic) <= truncation + rounding, (numeric, analytic)


@pytest.mark.parametrize("m, b, th, tw, c", [(2, 2, 1, 1, 3), (2, 1, 3, 2, 4), (2, 3, 2, 5, 2),
                                              (4, 2, 1, 1, 3), (4, 1, 3, 2, 4), (4, 3, 2, 1, 2)])
def test_winograd_transforms_gradients_are_their_transposes(m, b, th, tw, c):
  """The hand-written gradients of the input and output transforms equal JAX's own
  transposes of the forward transforms (including one-tile edges)."""
  spec = (m, b, th, tw)
  x = jax.random.normal(jax.random.key(1), (b, m * th + 2, m * tw + 2, c))
  products = jax.random.normal(jax.random.key(2), ((m + 2) ** 2, b * th * tw, c))
  for transform, primal in ((conv._winograd_inputs, x), (conv._winograd_outputs, products)):
    out, vjp = jax.vjp(lambda a: transform(a, spec), primal)
    cotangent = jax.random.normal(jax.random.key(3), out.shape)
    want = jax.linear_transpose(lambda a: transform.fun(a, spec), primal)(cotangent)
    np.testing.assert_allclose(vjp(cotangent)[0], want[0], rtol=1e-5, atol=1e-5)


def test_cpu_form_picks_winograd_only_where_it_applies():
  assert conv.cpu_form((64, 30, 30, 64), (3, 3, 64, 64)) == "winograd4"  # 28x28 output
  assert conv.cpu_form((64, 6, 6, 16), (3, 3, 16, 64)) == "winograd4"
  assert conv.cpu_form((64, 12, 12, 128), (3, 3, 128, 128)) == "winograd"  # 10x10
  assert conv.cpu_form((64, 10, 8, 16), (3, 3, 16, 64)) == "winograd"     # 8x6
  assert conv.cpu_form((64, 32, 32, 3), (3, 3, 3, 64)) == "im2col"     # few channels
  assert conv.cpu_form((64, 30, 30, 15), (3, 3, 15, 64)) == "im2col"
  assert conv.cpu_form((64, 7, 9, 64), (3, 3, 64, 5)) == "im2col"      # odd output
  assert conv.cpu_form((64, 8, 7, 64), (3, 3, 64, 5)) == "im2col"
  assert conv.cpu_form((64, 9, 9, 64), (5, 5, 64, 5)) == "im2col"      # not 3x3
  with pytest.raises(ValueError, match="output size divisible by 2"):
    conv.winograd_2x2_3x3(jnp.zeros((1, 7, 8, 16)), jnp.zeros((3, 3, 16, 2)))
  with pytest.raises(ValueError, match="output size divisible by 4"):
    conv.winograd_4x4_3x3(jnp.zeros((1, 8, 8, 16)), jnp.zeros((3, 3, 16, 2)))


@pytest.mark.parametrize("shape", [(2, 10, 6, 32), (2, 8, 6, 32), (2, 7, 9, 32), (2, 8, 6, 8)])
def test_conv_valid_on_cpu_equals_its_form(shape):
  """`conv.valid` on CPU runs the form `cpu_form` names, bit for bit."""
  x = jax.random.normal(jax.random.key(1), shape)
  kernel = jax.random.normal(jax.random.key(2), (3, 3, shape[-1], 4))
  form = conv.CPU_FORMS[conv.cpu_form(shape, kernel.shape)]
  np.testing.assert_array_equal(jax.jit(conv.valid)(x, kernel), jax.jit(form)(x, kernel))


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

  # Compiled: op by op, the Winograd layers compile dozens of small programs.
  np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(model, x), jax.jit(reference)(x),
                             rtol=1e-4, atol=1e-5)


def _conv_layer_benchmark():
  spec = importlib.util.spec_from_file_location(
      "conv_layer", pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "conv_layer.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_benchmarked_conv_formulations_match_xla_conv():
  """The formulations timed in benchmarks/conv_layer.py compute the same values and gradients."""
  bench = _conv_layer_benchmark()
  x = jax.random.normal(jax.random.key(1), (2, 10, 10, 16))  # An 8x8 output: every form.
  kernel = jax.random.normal(jax.random.key(2), (3, 3, 16, 5)) / 12.0
  want = jax.grad(_sin_loss(conv.xla), argnums=(0, 1))(kernel, x)
  for name, conv_fn in bench.FORMULATIONS.items():
    tol = FORM_TOLERANCE.get(conv_fn, 1e-5)
    np.testing.assert_allclose(conv_fn(x, kernel), conv.xla(x, kernel),
                               rtol=tol, atol=tol, err_msg=name)
    got = jax.grad(_sin_loss(conv_fn), argnums=(0, 1))(kernel, x)
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
