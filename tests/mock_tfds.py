"""Controlled tensorflow-datasets data for tests, through `tfds.testing.mock_data`.

`tfds.data_source` (what polyjax calls) is served by `as_data_source_fn`, so the
whole polyjax reading path runs, with examples whose labels and attributes are
known exactly. Pixels encode the example: CIFAR-10 and CIFAR-100 image[0, 0] =
(label, i % 251, i // 251), label i % 10 or i % 100; CelebA image[109, 89] (the crop centre) = (split id, i % 251, i // 251).
A source opened with `decoders={"image": tfds.decode.SkipDecoding()}` gives the
image as bytes, as tfds does.
"""

from __future__ import annotations

import contextlib

import numpy as np
import tensorflow_datasets as tfds

CIFAR_PER_CLASS = {"train": 60, "test": 20}
CIFAR100_PER_CLASS = {"train": 12, "test": 2}
CELEBA_ATTRS = None  # filled lazily from the tfds feature spec
CELEBA_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


class Examples:
  """A random-access sequence of examples built on demand."""

  def __init__(self, n, make):
    self._n, self._make = n, make

  def __len__(self):
    return self._n

  def __getitem__(self, i):
    if not 0 <= i < self._n:
      raise IndexError(i)
    return self._make(int(i))


def cifar_label(i: int, num_labels: int = 10) -> int:
  return i % num_labels


def _cifar(split, num_labels=10):
  per_class = (CIFAR_PER_CLASS if num_labels == 10 else CIFAR100_PER_CLASS)[split]

  def make(i):
    label = cifar_label(i, num_labels)
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 0] = np.uint8(label * 20 % 256)  # a value that survives normalisation
    img[0, 0] = (label, i % 251, i // 251)
    return {"image": img, "label": np.int64(label), "id": f"{split}_{i}"}
  return Examples(num_labels * per_class, make)


def celeba_attrs(split: str, i: int) -> tuple[int, int]:
  """(Blond_Hair, Male) of example i: a fixed, unbalanced pattern of the four groups."""
  g = [0, 0, 0, 1, 1, 1, 2, 2, 3, 0, 1, 2][i % 12] if split != "test" else i % 4
  return g // 2, g % 2


CELEBA_SIZES = {"train": 240, "validation": 60, "test": 48}


def _celeba(builder, split):
  names = list(builder.info.features["attributes"].keys())

  def make(i):
    blond, male = celeba_attrs(split, i)
    attrs = {k: np.bool_(False) for k in names}
    attrs["Blond_Hair"], attrs["Male"] = np.bool_(blond), np.bool_(male)
    img = np.full((218, 178, 3), 100, np.uint8)
    img[:20] = 255  # outside the centre crop: must not reach the model
    img[109, 89] = (CELEBA_SPLIT_IDS[split], i % 251, i // 251)
    return {"image": img, "attributes": attrs}
  return Examples(CELEBA_SIZES[split], make)


class EncodedImages:
  """What tfds' `SkipDecoding()` on 'image' gives: records whose image is still bytes."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    return {**self.source[i], "image": b"\x89PNG (not decoded)"}


def _as_data_source(builder, split, decoders=None, deserialize_method=None, **kwargs):
  del deserialize_method, kwargs
  if builder.name == "cifar10":
    source = _cifar(split)
  elif builder.name == "cifar100":
    source = _cifar(split, 100)
  elif builder.name == "celeb_a":
    source = _celeba(builder, split)
  else:
    raise ValueError(f"no mock for {builder.name}")
  if decoders is not None:
    if set(decoders) != {"image"} or not isinstance(decoders["image"], tfds.decode.SkipDecoding):
      raise ValueError(f"mock_tfds only mocks SkipDecoding of 'image', got {decoders}")
    return EncodedImages(source)
  return source


@contextlib.contextmanager
def mock():
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_data_source_fn=_as_data_source):
    yield
