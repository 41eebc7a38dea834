"""Datasets by name. Each builder returns a `Dataset` of in-memory splits.

`load(name=..., weighting_mode=..., exponent=..., **data_config)` is the one entry
point: it builds the splits, undersamples the training split for the
`undersampled` weighting, and attaches each example's loss weight.
"""

from __future__ import annotations

from typing import Callable

from polyjax.data import celeba, cifar, waterbirds
from polyjax.data.digits import digits
from polyjax.data.sources import DataMissing
from polyjax.data.splits import Dataset, Split, make_split, undersample, with_weights
from polyjax.data.synthetic import gaussians

# name -> builder(**data_config) -> Dataset (unit weights).
DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": digits,
    "gaussians": gaussians,
    "cifar10": cifar.cifar10,
    "celeba": celeba.celeba,
    "waterbirds": waterbirds.waterbirds,
}


def load(name: str, *, weighting_mode: str, exponent: float, **data_config) -> Dataset:
  """Builds dataset `name` and gives every example its importance weight."""
  if name not in DATASETS:
    raise ValueError(f"data.name must be one of {sorted(DATASETS)}, got {name!r}")
  ds = DATASETS[name](**data_config)
  if weighting_mode == "undersampled":
    ds = undersample(ds, exponent=exponent, seed=data_config.get("seed", 0))
  return with_weights(ds, mode=weighting_mode, exponent=exponent)


__all__ = ["DATASETS", "DataMissing", "Dataset", "Split", "load", "make_split"]
