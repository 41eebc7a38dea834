"""Subsampled CelebA through tfds.data_source + grain, on controlled mock data."""

import numpy as np
import pytest

import mock_tfds
from polyjax import data


def load(**kw):
  kw.setdefault("weighting_mode", "reweighted")
  kw.setdefault("exponent", 1.0)
  kw.setdefault("resolution", 178)  # no resize: the marked pixel survives
  kw.setdefault("test_per_group", 4)
  with mock_tfds.mock():
    return data.load("celeba", data_dir="/nonexistent", **kw)


def source_ids(split):
  """(split id, index) of every example, from the pixel at the crop centre."""
  h = split.x.shape[1] // 2
  w = split.x.shape[2] // 2
  # The marked pixel is one pixel of the 178x178 crop; find it by its distinct value.
  px = split.x.astype(np.int64)
  marked = np.any(px != 100, axis=-1)
  ids = []
  for i in range(len(split)):
    r, c = np.argwhere(marked[i])[0] if marked[i].any() else (h, w)
    ids.append((px[i, r, c, 0], px[i, r, c, 1] + 251 * px[i, r, c, 2]))
  return ids


def expected_groups(split, idx):
  return np.array([2 * b + m for b, m in (mock_tfds.celeba_attrs(split, i) for i in idx)])


def test_group_counts_train_frac_balanced_test_and_full_val():
  ds = load(train_frac=0.5, test_per_group=9, resolution=178)
  n_train = mock_tfds.CELEBA_SIZES["train"]
  assert len(ds.train) == round(0.5 * n_train)
  # Every kept example keeps its own label and group.
  ids = source_ids(ds.train)
  assert all(s == 0 for s, _ in ids) and len({i for _, i in ids}) == len(ds.train)
  np.testing.assert_array_equal(ds.train.group, expected_groups("train", [i for _, i in ids]))
  np.testing.assert_array_equal(ds.train.y, ds.train.group // 2)
  # Validation: the whole official split, exact counts.
  all_val = expected_groups("validation", range(mock_tfds.CELEBA_SIZES["validation"]))
  assert np.bincount(ds.val.group, minlength=4).tolist() == np.bincount(all_val, minlength=4).tolist()
  # Test: exactly test_per_group per group.
  assert np.bincount(ds.test.group, minlength=4).tolist() == [9, 9, 9, 9]
  np.testing.assert_array_equal(ds.test.group,
                                expected_groups("test", [i for _, i in source_ids(ds.test)]))
  np.testing.assert_allclose(ds.train.weight.mean(), 1.0, rtol=1e-6)
  n_G = np.bincount(ds.train.group, minlength=4)
  np.testing.assert_allclose(ds.train.weight * n_G[ds.train.group],
                             np.full(len(ds.train), len(ds.train) / 4), rtol=1e-5)


def test_centre_crop_and_resize():
  ds = load(train_frac=0.1, test_per_group=2, resolution=64)
  assert ds.in_shape == (64, 64, 3) and ds.train.x.dtype == np.uint8
  # Rows 0-19 of the 218x178 image (value 255) lie outside the 178x178 centre crop.
  assert ds.train.x.max() < 255


def test_same_data_seed_same_subsample():
  a, b, c = load(train_frac=0.25, seed=0), load(train_frac=0.25, seed=0), load(train_frac=0.25, seed=1)
  assert source_ids(a.train) == source_ids(b.train)
  assert source_ids(a.train) != source_ids(c.train)
  assert source_ids(a.test) == source_ids(c.test)  # test subsample has its own fixed seed


def test_bad_attribute_is_named():
  with pytest.raises(ValueError, match="data.target='Blonde'"):
    load(target="Blonde", test_per_group=2)
