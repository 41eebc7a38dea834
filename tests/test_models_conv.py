"""The convolution forms compute the same function as XLA's convolution, and a model
built for a platform holds only that platform's form."""

import contextlib
import functools
import importlib.util
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.extend import core as jax_core

from polyjax import conv, losses, models, resnet, train_state
from polyjax import steps as steps_lib

_NHWC = ("NHWC", "HWIO", "NHWC")


def _xla(x, kernel):
  """XLA's valid, stride-1 convolution."""
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_NHWC)


def _numpy_conv(x, kernel):
  """Independent float64 reference: a sum over the kernel's taps of shifted inputs."""
  x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
  kh, kw = kernel.shape[:2]
  ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  return sum(np.einsum("bhwc,co->bhwo", x[:, i:i + ho, j:j + wo], kernel[i, j])
             for i in range(kh) for j in range(kw))


# F(4x4, 3x3)'s larger transform coefficients round about 15x more than F(2x2)'s.
FORM_TOLERANCE = {conv.winograd_2x2_3x3: 1e-5, conv.im2col: 1e-5, _xla: 1e-5,
                  conv.winograd_4x4_3x3: 5e-5}


@pytest.mark.parametrize("shape", [(2, 6, 10, 16), (1, 6, 6, 16), (3, 10, 6, 32),
                                   (2, 30, 30, 64), (1, 4, 4, 16)])
def test_winograd_matches_reference_convolution(shape):
  x = jax.random.normal(jax.random.key(1), shape)
  kernel = jax.random.normal(jax.random.key(2), (3, 3, shape[-1], 7)) / np.sqrt(9 * shape[-1])
  want = _numpy_conv(x, kernel)
  forms = [conv.winograd_2x2_3x3, conv.im2col, _xla]
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
  want = jax.grad(_sin_loss(_xla), argnums=(0, 1))(kernel, x)
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
      b = np.asarray(_xla(x, dk) + _xla(dx, kernel))
      c = np.asarray(_xla(dx, dk))
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


@pytest.mark.parametrize("shape, strides", [((2, 10, 6, 32), (1, 1)), ((2, 8, 6, 32), (1, 1)),
                                            ((2, 7, 9, 32), (1, 1)), ((2, 8, 6, 8), (1, 1)),
                                            ((2, 9, 8, 32), (2, 2))])
def test_cpu_conv_runs_its_form(shape, strides):
  """`conv.cpu_conv` of a valid convolution runs the form `cpu_form` names, bit for bit."""
  x = jax.random.normal(jax.random.key(1), shape)
  kernel = jax.random.normal(jax.random.key(2), (3, 3, shape[-1], 4))
  form = conv.cpu_form(shape, kernel.shape, strides)
  want = jax.jit(lambda x, k: conv.im2col(x, k, strides) if form == "im2col"
                 else conv.CPU_FORMS[form](x, k))(x, kernel)
  got = jax.jit(lambda x, k: conv.cpu_conv(x, k, strides, "VALID", dimension_numbers=_NHWC))(
      x, kernel)
  np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------
# A derived bound on how far the CPU forms and XLA's convolution part in float32.

_U = 2.0 ** -24  # float32's unit roundoff.

# Operations that round nothing: data movement, comparisons, max and min, negation.
_EXACT = {"reshape", "slice", "concatenate", "pad", "transpose", "broadcast_in_dim", "squeeze",
          "expand_dims", "select_n", "copy", "copy_p", "convert_element_type", "max", "min",
          "reduce_max", "neg", "abs", "ge", "gt", "le", "lt", "eq", "ne", "stop_gradient", "stack"}


def _gamma(n):
  return n * _U / (1 - n * _U)


def _stage_roundings(matrix):
  """Roundings a term meets in one stage of a Winograd transform (`conv._combine`): the
  additions of the longest row, its product, and its constant's own rounding."""
  return max(sum(c != 0 for c in row) for row in matrix) + 1


@contextlib.contextmanager
def _absolute_transforms():
  """conv's Winograd forms with every transform coefficient replaced by its absolute value."""
  saved = dict(conv._F)
  conv._F.update({m: {k: tuple(tuple(abs(c) for c in row) for row in mat)
                      for k, mat in f.items()} for m, f in saved.items()})
  try:
    yield
  finally:
    conv._F.update(saved)


