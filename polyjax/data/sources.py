"""Reading prepared datasets: tensorflow-datasets sources read with grain.

CIFAR-10 and CelebA are prepared once by tensorflow-datasets in the ArrayRecord
format (`python -m polyjax.data prepare <name>`, which needs TensorFlow) and
read here through `tfds.data_source`, which needs no TensorFlow. `read` decodes
the chosen records with grain's threaded reader, once, into numpy arrays that the
dataset modules keep in memory. Missing data raises `DataMissing` with one line
naming the dataset, the path looked at and the command that prepares it.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import grain
import numpy as np

# polyjax dataset name -> tensorflow-datasets name.
TFDS_NAMES = {"cifar10": "cifar10", "celeba": "celeb_a"}


class DataMissing(FileNotFoundError):
  """A dataset that has not been prepared; the message says how to prepare it."""


def default_data_dir() -> str:
  """tensorflow-datasets' own default: $TFDS_DATA_DIR or ~/tensorflow_datasets."""
  return os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def prepare_command(dataset: str, data_dir: str) -> str:
  return f"python -m polyjax.data prepare {dataset} --data_dir={data_dir}"


def open_split(dataset: str, split: str, *, data_dir: str | None,
               skip_images: bool = False) -> Sequence[dict[str, Any]]:
  """The random-access source of one split of a prepared tensorflow-datasets dataset.

  `skip_images`: records keep their 'image' encoded (tfds' `SkipDecoding`), for
  reading only the labels and attributes without decoding every image.
  """
  import tensorflow_datasets as tfds  # Here: runs on other datasets never import it.

  data_dir = data_dir or default_data_dir()
  name = TFDS_NAMES[dataset]
  decoders = {"image": tfds.decode.SkipDecoding()} if skip_images else None
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                            decoders=decoders)
  except Exception as e:  # tfds raises several types here; tell them apart below.
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
      raise DataMissing(
          f"data.name={dataset!r}: no prepared {name!r} under {builder.data_dir}; "
          f"prepare it with: {prepare_command(dataset, data_dir)}") from e
    raise DataMissing(
        f"data.name={dataset!r}: {builder.data_dir} cannot be read without TensorFlow "
        f"({e.__class__.__name__}: {str(e).splitlines()[0]}); re-prepare it in the "
        f"array_record format with: {prepare_command(dataset, data_dir)}") from e


def read(source: Sequence[Any], fn: Callable[[Any], dict[str, np.ndarray]], *,
         indices: np.ndarray | None = None, batch_size: int = 256,
         num_threads: int = 16) -> dict[str, np.ndarray]:
  """`fn(source[i])` for every i in `indices` (default: all), stacked, in order.

  Records are fetched and decoded by grain's reader threads (image decoding
  releases the GIL), `batch_size` at a time.
  """
  idx = np.arange(len(source)) if indices is None else np.asarray(indices)
  if len(idx) == 0:
    raise ValueError("read: no records selected")
  ds = (grain.MapDataset.range(len(idx))
        .map(lambda i: fn(source[int(idx[i])]))
        .batch(batch_size))
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                            prefetch_buffer_size=4 * num_threads))
  parts = list(it)
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
