"""The paper's Figure 5 configs: each names its method and passes validation."""

import importlib.util
import pathlib

import numpy as np
import pytest

from polyjax import config as config_lib, losses

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"

# file stem -> (loss.name, weighting.mode, data.name)
EXPECTED = {
    "fig5_cifar_poly_iw": ("poly", "reweighted", "cifar10"),
    "fig5_cifar_ce_us": ("ce", "undersampled", "cifar10"),
    "fig5_cifar_ldam": ("ldam", "none", "cifar10"),
    "fig5_cifar_cdt": ("cdt", "none", "cifar10"),
    "fig5_cifar_la": ("la", "none", "cifar10"),
    "fig5_cifar_vs": ("vs", "none", "cifar10"),
    "fig5_celeba_poly_iw": ("poly", "reweighted", "celeba"),
    "fig5_celeba_ce_us": ("ce", "undersampled", "celeba"),
    "fig5_celeba_vs": ("vs_group", "none", "celeba"),
    "fig5_celeba_poly_dro": ("poly", "dro", "celeba"),
    "fig5_celeba_ce_dro": ("ce", "dro", "celeba"),
    "fig5_celeba_vs_dro": ("vs_group", "dro", "celeba"),
}


def load(stem):
  spec = importlib.util.spec_from_file_location(stem, CONFIGS / f"{stem}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_every_fig5_config_is_listed():
  assert sorted(p.stem for p in CONFIGS.glob("fig5_*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_fig5_config_names_its_method_and_validates(stem):
  c = load(stem)
  loss, mode, data_name = EXPECTED[stem]
  assert (c.loss.name, c.weighting.mode, c.data.name) == (loss, mode, data_name)
  if stem == "fig5_cifar_poly_iw":
    assert (c.loss.alpha, c.weighting.exponent) == (2.0, 3.0)
  config_lib.validate(c, device_count=1)  # Names only: no data is read.
  kw = c.loss.to_dict()
  fn = losses.get_loss(kw.pop("name"), class_counts=np.array([4000, 400]),
                       group_counts=np.array([1446, 1308, 468, 33]), **kw)
  out = fn(np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1]), np.array([0, 1, 2, 3]))
  assert out.shape == (4,) and np.all(np.isfinite(out))