def _conv_roundings(x, kernel, params):
  """Bounds on the rounding of XLA's convolution and of `conv.cpu_conv`'s form of it.

  A sum of products computed in any order, with each term passing through at most k
  roundings, errs by at most gamma_k times the sum of its terms' absolute values
  (Higham, "Accuracy and Stability of Numerical Algorithms", 2002, Lemma 3.1 and
  section 3.1). XLA's convolution and im2col: k = kh kw C, the terms x w. Winograd
  F(m x m, 3 x 3): k = C plus two stages of each transform, the terms the products of
  the transforms' coefficients, x and w, whose absolute sum is the form computed with
  absolute coefficients on |x| and |w|.
  """
  direct = _gamma(kernel.size // kernel.shape[-1]) * jax.lax.conv_general_dilated(
      jnp.abs(x), jnp.abs(kernel), params["window_strides"], params["padding"],
      dimension_numbers=_NHWC)
  x = jax.lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in
                                                            params["padding"]), (0, 0, 0)])
  form = conv.cpu_form(x.shape, kernel.shape, params["window_strides"])
  if form == "im2col":
    return direct, direct
  m = {"winograd4": 4, "winograd": 2}[form]
  f = conv._F[m]
  k = x.shape[-1] + 2 * sum(_stage_roundings(f[name]) for name in ("BT", "G", "AT"))
  with _absolute_transforms():
    return direct, _gamma(k) * conv.CPU_FORMS[form](jnp.abs(x), jnp.abs(kernel))


def _local_bound(eqn, ins, out):
  """The sum of the bounds on the rounding of one operation's result, from exact
  inputs, in the two programs (Higham 2002, chapters 2-3): 2u |result| each for +, -,
  *, / (the result's rounding and a Python constant operand's); 4u |result| each for
  sqrt and rsqrt (a few ulp); gamma_n times the sum of |terms| each for dot_general and
  reduce_sum (sums of n terms in any order); `_conv_roundings` for convolutions."""
  name, p = eqn.primitive.name, eqn.params
  if name in _EXACT:
    return None
  if name in ("add", "add_any", "sub", "mul", "div"):
    return 2 * 2 * _U * jnp.abs(out)
  if name in ("sqrt", "rsqrt"):
    return 2 * 4 * _U * jnp.abs(out)
  if name == "conv_general_dilated":
    return sum(_conv_roundings(*ins, p))
  if name == "dot_general":
    n = math.prod(ins[0].shape[d] for d in p["dimension_numbers"][0][0])
  elif name == "reduce_sum":
    n = math.prod(ins[0].shape[a] for a in p["axes"])
  else:
    raise NotImplementedError(f"no rounding bound for {name}")
  return 2 * _gamma(n) * eqn.primitive.bind(*(jnp.abs(a) for a in ins), **p)


def _interpret(jaxpr, consts, args, taps, bounds):
  """Evaluates `jaxpr`, adding taps[i] to the result of the i-th rounding operation
  and appending its `_local_bound` to `bounds`."""
  env = {}
  read = lambda v: v.val if isinstance(v, jax_core.Literal) else env[v]  # noqa: E731
  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    ins = [read(v) for v in eqn.invars]
    inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    if isinstance(inner, jax_core.ClosedJaxpr):  # jit, custom_jvp_call
      outs = _interpret(inner.jaxpr, inner.consts, ins, taps, bounds)
    else:
      out = eqn.primitive.bind(*ins, **eqn.params)
      outs = out if eqn.primitive.multiple_results else [out]
      if jnp.issubdtype(outs[0].dtype, jnp.floating):
        bound = _local_bound(eqn, ins, outs[0])
        if bound is not None:
          outs = [outs[0] + taps[len(bounds)]] if taps is not None else outs
          bounds.append(bound)
    env.update(zip(eqn.outvars, outs))
  return [read(v) for v in jaxpr.outvars]


