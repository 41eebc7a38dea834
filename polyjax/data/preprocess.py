"""Device-side image preprocessing: uint8 -> normalised float32, optional augmentation.

Image datasets keep their splits as uint8 in memory (and on device); the jitted
train and eval steps call the dataset's `ImagePreprocess` on each batch. The
augmentation (docs/DATASETS.md: random crop with zero padding, horizontal flip) draws its
randomness from a key the step derives with `fold_in(rng, step)`, so it is a pure
function of the run seed and the step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.247, 0.243, 0.261)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def random_crop_flip(x_BxHxWxC: jax.Array, rng: jax.Array, *, padding: int) -> jax.Array:
  """Random HxW crop of the zero-padded image, then a horizontal flip with probability 1/2."""
  b, h, w, _ = x_BxHxWxC.shape
  crop_key, flip_key = jax.random.split(rng)
  padded = jnp.pad(x_BxHxWxC, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets_Bx2 = jax.random.randint(crop_key, (b, 2), 0, 2 * padding + 1)

  def crop(img, off):
    return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

  out = jax.vmap(crop)(padded, offsets_Bx2)
  flip_B = jax.random.bernoulli(flip_key, 0.5, (b,))
  return jnp.where(flip_B[:, None, None, None], out[:, :, ::-1, :], out)


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
  """uint8 images in [0, 255] -> (x / 255 - mean) / std per channel, float32.

  With `augment`, training batches are first randomly cropped (zero padding
  `padding`, applied to the raw image as torchvision's RandomCrop does) and flipped.
  """
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augment: bool = False
  padding: int = 4

  def __call__(self, x_BxHxWxC: jax.Array, *, rng: jax.Array | None = None) -> jax.Array:
    """Training batches pass `rng` (augmented if `augment`); evaluation passes None."""
    x = x_BxHxWxC.astype(jnp.float32) / 255.0
    if self.augment and rng is not None:
      x = random_crop_flip(x, rng, padding=self.padding)
    mean_1x1x1xC = jnp.asarray(self.mean, jnp.float32).reshape(1, 1, 1, -1)
    std_1x1x1xC = jnp.asarray(self.std, jnp.float32).reshape(1, 1, 1, -1)
    return (x - mean_1x1x1xC) / std_1x1x1xC
