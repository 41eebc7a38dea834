"""Imbalanced CIFAR-10 and CIFAR-100 (docs/DATASETS.md), from tensorflow-datasets'
`cifar10` and `cifar100` (fine labels), read with grain.

Each class of the task is a set of the dataset's labels (default cat (3) vs dog (5);
`()`: every label, its own class), relabelled 0..K-1. The official training set is
subsampled per class by an imbalance profile ("step", "exp" or "none", ratio
`imb_factor`), then split 80/20 into train/val, all with the data seed. The profile
runs over (`imb_over`):

- "subset": the K classes of the task. "step": the first half of the classes keep
  `n_max` images, the rest `n_max / imb_factor`; "exp": class k keeps
  `n_max * imb_factor ** (-k / (K - 1))`; "none": every class keeps `n_max`, the
  smallest available class size (5000 for CIFAR-10). Cat vs dog, exp 100: 5000 vs 50.
- "all": every label of the dataset, by its original index, as the paper's code
  (and LDAM-DRW's, Cao et al. 2019) computes it: label l keeps
  `int(m * (1 / imb_factor) ** (l / (L - 1)))` (exp) or `int(m)` for the first half
  of the L labels and `int(m * (1 / imb_factor))` for the rest (step), m = training
  images / L (5000 for CIFAR-10, 500 for CIFAR-100); a class keeps its labels' sizes.
  Cat vs dog, exp 100: 1077 vs 387. With every label as its own class this is
  CIFAR-10-LT / CIFAR-100-LT.

The test split is every official test image of the chosen labels (balanced).
Images stay uint8 in memory (or, with `pipeline='stream'`, in the source, read
per batch); normalisation and augmentation run on device.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from polyjax.data import sources
from polyjax.data.preprocess import CIFAR_MEAN, CIFAR_STD, ImagePreprocess
from polyjax.data.splits import Dataset, make_split, subsample_classes, train_val_split
from polyjax.data.stream import stream_split

IMB_TYPES = ("step", "exp", "none")
IMB_OVER = ("subset", "all")
# polyjax dataset name -> number of labels (CIFAR-100: its 100 fine labels).
NUM_LABELS = {"cifar10": 10, "cifar100": 100}


def class_sets(class_subset: Sequence, num_labels: int = 10) -> list[tuple[int, ...]]:
  """((3,), (5,)) or (3, 5) -> [(3,), (5,)]: the original labels making up each class;
  () -> every label its own class."""
  if len(class_subset) == 0:
    return [(v,) for v in range(num_labels)]
  sets = [tuple(int(v) for v in np.atleast_1d(s)) for s in class_subset]
  flat = [v for s in sets for v in s]
  if len(sets) < 2 or len(set(flat)) != len(flat) or not all(0 <= v < num_labels for v in flat):
    raise ValueError(f"data.class_subset must list at least two disjoint sets of labels "
                     f"in 0..{num_labels - 1}, or be () for every label, got {class_subset!r}")
  return sets


def imbalanced_counts(available: Sequence[int], *, imb_type: str,
                      imb_factor: float) -> list[int]:
  """Examples kept per class of the task ("subset"); class 0 is the majority."""
  n_max, k = min(available), len(available)
  if imb_type == "none":
    return [n_max] * k
  if imb_type == "step":
    return [n_max if c < k // 2 else int(n_max / imb_factor) for c in range(k)]
  if imb_type == "exp":
    return [int(n_max * imb_factor ** (-c / (k - 1))) for c in range(k)]
  raise ValueError(f"data.imb_type must be one of {IMB_TYPES}, got {imb_type!r}")


def label_counts(num_train: int, num_labels: int, *, imb_type: str,
                 imb_factor: float) -> list[int]:
  """Examples kept per original label ("all"), in the float arithmetic of the paper's
  code (its ImbalancedCIFAR10Dataset._get_img_num_per_cls), so that int() truncates
  alike."""
  img_max, ratio = num_train / num_labels, 1 / imb_factor
  if imb_type == "none":
    return [int(img_max)] * num_labels
  if imb_type == "step":
    half = num_labels // 2
    return [int(img_max)] * half + [int(img_max * ratio)] * (num_labels - half)
  if imb_type == "exp":
    return [int(img_max * ratio ** (c / (num_labels - 1.0))) for c in range(num_labels)]
  raise ValueError(f"data.imb_type must be one of {IMB_TYPES}, got {imb_type!r}")


def class_counts(sets: Sequence[tuple[int, ...]], label_sizes: Sequence[int], *,
                 imb_type: str, imb_factor: float, imb_over: str) -> list[int]:
  """Examples kept per class of the task, from the available images per original label
  (`label_sizes`); e.g. cat vs dog of CIFAR-10, exp 100: [5000, 50] ("subset"),
  [1077, 387] ("all")."""
  if imb_over == "all":
    per_label = label_counts(sum(label_sizes), len(label_sizes), imb_type=imb_type,
                             imb_factor=imb_factor)
    return [sum(per_label[v] for v in s) for s in sets]
  if imb_over == "subset":
    return imbalanced_counts([sum(label_sizes[v] for v in s) for s in sets],
                             imb_type=imb_type, imb_factor=imb_factor)
  raise ValueError(f"data.imb_over must be one of {IMB_OVER}, got {imb_over!r}")


def _keep(labels: np.ndarray, y: np.ndarray, sets, *, num_labels: int, imb_type: str,
          imb_factor: float, imb_over: str, rng: np.random.Generator) -> np.ndarray:
  """Sorted indices of the training images kept by the profile ("all": the same number
  of each original label as the paper's code)."""
  sizes = np.bincount(labels, minlength=num_labels).tolist()
  counts = class_counts(sets, sizes, imb_type=imb_type, imb_factor=imb_factor,
                        imb_over=imb_over)
  if min(counts) < 1:
    raise ValueError(f"data.imb_factor={imb_factor} leaves a class empty (counts {counts})")
  if imb_over == "all":
    per_label = label_counts(len(labels), num_labels, imb_type=imb_type,
                             imb_factor=imb_factor)
    return subsample_classes(labels, {v: per_label[v] for v in sorted(sum(sets, ()))},
                             rng=rng)
  return subsample_classes(y, dict(enumerate(counts)), rng=rng)


def _relabel(labels: np.ndarray, sets: list[tuple[int, ...]]) -> np.ndarray:
  y = np.full(len(labels), -1, np.int32)
  for c, s in enumerate(sets):
    y[np.isin(labels, s)] = c
  return y


def _record(ex) -> dict[str, np.ndarray]:
  return {"x": np.asarray(ex["image"], np.uint8), "label": np.asarray(ex["label"], np.int32)}


def _label(ex) -> dict[str, np.ndarray]:
  return {"label": np.asarray(ex["label"], np.int32)}


def _image(ex) -> np.ndarray:
  return np.asarray(ex["image"], np.uint8)


def _cifar(dataset: str, *, seed: int, data_dir: str | None, class_subset: Sequence,
           imb_type: str, imb_factor: float, imb_over: str, augment: bool, val_frac: float,
           pipeline: str) -> Dataset:
  num_labels = NUM_LABELS[dataset]
  sets = class_sets(class_subset, num_labels)
  if imb_factor < 1:
    raise ValueError(f"data.imb_factor must be >= 1, got {imb_factor!r}")
  train_src = sources.open_split(dataset, "train", data_dir=data_dir)
  test_src = sources.open_split(dataset, "test", data_dir=data_dir)
  streamed = pipeline == "stream"
  if streamed:  # Labels only: the images stay encoded until a batch needs them.
    train_all, test_all = (
        sources.read(sources.open_split(dataset, s, data_dir=data_dir, skip_images=True),
                     _label) for s in ("train", "test"))
  else:
    train_all, test_all = sources.read(train_src, _record), sources.read(test_src, _record)

  def split(src, everything, keep, y):
    if streamed:
      return stream_split(src, keep, _image, y=y)
    return make_split(everything["x"][keep], y)

  y = _relabel(train_all["label"], sets)
  keep = _keep(train_all["label"], y, sets, num_labels=num_labels, imb_type=imb_type,
               imb_factor=imb_factor, imb_over=imb_over, rng=np.random.default_rng(seed))
  train, val = train_val_split(split(train_src, train_all, keep, y[keep]),
                               val_frac=val_frac, seed=seed)

  y_test = _relabel(test_all["label"], sets)
  sel = np.flatnonzero(y_test >= 0)
  test = split(test_src, test_all, sel, y_test[sel])
  return Dataset(train=train, val=val, test=test, num_classes=len(sets),
                 num_groups=len(sets),
                 preprocess=ImagePreprocess(CIFAR_MEAN, CIFAR_STD, augment=augment))


def cifar10(*, seed: int = 0, data_dir: str | None = None,
            class_subset: Sequence = ((3,), (5,)), imb_type: str = "step",
            imb_factor: float = 10.0, imb_over: str = "subset", augment: bool = False,
            val_frac: float = 0.2, pipeline: str = "memory", **_) -> Dataset:
  """Args mirror the `data` config section; `seed` fixes the subsample and the split.

  pipeline 'stream' reads only the labels here (images not decoded); images are read
  per batch.
  """
  return _cifar("cifar10", seed=seed, data_dir=data_dir, class_subset=class_subset,
                imb_type=imb_type, imb_factor=imb_factor, imb_over=imb_over,
                augment=augment, val_frac=val_frac, pipeline=pipeline)


def cifar100(*, seed: int = 0, data_dir: str | None = None, class_subset: Sequence = (),
             imb_type: str = "exp", imb_factor: float = 100.0, imb_over: str = "all",
             augment: bool = False, val_frac: float = 0.2, pipeline: str = "memory",
             **_) -> Dataset:
  """CIFAR-100 (fine labels) as `cifar10`; by default CIFAR-100-LT, exp 100."""
  return _cifar("cifar100", seed=seed, data_dir=data_dir, class_subset=class_subset,
                imb_type=imb_type, imb_factor=imb_factor, imb_over=imb_over,
                augment=augment, val_frac=val_frac, pipeline=pipeline)
