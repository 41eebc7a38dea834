"""Waterbirds from a small folder written here in the standard format."""

import os

import numpy as np
import pytest
from PIL import Image

from polyjax import data
from polyjax.data import waterbirds

# (split, y, place) -> number of images; a skewed train set as in the real data.
LAYOUT = {(0, 0, 0): 9, (0, 0, 1): 2, (0, 1, 0): 1, (0, 1, 1): 4,
          (1, 0, 0): 2, (1, 0, 1): 2, (1, 1, 0): 2, (1, 1, 1): 2,
          (2, 0, 0): 3, (2, 0, 1): 3, (2, 1, 0): 3, (2, 1, 1): 3}


def write_folder(root):
  folder = os.path.join(root, waterbirds.FOLDER)
  rows = ["img_id,img_filename,y,split,place,place_filename"]
  i = 0
  for (split, y, place), n in LAYOUT.items():
    for _ in range(n):
      rel = f"{i % 3:03d}.Bird_{y}/img_{i}.jpg"
      os.makedirs(os.path.join(folder, os.path.dirname(rel)), exist_ok=True)
      # Non-square like the real images; colour encodes the group for the check below.
      img = np.full((60, 80, 3), 40 + 50 * (2 * y + place), np.uint8)
      Image.fromarray(img).save(os.path.join(folder, rel), quality=95)
      rows.append(f"{i + 1},{rel},{y},{split},{place},x/{i}.jpg")
      i += 1
  with open(os.path.join(folder, "metadata.csv"), "w") as f:
    f.write("\n".join(rows) + "\n")
  return folder


def counts(split, code, key):
  return [sum(n for (s, y, p), n in LAYOUT.items() if s == code and key(y, p) == k)
          for k in range(4 if key(1, 1) == 3 else 2)]


def test_exact_counts_groups_and_weights(tmp_path):
  write_folder(tmp_path)
  ds = data.load("waterbirds", weighting_mode="reweighted", exponent=1.0,
                 data_dir=str(tmp_path), resolution=32)
  for code, split in enumerate((ds.train, ds.val, ds.test)):
    assert np.bincount(split.group, minlength=4).tolist() == counts(split, code, lambda y, p: 2 * y + p)
    assert np.bincount(split.y, minlength=2).tolist() == counts(split, code, lambda y, p: y)
    # Pixels were written per group: images stay attached to their rows.
    np.testing.assert_allclose(split.x.mean(axis=(1, 2, 3)), 40 + 50 * split.group, atol=3)
  assert ds.in_shape == (32, 32, 3) and ds.train.x.dtype == np.uint8
  assert np.bincount(ds.test.group).tolist() == [3, 3, 3, 3]
  np.testing.assert_allclose(ds.train.weight.mean(), 1.0, rtol=1e-6)
  n_G = np.array([9, 2, 1, 4])
  np.testing.assert_allclose(ds.train.weight, (16 / 4) / n_G[ds.train.group], rtol=1e-6)


def test_resize_then_centre_crop(tmp_path):
  path = tmp_path / "a.png"
  img = np.zeros((224, 224, 3), np.uint8)
  img[:, :112] = 255  # left half white
  Image.fromarray(img).save(path)
  out = waterbirds.load_image(str(path), resolution=224)
  assert out.shape == (224, 224, 3)
  # 224 -> 256 square, crop the central 224: the white half now spans 128 - 16 = 112 columns.
  white = np.flatnonzero(out[100, :, 0] > 127)
  assert white.min() == 0 and white.max() in (111, 112)


def test_missing_folder_and_bad_metadata(tmp_path):
  with pytest.raises(data.DataMissing, match="python -m polyjax.data prepare waterbirds"):
    data.load("waterbirds", weighting_mode="none", exponent=1.0, data_dir=str(tmp_path))
  folder = write_folder(tmp_path)
  with open(os.path.join(folder, "metadata.csv"), "w") as f:
    f.write("img_filename,y,split\na.jpg,0,0\n")
  with pytest.raises(data.DataInvalid, match="lacks column"):
    data.load("waterbirds", weighting_mode="none", exponent=1.0, data_dir=str(tmp_path))


def test_verify_prints_counts_and_weights(tmp_path, capsys):
  from polyjax.config import base_config
  from polyjax.data.__main__ import verify
  write_folder(tmp_path)
  c = base_config()
  c.data.name, c.data.data_dir, c.data.resolution = "waterbirds", str(tmp_path), 32
  assert verify(c) == 0
  out = capsys.readouterr().out
  assert "train   n=    16  classes=[11, 5]  groups=[9, 2, 1, 4]" in out
  assert "test    n=    12  classes=[6, 6]  groups=[3, 3, 3, 3]" in out
  assert "0: 0.4444, 1: 2.0000, 2: 4.0000, 3: 1.0000" in out
