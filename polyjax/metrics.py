"""Evaluation metrics (docs/metrics.md): sums inside jit, ratios on the host.

`batch_counts` turns one padded batch into additive counts (masked examples count
for nothing), `add` accumulates them, and `finalize` divides on the host. Because
only sums cross batches, an evaluation over padded batches counts every example
exactly once, whatever the batch size.
"""

from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

Counts = dict[str, jax.Array]


def batch_counts(*, logits_BxC: jax.Array, labels_B: jax.Array, groups_B: jax.Array,
                 loss_B: jax.Array, weight_B: jax.Array, mask_B: jax.Array,
                 num_groups: int) -> Counts:
  """Additive counts for one batch; `mask_B` is 1 for real examples, 0 for padding."""
  num_classes = logits_BxC.shape[-1]
  mask_B = mask_B.astype(jnp.float32)
  pred_B = jnp.argmax(logits_BxC, axis=-1)
  correct_B = (pred_B == labels_B).astype(jnp.float32) * mask_B
  label_BxC = jax.nn.one_hot(labels_B, num_classes) * mask_B[:, None]
  pred_BxC = jax.nn.one_hot(pred_B, num_classes) * mask_B[:, None]
  group_BxG = jax.nn.one_hot(groups_B, num_groups) * mask_B[:, None]
  # Padding may hold garbage logits; never let a NaN there reach the sums.
  loss_B = jnp.where(mask_B > 0, loss_B, 0.0)
  return {
      "n": jnp.sum(mask_B),
      "loss_sum": jnp.sum(loss_B),
      "weighted_loss_sum": jnp.sum(weight_B * loss_B * mask_B),
      "weight_sum": jnp.sum(weight_B * mask_B),
      "correct": jnp.sum(correct_B),
      "class_n": jnp.sum(label_BxC, axis=0),
      "class_pred": jnp.sum(pred_BxC, axis=0),
      "class_correct": jnp.sum(label_BxC * correct_B[:, None], axis=0),
      "group_n": jnp.sum(group_BxG, axis=0),
      "group_correct": jnp.sum(group_BxG * correct_B[:, None], axis=0),
      "group_loss_sum": loss_B @ group_BxG,
  }


def add(a: Counts, b: Counts) -> Counts:
  return jax.tree.map(jnp.add, a, b)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  """num / den with 0 where den is 0 (sklearn's zero_division=0)."""
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def finalize(counts: Mapping[str, np.ndarray], *,
             train_group_counts: np.ndarray) -> dict[str, float]:
  """Turns summed counts into the metrics of docs/metrics.md.

  Args:
    counts: summed output of `batch_counts`, fetched to the host.
    train_group_counts: (G,) training examples per group, for
      `train_reweighted_acc`: the accuracies of the groups present in this split,
      weighted by their training frequencies renormalised over those groups (NaN
      if none of them has a training example).

  Returns:
    A flat dict of Python floats.
  """
  c = {k: np.asarray(v, np.float64) for k, v in counts.items()}
  n = float(c["n"])
  group_acc = _ratio(c["group_correct"], c["group_n"])
  present = c["group_n"] > 0
  # A group absent from this split has no accuracy (not accuracy 0): like the two
  # metrics below, weight only the groups present, renormalising their frequencies.
  train_freq = np.where(present, np.asarray(train_group_counts, np.float64), 0.0)
  train_total = train_freq.sum()
  out = {
      "n": n,
      "loss": float(c["loss_sum"] / n),
      "weighted_loss": float(_ratio(c["weighted_loss_sum"], c["weight_sum"])),
      "acc": float(c["correct"] / n),
      # Weights 1/n_g of this split's own groups: the mean of group accuracies.
      "reweighted_acc": float(group_acc[present].mean()),
      "train_reweighted_acc": (float(np.sum(train_freq * group_acc) / train_total)
                               if train_total > 0 else math.nan),
      "worst_group_acc": float(group_acc[present].min()),
      "frac_predicted_pos": float(c["class_pred"][1] / n) if len(c["class_pred"]) > 1 else 0.0,
  }
  recall = _ratio(c["class_correct"], c["class_n"])
  precision = _ratio(c["class_correct"], c["class_pred"])
  for k in range(len(recall)):
    out[f"class_{k}_acc"] = float(recall[k])
    out[f"class_{k}_recall"] = float(recall[k])
    out[f"class_{k}_precision"] = float(precision[k])
  group_loss = _ratio(c["group_loss_sum"], c["group_n"])
  for g in range(len(group_acc)):
    out[f"group_{g}_acc"] = float(group_acc[g])
    out[f"group_{g}_loss"] = float(group_loss[g])
    out[f"group_{g}_n"] = float(c["group_n"][g])
  return out
