"""The paper's method on imbalanced binary CIFAR-10, poly-tailed loss with importance
weights: the cell `configs/table.py:cifar10,poly,iw` (see there) under the name of
README's first command.

    python -m polyjax.main --config=configs/cifar_poly.py --config.data.data_dir=DIR
"""

import pathlib

from polyjax.config import load_config_module

CELL = "cifar10,poly,iw"
_TABLE = load_config_module(pathlib.Path(__file__).with_name("table.py"), "_polyjax_table")


def get_config():
  return _TABLE.get_config(CELL)


def sweep():
  """Stage 1 of the tuning protocol (configs/table.py)."""
  return _TABLE.sweep(CELL)
