"""Device-side image normalisation and augmentation against NumPy."""

import jax
import numpy as np

from polyjax.data.preprocess import CIFAR_MEAN, CIFAR_STD, ImagePreprocess


def test_normalisation_matches_numpy():
  x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
  out = np.asarray(ImagePreprocess(CIFAR_MEAN, CIFAR_STD)(x))
  ref = (x / 255.0 - np.array(CIFAR_MEAN)) / np.array(CIFAR_STD)
  np.testing.assert_allclose(out, ref, atol=1e-5)
  # Without augmentation a key changes nothing (evaluation and un-augmented training agree).
  np.testing.assert_array_equal(out, ImagePreprocess(CIFAR_MEAN, CIFAR_STD)(x, rng=jax.random.key(1)))


def test_augmentation_is_a_padded_crop_or_its_flip_and_deterministic():
  x = np.random.default_rng(1).integers(0, 256, (24, 8, 8, 3), dtype=np.uint8)
  pre = ImagePreprocess((0.0,) * 3, (1 / 255,) * 3, augment=True, padding=2)  # identity normalisation
  out = np.asarray(pre(x, rng=jax.random.key(3)))
  np.testing.assert_array_equal(out, np.asarray(pre(x, rng=jax.random.key(3))))
  padded = np.pad(x.astype(np.float32), ((0, 0), (2, 2), (2, 2), (0, 0)))
  seen_flip = seen_shift = False
  for i in range(len(x)):
    matches = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
               if np.allclose(out[i], (lambda c: c[:, ::-1] if f else c)(
                   padded[i, dy:dy + 8, dx:dx + 8]), atol=1e-3)]
    assert matches, f"example {i} is not a crop of the padded image"
    seen_flip |= any(f for _, _, f in matches) and not any(not f for _, _, f in matches)
    seen_shift |= all((dy, dx) != (2, 2) for dy, dx, _ in matches)
  assert seen_flip and seen_shift
