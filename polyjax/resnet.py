"""ResNets in Flax NNX (docs/DATASETS.md, "Models") and loading of torchvision ImageNet weights.

- CIFAR ResNet-18/34/50: 3x3 stride-1 stem of `init_channels`, no initial pooling,
  four stages of widths (1, 2, 4, 8) x init_channels, global average pool.
- ImageNet ResNet-50: 7x7 stride-2 stem, 3x3 stride-2 max pool, bottleneck stages
  [3, 4, 6, 3] (stride on the 3x3 conv, "v1.5", as torchvision).
- ResNet-32 for CIFAR (He et al. 2016, Sec. 4.2; as LDAM-DRW trains it, its
  `resnet32`): 3x3 stem of 16, three stages of 5 basic blocks of 16, 32 and 64
  channels, option-A shortcuts (stride-2 subsampling, zero channels padded on both
  sides: no parameters), He (kaiming) normal initialisation of every convolution and
  of a linear head; 464,154 parameters with ten classes.

Modules are named as in torchvision (conv1, bn1, layer1..4, downsample) so that
a converted torchvision state dict maps onto them by name; the classifier is
`head` (torchvision's `fc`), the one layer `model.freeze_features` trains.
BatchNorm follows PyTorch (momentum 0.1 there = 0.9 here, epsilon 1e-5) and
keeps its statistics in `nnx.BatchStat` variables. `ResNet(backend=...)` ('cpu',
'gpu', 'tpu'; `jax.default_backend()` when None) picks the convolutions' form when
the model is built (`conv.for_backend`): matrix products on CPU, XLA's convolution
elsewhere.
"""

from __future__ import annotations

from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from polyjax import conv, heads

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}


def _conv(cin, cout, k, stride, conv_fn, rngs, kernel_init=None):
  pad = (k - 1) // 2
  init = {} if kernel_init is None else {"kernel_init": kernel_init}
  return nnx.Conv(cin, cout, (k, k), strides=(stride, stride),
                  padding=((pad, pad), (pad, pad)), use_bias=False,
                  conv_general_dilated=conv_fn, rngs=rngs, **init)


def _bn(c, rngs):
  return nnx.BatchNorm(c, momentum=0.9, epsilon=1e-5, rngs=rngs)


def pad_shortcut(x_BxHxWxC, planes: int):
  """Option-A shortcut (He et al. 2016): every other row and column, then planes // 4
  zero channels on each side."""
  pad = planes // 4
  return jnp.pad(x_BxHxWxC[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (pad, pad)))


class BasicBlock(nnx.Module):
  """Two 3x3 convolutions; a projection shortcut (1x1 conv + BN) where the shape
  changes, or with `pad_shortcut` the parameter-free option A."""
  expansion = 1

  def __init__(self, cin: int, planes: int, stride: int, *, conv_fn: Callable,
               rngs: nnx.Rngs, pad_shortcut: bool = False, kernel_init=None):
    self.planes = planes
    self.conv1 = _conv(cin, planes, 3, stride, conv_fn, rngs, kernel_init)
    self.bn1 = _bn(planes, rngs)
    self.conv2 = _conv(planes, planes, 3, 1, conv_fn, rngs, kernel_init)
    self.bn2 = _bn(planes, rngs)
    self.reshaped = stride != 1 or cin != planes
    self.downsample = (
        nnx.List([_conv(cin, planes, 1, stride, conv_fn, rngs), _bn(planes, rngs)])
        if self.reshaped and not pad_shortcut else None)

  def __call__(self, x):
    out = nnx.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.downsample is not None:
      short = self.downsample[1](self.downsample[0](x))
    else:
      short = pad_shortcut(x, self.planes) if self.reshaped else x
    return nnx.relu(out + short)