def cpu_xla_difference_bound(fn, *args):
  """Per element of `fn(*args)` (one array; `fn` built with XLA's convolutions): a
  bound, to first order in float32's unit roundoff, on the difference between `fn`
  computed in float32 and the same function built for the CPU (every convolution
  `conv.cpu_conv`). The two programs share every operation but the convolutions;
  each differs from exact arithmetic by the sum over its rounding operations of
  |d output / d result| times that result's rounding, so the difference is within
  that sum over both (`_local_bound`; where rounding moves an input of a ReLU or max
  across its kink, the derivative is one side's). Evaluated in float64."""
  with jax.enable_x64(True):
    args = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), args)
    closed = jax.make_jaxpr(fn)(*args)
    flat = jax.tree.leaves(args)

    def run(taps):
      bounds = []
      out = _interpret(closed.jaxpr, closed.consts, flat, taps, bounds)[0]
      return out, bounds

    shapes = jax.eval_shape(lambda: run(None)[1])
    taps = [jnp.zeros(s.shape, s.dtype) for s in shapes]

    # Run once: XLA's backend optimisations would cost more than they save.
    @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
    def total(taps):
      jac, bounds = jax.jacrev(run, has_aux=True)(taps)
      out_ndim = jac[0].ndim - taps[0].ndim
      return sum(jnp.sum(jnp.abs(j) * b[(None,) * out_ndim], axis=tuple(range(out_ndim, j.ndim)))
                 for j, b in zip(jac, bounds))

    return np.asarray(total(taps))


@pytest.mark.parametrize("kernel, strides, padding, shape", [
    (3, 1, "VALID", (2, 7, 9, 3)), (3, 1, "VALID", (2, 10, 10, 16)),
    (3, 1, "VALID", (2, 8, 10, 16)), (3, 1, ((1, 1), (1, 1)), (2, 8, 8, 16)),
    (3, 2, ((1, 1), (1, 1)), (2, 8, 9, 4)), (1, 2, ((0, 0), (0, 0)), (2, 8, 8, 4)),
    (7, 2, ((3, 3), (3, 3)), (1, 12, 12, 3)), (3, 2, "SAME", (2, 9, 9, 4))])
def test_cpu_conv_layer_matches_xla_within_the_rounding_bound(kernel, strides, padding, shape):
  """An `nnx.Conv` built for the CPU (strided, padded, 1x1 and 7x7 too) computes what
  the one built for other platforms does, within the two forms' rounding bounds."""
  layers = {backend: nnx.Conv(shape[-1], 5, (kernel, kernel), strides=strides, padding=padding,
                              conv_general_dilated=conv.for_backend(backend),
                              rngs=nnx.Rngs(0)) for backend in ("cpu", "gpu")}
  assert layers["cpu"].conv_general_dilated is conv.cpu_conv
  assert layers["gpu"].conv_general_dilated is jax.lax.conv_general_dilated
  x = jax.random.normal(jax.random.key(1), shape)
  out = {}
  for backend, layer in layers.items():
    graphdef, state = nnx.split(layer)
    fn = lambda state, x: nnx.merge(graphdef, state)(x)  # noqa: E731
    out[backend] = jax.jit(fn)(state, x)
  bound = cpu_xla_difference_bound(fn, state, x)
  assert out["cpu"].shape == out["gpu"].shape
  assert np.all(np.abs(out["cpu"] - out["gpu"]) <= bound)


