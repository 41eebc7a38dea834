"""Datasets: counts, balanced test splits, data seeds, importance weights."""

import numpy as np
import pytest

from polyjax import data, weighting


def test_digits_counts_and_balanced_test():
  ds = data.load("digits", weighting_mode="reweighted", exponent=1.0, seed=0)
  test_counts = np.bincount(ds.test.y)
  assert test_counts.tolist() == [150, 150]
  n0 = np.sum(ds.train.y == 0) + np.sum(ds.val.y == 0)
  n1 = np.sum(ds.train.y == 1) + np.sum(ds.val.y == 1)
  assert n1 == int(n0 / 10)  # the minority keeps 1/imb_factor of the majority
  assert len(ds.val) == round(0.2 * (n0 + n1))
  assert ds.in_shape == (8, 8, 1) and ds.train.x.max() <= 1.0
  # No example is in two splits (digits images are distinct rows of the bundled set).
  rows = lambda s: {r.tobytes() for r in s.x}
  assert not rows(ds.train) & rows(ds.test) and not rows(ds.val) & rows(ds.test)


def test_data_seed_fixes_the_split_and_differs_across_data_seeds():
  a = data.load("digits", weighting_mode="none", exponent=1.0, seed=0)
  b = data.load("digits", weighting_mode="none", exponent=1.0, seed=0)
  c = data.load("digits", weighting_mode="none", exponent=1.0, seed=1)
  np.testing.assert_array_equal(a.train.x, b.train.x)
  assert not np.array_equal(a.train.x[:50], c.train.x[:50])


def test_gaussians_are_the_figure_one_data():
  ds = data.load("gaussians", weighting_mode="reweighted", exponent=1.0, seed=0)
  assert np.bincount(ds.train.y).tolist() == [20, 200]
  assert np.bincount(ds.test.y).tolist() == [1000, 1000]
  means = np.array([ds.train.x[ds.train.y == c].mean(0) for c in (0, 1)])
  np.testing.assert_allclose(means, [[0, 5], [5, 0]], atol=0.6)
  offsets = ds.test.x - np.where(ds.test.y[:, None] == 0, [0.0, 5.0], [5.0, 0.0])
  assert np.linalg.norm(offsets, axis=1).max() <= 5.0 + 1e-5  # truncated at radius 5
  # Minority weight over majority weight is 200/20.
  w = {int(y): float(w) for y, w in zip(ds.train.y, ds.train.weight)}
  assert w[0] / w[1] == pytest.approx(10.0)


def test_gaussians_any_dimension():
  ds = data.load("gaussians", weighting_mode="none", exponent=1.0, mean0=(0, 0, 3),
                 mean1=(3, 0, 0), n_minority=5, n_majority=50, n_test_per_class=10)
  assert ds.train.x.shape == (55, 3) and ds.test.x.shape == (20, 3)


@pytest.mark.parametrize("exponent", [0.0, 1.0, 1.5, 3.0])
def test_importance_weights_normalised_to_mean_one(exponent):
  counts = np.array([5000, 500, 37, 0])
  w = weighting.group_weights(counts, mode="reweighted", exponent=exponent)
  assert np.sum(counts * w) / counts.sum() == pytest.approx(1.0, rel=1e-6)
  present = counts > 0
  ratios = w[present] / w[present][0]
  np.testing.assert_allclose(ratios, (counts[0] / counts[present]) ** exponent, rtol=1e-5)
  assert w[3] == 0.0
  np.testing.assert_array_equal(weighting.group_weights(counts, mode="none"), np.ones(4))


def test_every_split_carries_its_training_group_weight():
  ds = data.load("digits", weighting_mode="reweighted", exponent=2.0, seed=0)
  w_G = weighting.group_weights(ds.train_group_counts, mode="reweighted", exponent=2.0)
  for split in ds.splits().values():
    np.testing.assert_array_equal(split.weight, w_G[split.group])
  assert np.mean(ds.train.weight) == pytest.approx(1.0, rel=1e-6)


def test_unknown_dataset_lists_valid_names():
  with pytest.raises(ValueError, match="data.name must be one of.*digits"):
    data.load("mnist", weighting_mode="none", exponent=1.0)


def test_bundled_digits_are_scikit_learns_load_digits(monkeypatch, tmp_path):
  from sklearn.datasets import load_digits

  from polyjax.data import digits
  bunch = load_digits()
  images, target = digits.bundled_digits()
  np.testing.assert_array_equal(images, bunch.images)
  np.testing.assert_array_equal(target, bunch.target)
  assert images.shape == (1797, 8, 8) and target.dtype.kind == "i"
  # A scikit-learn without the file where it used to be: asked through load_digits.
  class Elsewhere:
    submodule_search_locations = [str(tmp_path)]
  monkeypatch.setattr(digits.importlib.util, "find_spec", lambda name: Elsewhere)
  images, target = digits.bundled_digits()
  np.testing.assert_array_equal(images, bunch.images)
  np.testing.assert_array_equal(target, bunch.target)
