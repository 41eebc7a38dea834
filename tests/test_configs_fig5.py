"""The paper's Figure 5 (configs/fig5.py): each method names its loss and weighting,
passes validation and builds a loss."""

import pathlib

import numpy as np
import pytest

from polyjax import config as config_lib, losses

FIG5 = config_lib.load_config_module(
    pathlib.Path(__file__).resolve().parents[1] / "configs" / "fig5.py", "fig5")

# argument -> (loss.name, weighting.mode, data.name)
EXPECTED = {
    "cifar10,poly_iw": ("poly", "reweighted", "cifar10"),
    "cifar10,ce_us": ("ce", "undersampled", "cifar10"),
    "cifar10,ldam": ("ldam", "none", "cifar10"),
    "cifar10,cdt": ("cdt", "none", "cifar10"),
    "cifar10,la": ("la", "none", "cifar10"),
    "cifar10,vs": ("vs", "none", "cifar10"),
    "celeba,poly_iw": ("poly", "reweighted", "celeba"),
    "celeba,ce_us": ("ce", "undersampled", "celeba"),
    "celeba,vs": ("vs_group", "none", "celeba"),
    "celeba,poly_dro": ("poly", "dro", "celeba"),
    "celeba,ce_dro": ("ce", "dro", "celeba"),
    "celeba,vs_dro": ("vs_group", "dro", "celeba"),
}


def test_every_fig5_method_is_listed():
  assert sorted(f"{d},{m}" for d, m in FIG5.METHODS) == sorted(EXPECTED)


@pytest.mark.parametrize("arg", sorted(EXPECTED))
def test_fig5_method_names_its_loss_and_validates(arg):
  c = FIG5.get_config(arg)
  assert (c.loss.name, c.weighting.mode, c.data.name) == EXPECTED[arg]
  if arg == "cifar10,poly_iw":
    assert (c.loss.alpha, c.weighting.exponent) == (2.0, 3.0)
  config_lib.validate(c, device_count=1)  # Names only: no data is read.
  kw = c.loss.to_dict()
  fn = losses.get_loss(kw.pop("name"), class_counts=np.array([4000, 400]),
                       group_counts=np.array([1446, 1308, 468, 33]), **kw)
  out = fn(np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1]), np.array([0, 1, 2, 3]))
  assert out.shape == (4,) and np.all(np.isfinite(out))