def _equations(jaxpr):
  """Every equation of `jaxpr` and of the programs inside it (scan, jit, custom rules)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(sub, jax_core.ClosedJaxpr):
          yield from _equations(sub.jaxpr)
        elif isinstance(sub, jax_core.Jaxpr):
          yield from _equations(sub)


# The ConvNet, and a narrow CIFAR ResNet-18 (init_channels 4: its 16- and 32-channel
# stages take Winograd F(4x4); strided and 1x1 convolutions too), built for a platform.
MODELS = {
    "convnet": lambda backend: models.ConvNet(
        in_shape=(32, 32, 3), num_classes=2, backend=backend, rngs=nnx.Rngs(0)),
    "cifar_resnet18": lambda backend: resnet.ResNet(
        depth=18, in_channels=3, num_classes=2, init_channels=4, backend=backend,
        rngs=nnx.Rngs(0)),
}


def _abstract_model(name, backend):
  """(ModelDef, optimizer, TrainState) of MODELS[name] built for `backend`, shapes only."""
  model = nnx.eval_shape(lambda: MODELS[name](backend))
  train_def, params, model_state = nnx.split(model, nnx.Param, ...)
  eval_def = nnx.graphdef(nnx.view(model, use_running_average=True, raise_if_not_found=False))
  tx = train_state.make_optimizer(lr=0.1, momentum=0.9, weight_decay=0.0)
  state = train_state.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
      opt_state=jax.eval_shape(tx.init, params), rng=jax.random.key(0),
      adv_probs=jnp.full((2,), 0.5))
  return train_state.ModelDef(train=train_def, eval=eval_def), tx, state


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("backend", ["cpu", "gpu", "tpu"])
def test_train_step_holds_only_the_convolution_of_the_models_platform(name, backend):
  """Built for a GPU or TPU, a model's train step holds XLA's convolution and no matrix
  product but the dense layers' (2-D operands); built for the CPU, no convolution and
  the forms' products over images (operands of 3 or more dimensions)."""
  model_def, tx, state = _abstract_model(name, backend)
  step = steps_lib.make_train_step(model_def=model_def, loss_fn=losses.get_loss("ce"), tx=tx)
  batch = {"x": jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.float32),
           "y": jax.ShapeDtypeStruct((4,), jnp.int32),
           "group": jax.ShapeDtypeStruct((4,), jnp.int32),
           "weight": jax.ShapeDtypeStruct((4,), jnp.float32)}
  eqns = list(_equations(jax.make_jaxpr(step)(state, batch).jaxpr))
  names = {e.primitive.name for e in eqns}
  dot_ranks = {max(v.aval.ndim for v in e.invars) for e in eqns
               if e.primitive.name == "dot_general"}
  assert "platform_index" not in names
  if backend == "cpu":
    assert "conv_general_dilated" not in names and max(dot_ranks) >= 3
  else:
    assert "conv_general_dilated" in names and dot_ranks == {2}


def test_models_are_built_for_the_default_backend():
  """Without `backend`, a model takes the forms of `jax.default_backend()` (here the CPU)."""
  assert jax.default_backend() == "cpu"
  for name in ("convnet", "cifar_resnet18"):
    model = nnx.eval_shape(lambda: models.get_model(name, in_shape=(32, 32, 3), num_classes=2,
                                                    rngs=nnx.Rngs(0)))
    layers = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Conv)]
    assert layers and all(m.conv_general_dilated is conv.cpu_conv for m in layers)


def test_resnet_built_for_the_cpu_matches_xla_within_the_rounding_bound():
  """The narrow CIFAR ResNet-18 of MODELS built for the CPU gives the logits of the
  same model built for a GPU within the derived float32 bound (evaluation mode:
  BatchNorm an affine map)."""
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  out, states = {}, {}
  for backend in ("cpu", "gpu"):
    model = MODELS["cifar_resnet18"](backend)
    graphdef, states[backend] = nnx.split(
        nnx.view(model, use_running_average=True, raise_if_not_found=False))
    fn = lambda state, x: nnx.merge(graphdef, state)(x)  # noqa: E731
    out[backend] = jax.jit(fn)(states[backend], x)
  for a, b in zip(jax.tree.leaves(states["cpu"]), jax.tree.leaves(states["gpu"])):
    np.testing.assert_array_equal(a, b)
  bound = cpu_xla_difference_bound(fn, states["gpu"], x)
  assert np.all(np.abs(out["cpu"] - out["gpu"]) <= bound)
  # Far below the logits, by which a wrong form would err.
  assert np.all(bound < 0.1 * np.abs(out["gpu"]).max())


@pytest.mark.parametrize("hw", [(4, 6), (5, 7)])
def test_max_pool_matches_nnx(hw):
  x = jax.random.normal(jax.random.key(2), (2, *hw, 3))
  want = nnx.max_pool(x, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(models.max_pool_2x2(x), want)


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
  want = jax.grad(_sin_loss(_xla), argnums=(0, 1))(kernel, x)
  for name, conv_fn in bench.FORMULATIONS.items():
    tol = FORM_TOLERANCE.get(conv_fn, 1e-5)
    np.testing.assert_allclose(conv_fn(x, kernel), _xla(x, kernel),
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
