"""Reading prepared datasets: tensorflow-datasets sources read with grain.

CIFAR-10, CIFAR-100 and CelebA are prepared once by tensorflow-datasets in the ArrayRecord
format (`python -m polyjax.data prepare <name>`, which needs TensorFlow) and
read here through `tfds.data_source`, which needs no TensorFlow. `read` decodes
the chosen records with grain's threaded reader, once, into numpy arrays that the
dataset modules keep in memory. Missing data raises `DataMissing` with one line
naming the dataset, the path looked at and the command that prepares it; data that
is there but unusable (an unreadable dataset_info.json, a missing or corrupt
shard, a bad Waterbirds file) raises its subclass `DataInvalid`, one line naming
the file. `polyjax.main` and `python -m polyjax.data` print either as one line
and exit with status 2.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Any, Callable, Iterator, Sequence

import grain
import numpy as np

from polyjax.data.errors import DataInvalid, DataMissing, reason

# polyjax dataset name -> tensorflow-datasets name.
TFDS_NAMES = {"cifar10": "cifar10", "cifar100": "cifar100", "celeba": "celeb_a"}


def _tfds_reason(e: BaseException) -> str:
  """`reason(e)` without the prefix tfds adds to errors of building a dataset (the
  dataset's name and data_dir, which the one-line message already gives)."""
  return re.sub(r'Failed to construct dataset "[^"]*", builder_kwargs "[^"]*": ', "",
                reason(e))


def default_data_dir() -> str:
  """tensorflow-datasets' own default: $TFDS_DATA_DIR or ~/tensorflow_datasets."""
  return os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def prepare_command(dataset: str, data_dir: str) -> str:
  return f"python -m polyjax.data prepare {dataset} --data_dir={data_dir}"


@contextlib.contextmanager
def _tfds_logs_held() -> Iterator[Callable[[], None]]:
  """Holds back what tensorflow-datasets logs (through absl's 'absl' logger) while it
  looks for a prepared dataset; the records are replayed on leaving unless the
  yielded `drop()` was called.

  For a folder that holds no prepared dataset tfds warns "Variant folder ... has no
  dataset_info.json" (twice: once per builder) before open_split's one-line
  DataMissing says the same and how to prepare it; on success nothing is lost.
  """
  logger = logging.getLogger("absl")
  held: list[logging.LogRecord] = []
  keep = [True]

  class Hold(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
      held.append(record)

  hold, propagate = Hold(), logger.propagate
  logger.addHandler(hold)
  logger.propagate = False
  try:
    yield lambda: keep.__setitem__(0, False)
  finally:
    logger.removeHandler(hold)
    logger.propagate = propagate
    if keep[0]:
      for record in held:
        logger.handle(record)


class Records(Sequence):
  """A prepared split's records (`open_split`): a record that cannot be read raises
  DataInvalid naming the dataset's folder, with tfds' own error (which names the
  shard file), instead of a traceback from a reader thread. Index errors pass
  through: they end iteration."""

  def __init__(self, source: Sequence[Any], *, dataset: str, split: str, folder: str,
               data_dir: str):
    self.source, self.dataset, self.split = source, dataset, split
    self.folder, self.data_dir = folder, data_dir

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i):
    try:
      return self.source[i]
    except IndexError:
      raise
    except Exception as e:  # A missing or corrupt shard: the reader's types vary.
      raise DataInvalid(
          f"data.name={self.dataset!r}: record {i} of split {self.split!r} in "
          f"{self.folder} cannot be read ({reason(e)}); remove {self.folder} and "
          f"prepare it again with: {prepare_command(self.dataset, self.data_dir)}") from e


def open_split(dataset: str, split: str, *, data_dir: str | None,
               skip_images: bool = False) -> Sequence[dict[str, Any]]:
  """The random-access source of one split of a prepared tensorflow-datasets dataset.

  `skip_images`: records keep their 'image' encoded (tfds' `SkipDecoding`), for
  reading only the labels and attributes without decoding every image.
  Raises DataMissing (nothing prepared under `data_dir`) or DataInvalid (a folder
  that is there but cannot be read), each one line naming the folder.
  """
  import tensorflow_datasets as tfds  # Here: runs on other datasets never import it.

  data_dir = data_dir or default_data_dir()
  name = TFDS_NAMES[dataset]
  # Where tfds looks (<data_dir>/<name>/<version>), known without reading anything there.
  folder = os.path.join(data_dir, name, str(tfds.builder_cls(name).VERSION))
  decoders = {"image": tfds.decode.SkipDecoding()} if skip_images else None
  with _tfds_logs_held() as drop_logs:
    try:
      source = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                                decoders=decoders)
    except Exception as e:  # tfds raises several types here; tell them apart below.
      drop_logs()  # The message below replaces tfds' warnings.
      try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
      except Exception as e_builder:  # E.g. a dataset_info.json that is not JSON.
        raise DataInvalid(
            f"data.name={dataset!r}: {folder} is not a readable prepared {name!r} "
            f"({_tfds_reason(e_builder)}); remove {folder} and prepare it again with: "
            f"{prepare_command(dataset, data_dir)}") from e
      if not prepared:
        raise DataMissing(
            f"data.name={dataset!r}: no prepared {name!r} under {builder.data_dir}; "
            f"prepare it with: {prepare_command(dataset, data_dir)}") from e
      if isinstance(e, NotImplementedError):  # tfds: "Random access ... not supported".
        raise DataInvalid(
            f"data.name={dataset!r}: {builder.data_dir} cannot be read without TensorFlow "
            f"({_tfds_reason(e)}); re-prepare it in the array_record format with: "
            f"{prepare_command(dataset, data_dir)}") from e
      raise DataInvalid(
          f"data.name={dataset!r}: {builder.data_dir} cannot be read ({_tfds_reason(e)}); "
          f"remove it and prepare it again with: {prepare_command(dataset, data_dir)}") from e
  return Records(source, dataset=dataset, split=split, folder=folder, data_dir=data_dir)


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
