"""Waterbirds (Sagawa et al. 2020) from its standard folder (docs/DATASETS.md).

The folder (`waterbird_complete95_forest2water2`, under `data.data_dir` or
`data.data_dir` itself) holds `metadata.csv` with columns img_filename, y, split,
place (split 0/1/2 = train/val/test) and the images. Group g = 2*y + place. Images
are resized to (256/224 * resolution) square and centre-cropped to `resolution`,
as in the group DRO code, and kept as uint8 in memory (11,788 images at 224: about
1.7 GiB), or with `pipeline='stream'` read from the files per batch; ImageNet
normalisation runs on device.

A bad folder is reported before training starts, as `DataInvalid` (one line naming
the file, and the line and column of metadata.csv where they apply):
metadata.csv that is empty, not a CSV, lacks a column or has a value out of range,
and an image that is listed but not on disk. An image that cannot be decoded is
found when it is decoded: at load time with the in-memory pipeline (every image),
per batch with 'stream', which checks up front only that each file opens as an
image (its header), not the whole file.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image

from polyjax.data import sources
from polyjax.data.errors import DataInvalid, DataMissing, reason
from polyjax.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocess
from polyjax.data.splits import Dataset, make_split
from polyjax.data.stream import stream_split

FOLDER = "waterbird_complete95_forest2water2"
COLUMNS = ("img_filename", "y", "split", "place")
# Valid values of metadata.csv's integer columns.
VALUES = {"y": (0, 1), "split": (0, 1, 2), "place": (0, 1)}
SPLITS = ("train", "val", "test")  # split 0, 1, 2.
DOWNLOAD = "https://nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz"


def find_folder(data_dir: str | None) -> str:
  """The folder holding metadata.csv; raises DataMissing with how to get it."""
  data_dir = data_dir or sources.default_data_dir()
  for folder in (os.path.join(data_dir, FOLDER), data_dir):
    if os.path.isfile(os.path.join(folder, "metadata.csv")):
      return folder
  raise DataMissing(
      f"data.name='waterbirds': no metadata.csv in {os.path.join(data_dir, FOLDER)} or "
      f"{data_dir}; get it with: {sources.prepare_command('waterbirds', data_dir)}")


def load_image(path: str, *, resolution: int) -> np.ndarray:
  """Resize to a (256/224 * resolution) square, centre-crop `resolution`, uint8 RGB.

  A file that does not decode (corrupt, truncated, not an image) raises DataInvalid
  naming it: with the stream pipeline this runs in a reader thread, mid-epoch.
  """
  scaled = int(resolution * 256 / 224)
  try:
    with Image.open(path) as img:
      img = img.convert("RGB").resize((scaled, scaled), Image.BILINEAR)
  except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
    raise DataInvalid(f"{path}: the image cannot be decoded ({reason(e)})") from e
  top = int(round((scaled - resolution) / 2.0))
  return np.asarray(img, np.uint8)[top:top + resolution, top:top + resolution]


def check_image_header(path: str) -> None:
  """Raises DataInvalid unless `path` opens as an image. Reads the header only (PIL
  decodes lazily), so a truncated file passes: `load_image` names it later."""
  try:
    with Image.open(path):
      pass  # Opening identifies the format from the header; nothing is decoded.
  except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
    raise DataInvalid(f"{path}: not a readable image ({reason(e)})") from e


def _first_bad(path: str, meta: pd.DataFrame, bad: pd.Series,
               what: Callable[[int], str]) -> DataInvalid:
  """One line naming the first bad row's line in metadata.csv, `what(its position)` is
  wrong there, and how many more lines are bad."""
  rows = np.flatnonzero(bad.to_numpy())
  more = f" (and {len(rows) - 1} more lines)" if len(rows) > 1 else ""
  # Rows keep their index from the file (blank lines included): line = index + 2.
  return DataInvalid(f"{path}, line {meta.index[rows[0]] + 2}: {what(rows[0])}{more}")


def read_metadata(folder: str) -> pd.DataFrame:
  """`folder`/metadata.csv with y, split and place as integers, every row checked.

  Raises DataInvalid (one line naming the file, and the line and column of the first
  bad value) for a file that is empty or not a CSV, lacks a column, has no rows, an
  empty img_filename, or a y, split or place outside its values.
  """
  path = os.path.join(folder, "metadata.csv")
  try:
    # As text, blank cells as "": each value is checked below, and named as written.
    meta = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
  except pd.errors.EmptyDataError as e:
    raise DataInvalid(f"{path} is empty; it needs a header line naming the columns "
                      f"{', '.join(COLUMNS)} and a line per image") from e
  except (pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
    raise DataInvalid(f"{path} is not a readable CSV file ({reason(e)})") from e
  missing = [c for c in COLUMNS if c not in meta.columns]
  if missing:
    raise DataInvalid(
        f"{path} lacks column(s) {', '.join(missing)}; needs {', '.join(COLUMNS)} "
        f"(its header: {', '.join(map(str, meta.columns))})")
  # Blank lines (kept above, so that the index counts every line) are no rows.
  meta = meta[~(meta == "").all(axis=1)]
  if len(meta) == 0:
    raise DataInvalid(f"{path} has a header but no rows; it needs a line per image")
  names = meta["img_filename"].str.strip()
  if (names == "").any():
    raise _first_bad(path, meta, names == "", lambda r: "column 'img_filename' is empty")
  meta = meta.assign(img_filename=names)
  for col, valid in VALUES.items():
    values = pd.to_numeric(meta[col], errors="coerce")
    bad = ~values.isin(valid)
    if bad.any():
      expected = ", ".join(map(str, valid[:-1])) + f" or {valid[-1]}"
      raise _first_bad(path, meta, bad, lambda r: (
          f"column {col!r} is {meta[col].iloc[r]!r}, expected {expected}"
          if meta[col].iloc[r] != "" else f"column {col!r} is empty, expected {expected}"))
    meta = meta.assign(**{col: values.astype(np.int64)})
  for code, name in enumerate(SPLITS):
    if not (meta["split"] == code).any():
      raise DataInvalid(f"{path} has no rows with split={code} ({name})")
  return meta


def check_images(folder: str, meta: pd.DataFrame, *, headers: bool,
                 num_threads: int = 16) -> None:
  """Raises DataInvalid naming the first image of metadata.csv that is not on disk
  (and how many more are missing), or with `headers`, the first that does not open
  as an image (`check_image_header`; in threads: opening a file waits on the disk)."""
  paths = [os.path.join(folder, f) for f in meta["img_filename"]]
  missing = pd.Series([not os.path.isfile(p) for p in paths], index=meta.index)
  if missing.any():
    first = int(np.flatnonzero(missing.to_numpy())[0])
    more = int(missing.sum()) - 1
    raise DataInvalid(
        f"{paths[first]}: no such image file, listed in {os.path.join(folder, 'metadata.csv')} "
        f"line {meta.index[first] + 2}"
        + (f" ({more} more of its {len(paths)} images are missing)" if more else ""))
  if headers:
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      list(pool.map(check_image_header, paths))  # Raises the first file's error, in order.


def waterbirds(*, data_dir: str | None = None, resolution: int = 224,
               pipeline: str = "memory", **_) -> Dataset:
  """Args mirror the `data` config section; the splits are the folder's own.

  pipeline 'stream' keeps the metadata only; images are read per batch.
  """
  folder = find_folder(data_dir)
  meta = read_metadata(folder)
  # 'memory' decodes every image below, which finds a corrupt one; 'stream' decodes
  # them only per batch, after the run directory is written: check each opens.
  check_images(folder, meta, headers=pipeline == "stream")
  out = {}
  for code, name in enumerate(SPLITS):
    rows = meta[meta["split"] == code]
    paths = [os.path.join(folder, f) for f in rows["img_filename"]]
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
