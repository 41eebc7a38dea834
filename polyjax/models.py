"""Flax NNX classifiers (docs/DATASETS.md, "Models"), chosen by name through `MODELS`.

Every model maps a batch `x_BxD` or `x_BxHxWxC` to logits `x_BxK`; its last layer
is `head`, linear or cosine (`model.head`, `polyjax.heads`). Models that
hold statistics (BatchNorm) keep them in `nnx.BatchStat` variables, which the
train state carries next to the parameters.
"""

from __future__ import annotations

from typing import Callable

import jax
from flax import nnx

from polyjax import conv, heads
from polyjax.heads import HEADS  # noqa: F401  (model.head's values, for config validation)


def _flatten(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1)


def max_pool_2x2(x_BxHxWxC: jax.Array) -> jax.Array:
  """2x2 max pooling with stride 2 (valid: an odd last row or column is dropped)."""
  b, h, w, c = x_BxHxWxC.shape
  x = x_BxHxWxC[:, :h // 2 * 2, :w // 2 * 2, :]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Linear(nnx.Module):
  """Affine classifier on the flattened input."""

  def __init__(self, *, in_features: int, num_classes: int, head: str = "linear",
               rngs: nnx.Rngs):
    self.head = heads.make_head(head, in_features, num_classes, rngs=rngs)

  def __call__(self, x):
    return self.head(_flatten(x))


class MLP(nnx.Module):
  """ReLU MLP on the flattened input (paper: 3 hidden layers of 200)."""

  def __init__(self, *, in_features: int, num_classes: int, hidden: int = 200,
               depth: int = 3, head: str = "linear", rngs: nnx.Rngs):
    sizes = [in_features] + [hidden] * depth
    self.layers = nnx.List(
        [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
    self.head = heads.make_head(head, sizes[-1], num_classes, rngs=rngs)

  def __call__(self, x):
    x = _flatten(x)
    for layer in self.layers:
      x = nnx.relu(layer(x))
    return self.head(x)


class ConvNet(nnx.Module):
  """The ConvNet of Byrd & Lipton (2017) for 32x32 images, valid padding.

  `backend` ('cpu', 'gpu', 'tpu'; `jax.default_backend()` when None) picks the
  form of the convolutions (`conv.for_backend`): matrix products on CPU, which
  stay fast in the compiled epoch loop, XLA's own convolution elsewhere.
  """

  def __init__(self, *, in_shape: tuple[int, ...], num_classes: int,
               head: str = "linear", backend: str | None = None, rngs: nnx.Rngs):
    h, w, c = in_shape
    conv_fn = conv.for_backend(backend)

    def conv3x3(cin, cout):
      return nnx.Conv(cin, cout, (3, 3), padding="VALID", conv_general_dilated=conv_fn,
                      rngs=rngs)

    self.block1 = nnx.List([conv3x3(c, 64), conv3x3(64, 64)])
    self.block2 = nnx.List([conv3x3(64, 128), conv3x3(128, 128), conv3x3(128, 128)])
    # Spatial size after two valid 3x3 convs, pool 2, three valid convs, pool 2.
    h, w = (h - 4) // 2, (w - 4) // 2
    h, w = (h - 6) // 2, (w - 6) // 2
    if h < 1 or w < 1:
      raise ValueError(f"model.name='convnet' needs images of at least 18x18, got {in_shape}")
    self.fc1 = nnx.Linear(h * w * 128, 512, rngs=rngs)
    self.fc2 = nnx.Linear(512, 128, rngs=rngs)
    self.head = heads.make_head(head, 128, num_classes, rngs=rngs)

  def __call__(self, x):
    # max_pool_2x2 equals `nnx.max_pool`, but stays fast in the compiled epoch loop
    # on CPU.
    for layer in self.block1:
      x = nnx.relu(layer(x))
    x = max_pool_2x2(x)
    for layer in self.block2:
      x = nnx.relu(layer(x))
    x = max_pool_2x2(x)
    x = nnx.relu(self.fc1(_flatten(x)))
    x = nnx.relu(self.fc2(x))
    return self.head(x)


def _numel(shape: tuple[int, ...]) -> int:
  out = 1
  for s in shape:
    out *= s
  return out


def _linear(*, in_shape, num_classes, rngs, head="linear", **_):
  return Linear(in_features=_numel(in_shape), num_classes=num_classes, head=head, rngs=rngs)


def _mlp(*, in_shape, num_classes, rngs, hidden=200, depth=3, head="linear", **_):
  return MLP(in_features=_numel(in_shape), num_classes=num_classes, hidden=hidden,
             depth=depth, head=head, rngs=rngs)


def _convnet(*, in_shape, num_classes, rngs, head="linear", **_):
  return ConvNet(in_shape=in_shape, num_classes=num_classes, head=head, rngs=rngs)


from polyjax import resnet  # noqa: E402  (ResNets live in their own module)

# name -> builder(in_shape=(...), num_classes=K, rngs=..., **model_config) -> nnx.Module.
MODELS: dict[str, Callable[..., nnx.Module]] = {
    "linear": _linear,
    "mlp": _mlp,
    "convnet": _convnet,
    "cifar_resnet18": resnet.cifar_resnet(18),
    "cifar_resnet34": resnet.cifar_resnet(34),
    "cifar_resnet50": resnet.cifar_resnet(50),
    "resnet32": resnet.resnet32,
    "resnet50": resnet.imagenet_resnet50,
}


def get_model(name: str, *, in_shape: tuple[int, ...], num_classes: int,
              rngs: nnx.Rngs, **kwargs) -> nnx.Module:
  """Builds model `name` for inputs of shape `in_shape` (no batch dimension)."""
  if name not in MODELS:
    raise ValueError(f"model.name must be one of {sorted(MODELS)}, got {name!r}")
  return MODELS[name](in_shape=tuple(in_shape), num_classes=num_classes, rngs=rngs, **kwargs)
