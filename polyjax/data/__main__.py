"""Dataset command line: prepare a dataset once, or verify what a config loads.

    python -m polyjax.data prepare cifar10 --data_dir=DIR     # needs TensorFlow: the prepare extra
    python -m polyjax.data prepare cifar100 --data_dir=DIR    # needs TensorFlow
    python -m polyjax.data prepare celeba --data_dir=DIR      # needs TensorFlow
    python -m polyjax.data prepare waterbirds --data_dir=DIR  # checks the folder, or says how to get it
    python -m polyjax.data verify --config=configs/cifar_poly.py [--config.data.data_dir=DIR]

`prepare` writes tensorflow-datasets' ArrayRecord files (with TensorFlow: `pip
install -e ".[prepare]"`), which polyjax reads without TensorFlow. `verify` loads
the config's dataset and prints split sizes, class and group counts and the
importance weights, to compare with the paper (e.g. CelebA train groups
[1446, 1308, 468, 33]).

Exit status: 0 done; 2 bad input (a missing or unusable dataset, a missing
library), one line `polyjax.data: error: ...`; 1 Waterbirds not downloaded.
"""

from __future__ import annotations

import importlib
import os
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from polyjax import cli, data
from polyjax.data import sources, waterbirds
from polyjax.data.errors import DataMissing, reason
from polyjax.data.stream import StreamSplit



def _define_flags():
  """Defined only when run as a program, so importing this module defines no flags."""
  config = config_flags.DEFINE_config_file("config", None, "Experiment config (verify).",
                                           lock_config=True)
  data_dir = flags.DEFINE_string("data_dir", None,
                                 "Where datasets are prepared (prepare); default: "
                                 "$TFDS_DATA_DIR or ~/tensorflow_datasets.")
  return config, data_dir


# Imported by tensorflow-datasets when it prepares a dataset, and not installed with it:
# module -> how to install it. TensorFlow comes with polyjax's `prepare` extra;
# tfds 4.9 imports importlib_resources there but requires it only on Python < 3.9
# (the extra adds it).
PREPARE_NEEDS = {
    "tensorflow": 'the prepare extra: pip install -e ".[prepare]" in a polyjax checkout, '
                  'or pip install "polyjax[prepare]"',
    "importlib_resources": 'the prepare extra: pip install -e ".[prepare]"',
}


class MissingLibrary(ImportError):
  """A library that `prepare` needs is not installed; the message says how to install it."""


def check_prepare_needs(name: str) -> None:
  """Raises MissingLibrary (one line, what to install) unless tfds can prepare `name`
  here: without TensorFlow tfds fails only after it starts, with a traceback."""
  for module, install in PREPARE_NEEDS.items():
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise MissingLibrary(
          f"prepare {name} needs {module}, which tensorflow-datasets uses to write the "
          f"dataset ({reason(e)}); install {install}") from e


def prepare(name: str, data_dir: str) -> int:
  if name == "waterbirds":
    try:
      folder = waterbirds.find_folder(data_dir)
    except DataMissing:
      print(f"Waterbirds is not distributed through tensorflow-datasets. Download "
            f"{waterbirds.DOWNLOAD} and extract it into {data_dir} (giving "
            f"{os.path.join(data_dir, waterbirds.FOLDER)}/metadata.csv), then run "
            f"this command again to check it.", file=sys.stderr)
      return 1
    meta = waterbirds.read_metadata(folder)
    waterbirds.check_images(folder, meta, headers=True)
    print(f"waterbirds: {folder} is ready ({len(meta)} images)")
    return 0
  if name not in sources.TFDS_NAMES:
    print(f"polyjax.data: error: unknown dataset {name!r}; prepare knows: cifar10, "
          f"cifar100, celeba, waterbirds", file=sys.stderr)
    return 2
  check_prepare_needs(name)
  import tensorflow_datasets as tfds
  builder = tfds.builder(sources.TFDS_NAMES[name], data_dir=data_dir)
  builder.download_and_prepare(file_format="array_record")
  print(f"{name}: prepared under {builder.data_dir}")
  return 0


def describe(ds: data.Dataset) -> str:
  lines = []
  for split, s in ds.splits().items():
    classes = np.bincount(s.y, minlength=ds.num_classes).tolist()
    groups = np.bincount(s.group, minlength=ds.num_groups).tolist()
    lines.append(f"{split:6s}  n={len(s):6d}  classes={classes}  groups={groups}")
  weights = {int(g): float(s_w) for g, s_w in zip(ds.train.group, ds.train.weight)}
  lines.append("loss weight per group, as the run trains with it: " +
               ", ".join(f"{g}: {weights[g]:.4f}" for g in sorted(weights)))
  pipeline = "stream" if isinstance(ds.train, StreamSplit) else "memory"
  lines.append(f"input shape {ds.in_shape}  dtype {np.dtype(ds.train.x_dtype)}  "
               f"pipeline {pipeline}")
  return "\n".join(lines)


def verify(config) -> int:
  name = config.data.name
  ds = data.load_config(config)
  print(f"data.name={name!r}  weighting.mode={config.weighting.mode!r}  "
        f"exponent={config.weighting.exponent}")
  print(describe(ds))
  return 0


def main(argv, config_flag, data_dir_flag) -> int:
  if len(argv) < 2 or argv[1] not in ("prepare", "verify"):
    raise app.UsageError("usage: python -m polyjax.data prepare NAME --data_dir=DIR | "
                         "verify --config=FILE")
  try:
    if argv[1] == "prepare":
      if len(argv) != 3:
        raise app.UsageError("usage: python -m polyjax.data prepare NAME --data_dir=DIR")
      return prepare(argv[2], data_dir_flag.value or sources.default_data_dir())
    if config_flag.value is None:
      raise app.UsageError("verify needs --config=FILE")
    return verify(config_flag.value)
  except (DataMissing, MissingLibrary, ValueError) as e:
    print(f"polyjax.data: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  _flags = _define_flags()
  app.run(lambda argv: sys.exit(main(argv, *_flags)),
          flags_parser=lambda argv: cli.parse_flags(argv, "polyjax.data"))
