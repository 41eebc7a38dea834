"""Subsampled CelebA (docs/DATASETS.md), from tensorflow-datasets' `celeb_a`, read with grain.

Label y is the `target` attribute (default Blond_Hair), the spurious attribute the
`confounder` (default Male), group g = 2*y + confounder. Official splits: the
training split is subsampled to `train_frac` of its images (data seed), the
validation split is kept whole and the test split is subsampled to
`test_per_group` images per group (seed 1234, as in the paper) so it is balanced.
Images are centre-cropped to 178x178, resized to `resolution` and kept as uint8
in memory; ImageNet normalisation runs on device.

Memory: a 224x224 image is 147 KiB, so at the paper's settings train (3,255),
val (19,867) and test (720) take about 3.4 GiB of host memory as uint8. Selecting
the subsample decodes every record of a split once (tfds decodes the image with
the attributes), a one-off cost per run. With `pipeline='stream'` the attributes
are read with the images left encoded, and images are decoded per batch (no
3.4 GiB up front).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from polyjax.data import sources
from polyjax.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocess
from polyjax.data.splits import Dataset, make_split, subsample_classes
from polyjax.data.stream import stream_split

CROP = 178  # Centre crop of the 218x178 aligned faces, as in the paper.
TEST_SEED = 1234


def center_crop_resize(image_HxWxC: np.ndarray, *, crop: int, resolution: int) -> np.ndarray:
  """torchvision's CenterCrop(crop) then Resize(resolution) (bilinear), uint8."""
  h, w = image_HxWxC.shape[:2]
  top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
  img = Image.fromarray(image_HxWxC[top:top + crop, left:left + crop])
  if resolution != crop:
    img = img.resize((resolution, resolution), Image.BILINEAR)
  return np.asarray(img, np.uint8)


def _labels(target: str, confounder: str):
  def fn(ex):
    attrs = ex["attributes"]
    return {"y": np.asarray(attrs[target], np.int32),
            "c": np.asarray(attrs[confounder], np.int32)}
  return fn


def _image(resolution: int):
  def fn(ex):
    return center_crop_resize(np.asarray(ex["image"]), crop=CROP, resolution=resolution)
  return fn


def celeba(*, seed: int = 0, data_dir: str | None = None, target: str = "Blond_Hair",
           confounder: str = "Male", train_frac: float = 1.0, test_per_group: int = 180,
           resolution: int = 224, pipeline: str = "memory", **_) -> Dataset:
  """Args mirror the `data` config section; `seed` fixes the training subsample.

  pipeline 'stream' keeps only the attributes; images are read per batch.
  """
  if not 0 < train_frac <= 1:
    raise ValueError(f"data.train_frac must be in (0, 1], got {train_frac!r}")
  out = {}
  for name, tfds_split in (("train", "train"), ("val", "validation"), ("test", "test")):
    src = sources.open_split("celeba", tfds_split, data_dir=data_dir)
    # 'stream' selects the examples from the attributes alone, images left encoded.
    labels_src = (sources.open_split("celeba", tfds_split, data_dir=data_dir, skip_images=True)
                  if pipeline == "stream" else src)
    known = set(labels_src[0]["attributes"])
    for field, attr in (("target", target), ("confounder", confounder)):
      if attr not in known:
        raise ValueError(f"data.{field}={attr!r} is not a CelebA attribute; "
                         f"valid: {', '.join(sorted(known))}")
    lab = sources.read(labels_src, _labels(target, confounder))
    y, g = lab["y"], 2 * lab["y"] + lab["c"]
    if name == "train":
      n_keep = int(round(train_frac * len(y)))
      keep = np.sort(np.random.default_rng(seed).choice(len(y), size=n_keep, replace=False))
    elif name == "test":
      keep = subsample_classes(g, {k: test_per_group for k in range(4)},
                               rng=np.random.default_rng(TEST_SEED))
    else:
      keep = np.arange(len(y))
    image = _image(resolution)
    if pipeline == "stream":
      out[name] = stream_split(src, keep, image, y=y[keep], group=g[keep])
    else:
      x = sources.read(src, lambda ex: {"x": image(ex)}, indices=keep)["x"]
      out[name] = make_split(x, y[keep], g[keep])
  return Dataset(**out, num_classes=2, num_groups=4,
                 preprocess=ImagePreprocess(IMAGENET_MEAN, IMAGENET_STD))