class Bottleneck(nnx.Module):
  expansion = 4

  def __init__(self, cin: int, planes: int, stride: int, *, conv_fn: Callable,
               rngs: nnx.Rngs):
    cout = planes * self.expansion
    self.conv1, self.bn1 = _conv(cin, planes, 1, 1, conv_fn, rngs), _bn(planes, rngs)
    self.conv2, self.bn2 = _conv(planes, planes, 3, stride, conv_fn, rngs), _bn(planes, rngs)
    self.conv3, self.bn3 = _conv(planes, cout, 1, 1, conv_fn, rngs), _bn(cout, rngs)
    self.downsample = (
        nnx.List([_conv(cin, cout, 1, stride, conv_fn, rngs), _bn(cout, rngs)])
        if stride != 1 or cin != cout else None)

  def __call__(self, x):
    out = nnx.relu(self.bn1(self.conv1(x)))
    out = nnx.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    short = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
    return nnx.relu(out + short)


class ResNet(nnx.Module):
  """ResNet-{18,34,50}; `imagenet_stem` picks the 7x7 stem with max pool."""

  def __init__(self, *, depth: int, in_channels: int, num_classes: int,
               init_channels: int = 64, imagenet_stem: bool = False, head: str = "linear",
               backend: str | None = None, rngs: nnx.Rngs):
    if depth not in STAGE_BLOCKS:
      raise ValueError(f"ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}")
    block = Bottleneck if depth >= 50 else BasicBlock
    conv_fn = conv.for_backend(backend)
    self.imagenet_stem = imagenet_stem
    k, stride = (7, 2) if imagenet_stem else (3, 1)
    self.conv1 = _conv(in_channels, init_channels, k, stride, conv_fn, rngs)
    self.bn1 = _bn(init_channels, rngs)
    cin = init_channels
    for i, n in enumerate(STAGE_BLOCKS[depth]):
      planes = init_channels * 2 ** i
      blocks = []
      for b in range(n):
        blocks.append(block(cin, planes, (1 if i == 0 or b > 0 else 2), conv_fn=conv_fn,
                            rngs=rngs))
        cin = planes * block.expansion
      setattr(self, f"layer{i + 1}", nnx.List(blocks))
    self.head = heads.make_head(head, cin, num_classes, rngs=rngs)

  def __call__(self, x_BxHxWxC):
    x = nnx.relu(self.bn1(self.conv1(x_BxHxWxC)))
    if self.imagenet_stem:
      x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i in range(1, 5):
      for blk in getattr(self, f"layer{i}"):
        x = blk(x)
    return self.head(jnp.mean(x, axis=(1, 2)))


# ---------------------------------------------------------------------------
# Pretrained weights.
#
# The file is a NumPy .npz whose keys are torchvision's ResNet-50 state-dict names
# and whose arrays keep PyTorch layouts: conv weights (O, I, kh, kw); BatchNorm
# weight, bias, running_mean, running_var (C,). `fc.*` (the ImageNet classifier) and
# `*.num_batches_tracked` are ignored; every other key must be present with
# exactly the expected shape. scripts/convert_torchvision_resnet50.py writes it.


def _named_layers(model: ResNet) -> Iterator[tuple[str, nnx.Module]]:
  yield "conv1", model.conv1
  yield "bn1", model.bn1
  for i in range(1, 5):
    for b, blk in enumerate(getattr(model, f"layer{i}")):
      prefix = f"layer{i}.{b}"
      for j in (1, 2, 3):
        if hasattr(blk, f"conv{j}"):
          yield f"{prefix}.conv{j}", getattr(blk, f"conv{j}")
          yield f"{prefix}.bn{j}", getattr(blk, f"bn{j}")
      if blk.downsample is not None:
        yield f"{prefix}.downsample.0", blk.downsample[0]
        yield f"{prefix}.downsample.1", blk.downsample[1]


def _targets(model: ResNet) -> dict[str, tuple[nnx.Variable, callable]]:
  """torchvision key -> (variable to fill, array transform from the PyTorch layout)."""
  out = {}
  for name, layer in _named_layers(model):
    if isinstance(layer, nnx.Conv):
      out[f"{name}.weight"] = (layer.kernel, lambda a: np.transpose(a, (2, 3, 1, 0)))
    else:
      ident = lambda a: a  # noqa: E731
      out[f"{name}.weight"] = (layer.scale, ident)
      out[f"{name}.bias"] = (layer.bias, ident)
      out[f"{name}.running_mean"] = (layer.mean, ident)
      out[f"{name}.running_var"] = (layer.var, ident)
  return out


