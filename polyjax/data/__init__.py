"""Datasets by name. Each builder returns a `Dataset` of in-memory (or streamed) splits.

`load(name=..., weighting_mode=..., exponent=..., **data_config)` is the one entry
point: it builds the splits, undersamples the training split for the
`undersampled` weighting (`extras=True`: keeping the examples it leaves out as
the split `extras`), and attaches each example's loss weight.

A dataset that is not on disk raises `DataMissing`, one that is there but unusable
(a corrupt file, a bad metadata value) its subclass `DataInvalid`: one line naming
the file, which `polyjax.main` prints before exiting with status 2.
"""

from __future__ import annotations

import importlib
from typing import Callable

from polyjax.data.errors import DataInvalid, DataMissing
from polyjax.data.splits import Dataset, Split, make_split, undersample, with_weights
from polyjax.data.stream import StreamSplit


def _imported_when_built(module: str, name: str) -> Callable[..., Dataset]:
  """`module.name`, imported at the first call: a run imports only its own dataset's
  module and libraries (pandas and PIL for Waterbirds, grain and tfds for the prepared
  image datasets), about a second of start-up for the others. Nothing here imports a
  dataset module: the errors come from the leaf `errors`."""
  def build(**data_config) -> Dataset:
    return getattr(importlib.import_module(module), name)(**data_config)
  build.__name__ = build.__qualname__ = name
  return build


# name -> builder(**data_config) -> Dataset (unit weights).
DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": _imported_when_built("polyjax.data.digits", "digits"),
    "gaussians": _imported_when_built("polyjax.data.synthetic", "gaussians"),
    "cifar10": _imported_when_built("polyjax.data.cifar", "cifar10"),
    "cifar100": _imported_when_built("polyjax.data.cifar", "cifar100"),
    "celeba": _imported_when_built("polyjax.data.celeba", "celeba"),
    "waterbirds": _imported_when_built("polyjax.data.waterbirds", "waterbirds"),
}


# data.pipeline: 'memory' decodes every split once into host memory; 'stream' keeps
# the small per-example arrays and reads images per batch from the dataset's
# random-access source (polyjax.data.stream), which only these datasets have.
PIPELINES = ("memory", "stream")
STREAMABLE = ("cifar10", "cifar100", "celeba", "waterbirds")


def load(name: str, *, weighting_mode: str, exponent: float, cb_beta: float | None = None,
         extras: bool = False, **data_config) -> Dataset:
  """Builds dataset `name` and gives every example its importance weight
  (`cb_beta`: the class-balanced weights of `weighting.effective_number_weights`;
  `extras`: `weighting.evaluate_extras`, for the `undersampled` weighting)."""
  if name not in DATASETS:
    raise ValueError(f"data.name must be one of {sorted(DATASETS)}, got {name!r}")
  pipeline = data_config.get("pipeline", "memory")
  if pipeline not in PIPELINES:
    raise ValueError(f"data.pipeline must be one of {PIPELINES}, got {pipeline!r}")
  if pipeline == "stream" and name not in STREAMABLE:
    raise ValueError(f"data.pipeline='stream' needs a dataset read from a random-access "
                     f"source ({', '.join(STREAMABLE)}); data.name={name!r} is built in "
                     f"memory: use data.pipeline='memory'")
  ds = DATASETS[name](**data_config)
  if weighting_mode == "undersampled":
    ds = undersample(ds, exponent=exponent, seed=data_config.get("seed", 0), keep_extras=extras)
  elif extras:
    raise ValueError(f"extras=True needs weighting_mode='undersampled', got {weighting_mode!r}")
  return with_weights(ds, mode=weighting_mode, exponent=exponent, cb_beta=cb_beta)


def load_config(config) -> Dataset:
  """`load` of a run config: its `data` section (less `order_seed`, which orders
  epochs, not examples) and the weighting fields that shape the data and its weights
  (mode, exponent, class-balanced beta, undersampling's extras)."""
  data_cfg = config.data.to_dict()
  name = data_cfg.pop("name")
  data_cfg.pop("order_seed")
  w = config.weighting
  return load(name, weighting_mode=w.mode, exponent=w.exponent, cb_beta=w.cb_beta,
              extras=w.evaluate_extras, **data_cfg)


__all__ = ["DATASETS", "PIPELINES", "STREAMABLE", "DataInvalid", "DataMissing", "Dataset",
           "Split", "StreamSplit", "load", "load_config", "make_split"]
