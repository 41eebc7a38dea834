"""CIFAR-shaped random images, for the sweep benchmark only (not a dataset of polyjax).

    python benchmarks/cifar_shaped.py main  --config=configs/digits_poly.py \\
        --config.data.name=cifar_shaped --config.model.name=convnet ...
    python benchmarks/cifar_shaped.py sweep --config=... --workdir=... --grid=seed=0,1

Registers `cifar_shaped` in polyjax.data.DATASETS, then runs polyjax.main or
polyjax.sweep with the remaining arguments. The shapes follow the imbalanced binary
CIFAR-10 of docs/DATASETS.md (4000 + 400 training images of 32x32x3, about 4400 as after the
80/20 split of 5000 + 500); the pixels are Gaussian noise shifted by a class mean,
so the models have something to learn, but only the time and memory are measured.
At exit it prints the first device's peak allocation where the backend reports one
(GPU, TPU): `cifar_shaped: device_peak_bytes N`.
"""

from __future__ import annotations

import atexit
import os
import sys

import numpy as np

from polyjax import data
from polyjax.data.splits import Dataset, make_split

# CIFAR_SHAPED_SCALE (benchmark option) shrinks the training set on a slow machine.
_SCALE = float(os.environ.get("CIFAR_SHAPED_SCALE", "1"))
N_TRAIN = (round(4000 * _SCALE), round(400 * _SCALE))
N_VAL = (100, 100)
N_TEST = (200, 200)


def cifar_shaped(*, seed: int = 0, **_) -> Dataset:
  rng = np.random.default_rng([seed, 32323])

  def split(counts):
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    x = rng.standard_normal((len(y), 32, 32, 3)).astype(np.float32)
    x += np.where(y == 1, 0.1, -0.1)[:, None, None, None].astype(np.float32)
    return make_split(x, y)

  return Dataset(train=split(N_TRAIN), val=split(N_VAL), test=split(N_TEST),
                 num_classes=2, num_groups=2)


def _print_device_peak_memory() -> None:
  import jax
  stats = jax.local_devices()[0].memory_stats() or {}  # None on CPU.
  if "peak_bytes_in_use" in stats:
    print(f"cifar_shaped: device_peak_bytes {stats['peak_bytes_in_use']}", flush=True)


def _run() -> None:
  data.DATASETS["cifar_shaped"] = cifar_shaped
  atexit.register(_print_device_peak_memory)
  command = sys.argv.pop(1)
  if command == "main":
    from polyjax import main
    main.run()
  elif command == "sweep":
    from polyjax import sweep
    sweep.run()
  else:
    raise SystemExit(f"usage: {sys.argv[0]} main|sweep <flags>")


if __name__ == "__main__":
  _run()