def load_torchvision_weights(model: ResNet, path: str) -> None:
  """Fills every layer but `head` from a converted torchvision ResNet-50 .npz.

  Raises ValueError naming the file and the first missing, unexpected or
  mis-shaped array, before any variable is changed.
  """
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  targets = _targets(model)
  ignored = [k for k in arrays if k.startswith("fc.") or k.endswith("num_batches_tracked")]
  unexpected = sorted(set(arrays) - set(targets) - set(ignored))
  if unexpected:
    raise ValueError(f"model.pretrained={path}: unexpected array {unexpected[0]!r} "
                     f"({len(unexpected)} in all); is it a torchvision ResNet-50 state dict?")
  new = {}
  for key, (var, transform) in targets.items():
    if key not in arrays:
      raise ValueError(f"model.pretrained={path}: missing array {key!r}")
    value = transform(arrays[key])
    if value.shape != var.get_value().shape:
      raise ValueError(f"model.pretrained={path}: {key!r} has shape {arrays[key].shape}, "
                       f"which gives {value.shape}; the model needs {var.get_value().shape}")
    new[key] = jnp.asarray(value, var.get_value().dtype)
  for key, (var, _) in targets.items():
    var.set_value(new[key])


# PyTorch's kaiming_normal_ (LDAM-DRW's init): N(0, 2 / fan_in), not truncated.
KAIMING_NORMAL = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")


def torch_linear_bias(fan_in: int):
  """PyTorch's default nn.Linear bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype,
                                                                  -bound, bound)


class ResNet32(nnx.Module):
  """ResNet-32 for 32x32 images (module docstring): stem, layer1..3, head."""

  def __init__(self, *, in_channels: int, num_classes: int, head: str = "linear",
               backend: str | None = None, rngs: nnx.Rngs):
    conv_fn = conv.for_backend(backend)
    self.conv1 = _conv(in_channels, 16, 3, 1, conv_fn, rngs, KAIMING_NORMAL)
    self.bn1 = _bn(16, rngs)
    cin = 16
    for i, planes in enumerate((16, 32, 64)):
      setattr(self, f"layer{i + 1}", nnx.List([
          BasicBlock(cin if b == 0 else planes, planes, 2 if i > 0 and b == 0 else 1,
                     conv_fn=conv_fn, rngs=rngs, pad_shortcut=True,
                     kernel_init=KAIMING_NORMAL) for b in range(5)]))
      cin = planes
    self.head = heads.make_head(head, 64, num_classes, rngs=rngs, kernel_init=KAIMING_NORMAL,
                                bias_init=torch_linear_bias(64))

  def __call__(self, x_BxHxWxC):
    x = nnx.relu(self.bn1(self.conv1(x_BxHxWxC)))
    for layer in (self.layer1, self.layer2, self.layer3):
      for blk in layer:
        x = blk(x)
    return self.head(jnp.mean(x, axis=(1, 2)))


def resnet32(*, in_shape, num_classes, rngs, head="linear", **_):
  return ResNet32(in_channels=in_shape[-1], num_classes=num_classes, head=head, rngs=rngs)


def cifar_resnet(depth: int):
  def build(*, in_shape, num_classes, rngs, init_channels=64, head="linear", **_):
    return ResNet(depth=depth, in_channels=in_shape[-1], num_classes=num_classes,
                  init_channels=init_channels, head=head, rngs=rngs)
  return build


def imagenet_resnet50(*, in_shape, num_classes, rngs, pretrained=None, head="linear", **_):
  model = ResNet(depth=50, in_channels=in_shape[-1], num_classes=num_classes,
                 imagenet_stem=True, head=head, rngs=rngs)
  if pretrained is not None:
    load_torchvision_weights(model, pretrained)
  return model

