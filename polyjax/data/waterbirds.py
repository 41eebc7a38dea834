"""Waterbirds (Sagawa et al. 2020) from its standard folder (SPEC §3).

The folder (`waterbird_complete95_forest2water2`, under `data.data_dir` or
`data.data_dir` itself) holds `metadata.csv` with columns img_filename, y, split,
place (split 0/1/2 = train/val/test) and the images. Group g = 2*y + place. Images
are resized to (256/224 * resolution) square and centre-cropped to `resolution`,
as in the group DRO code, and kept as uint8 in memory (11,788 images at 224: about
1.7 GiB), or with `pipeline='stream'` read from the files per batch; ImageNet
normalisation runs on device.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pandas as pd
from PIL import Image

from polyjax.data import sources
from polyjax.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocess
from polyjax.data.splits import Dataset, make_split
from polyjax.data.stream import stream_split

FOLDER = "waterbird_complete95_forest2water2"
COLUMNS = ("img_filename", "y", "split", "place")
DOWNLOAD = "https://nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz"


def find_folder(data_dir: str | None) -> str:
  """The folder holding metadata.csv; raises DataMissing with how to get it."""
  data_dir = data_dir or sources.default_data_dir()
  for folder in (os.path.join(data_dir, FOLDER), data_dir):
    if os.path.isfile(os.path.join(folder, "metadata.csv")):
      return folder
  raise sources.DataMissing(
      f"data.name='waterbirds': no metadata.csv in {os.path.join(data_dir, FOLDER)} or "
      f"{data_dir}; get it with: {sources.prepare_command('waterbirds', data_dir)}")


def load_image(path: str, *, resolution: int) -> np.ndarray:
  """Resize to a (256/224 * resolution) square, centre-crop `resolution`, uint8 RGB."""
  scaled = int(resolution * 256 / 224)
  with Image.open(path) as img:
    img = img.convert("RGB").resize((scaled, scaled), Image.BILINEAR)
  top = int(round((scaled - resolution) / 2.0))
  return np.asarray(img, np.uint8)[top:top + resolution, top:top + resolution]


def read_metadata(folder: str) -> pd.DataFrame:
  path = os.path.join(folder, "metadata.csv")
  meta = pd.read_csv(path)
  missing = [c for c in COLUMNS if c not in meta.columns]
  if missing:
    raise ValueError(f"{path} lacks column(s) {', '.join(missing)}; needs {', '.join(COLUMNS)}")
  for col, valid in (("y", {0, 1}), ("place", {0, 1}), ("split", {0, 1, 2})):
    bad = set(meta[col].unique()) - valid
    if bad:
      raise ValueError(f"{path}: column {col!r} has values {sorted(bad)}, expected {sorted(valid)}")
  return meta


def waterbirds(*, data_dir: str | None = None, resolution: int = 224,
               pipeline: str = "memory", **_) -> Dataset:
  """Args mirror the `data` config section; the splits are the folder's own.

  pipeline 'stream' keeps the metadata only; images are read per batch.
  """
  folder = find_folder(data_dir)
  meta = read_metadata(folder)
  out = {}
  for code, name in enumerate(("train", "val", "test")):
    rows = meta[meta["split"] == code]
    if len(rows) == 0:
      raise ValueError(f"{os.path.join(folder, 'metadata.csv')} has no rows with split={code} ({name})")
    paths = [os.path.join(folder, f) for f in rows["img_filename"]]
    for p in paths:
      if not os.path.isfile(p):
        raise FileNotFoundError(f"waterbirds image listed in metadata.csv is missing: {p}")
    y = rows["y"].to_numpy(np.int32)
    group = 2 * y + rows["place"].to_numpy(np.int32)
    image = functools.partial(load_image, resolution=resolution)
    if pipeline == "stream":
      out[name] = stream_split(paths, np.arange(len(paths)), image, y=y, group=group)
    else:
      x = sources.read(paths, lambda p: {"x": image(p)})["x"]
      out[name] = make_split(x, y, group)
  return Dataset(**out, num_classes=2, num_groups=4,
                 preprocess=ImagePreprocess(IMAGENET_MEAN, IMAGENET_STD))
