"""Evaluation metrics against scikit-learn, through the real padded, sharded eval path."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from polyjax import metrics, placement, steps
from polyjax.data.splits import Split


class FixedLogits:
  """A stand-in ModelDef whose 'model' reads precomputed logits stored in x."""

  def apply(self, state, x, *, train):
    del state, train
    return x, None


def first_split(counts):
  """The counts of the first (here only) packed split."""
  return {k: v[0] for k, v in counts.items()}


def ce(logits_BxC, labels_B, groups_B):
  del groups_B
  return -jax.nn.log_softmax(logits_BxC)[jnp.arange(len(labels_B)), labels_B]


@pytest.mark.parametrize("num_classes,num_groups,n,batch", [(2, 2, 1003, 64), (3, 4, 517, 128)])
def test_metrics_match_sklearn_on_random_predictions(num_classes, num_groups, n, batch):
  rng = np.random.default_rng(num_classes)
  logits = rng.normal(size=(n, num_classes)).astype(np.float32)
  y = rng.integers(0, num_classes, n).astype(np.int32)
  g = rng.integers(0, num_groups, n).astype(np.int32)
  w = rng.uniform(0.1, 3.0, n).astype(np.float32)
  assert n % batch != 0 and len(jax.devices()) == 8
  sh = placement.Shardings(placement.make_mesh())
  eval_counts = steps.make_eval_counts(model_def=FixedLogits(), loss_fn=ce,
                                       num_groups=num_groups, shardings=sh)
  packed = jax.device_put(steps.pack_for_eval([Split(logits, y, g, w)], batch),
                          sh.stacked_batches)
  train_counts = np.array([50, 30, 15, 5][:num_groups])
  got = metrics.finalize(first_split(jax.device_get(eval_counts(None, packed))),
                         train_group_counts=train_counts)

  pred = logits.argmax(-1)
  loss = np.asarray(ce(jnp.asarray(logits), jnp.asarray(y), None), np.float64)
  assert got["n"] == n
  np.testing.assert_allclose(got["acc"], skm.accuracy_score(y, pred), rtol=1e-6)
  np.testing.assert_allclose(got["loss"], loss.mean(), rtol=1e-5)
  np.testing.assert_allclose(got["weighted_loss"], np.sum(w * loss) / np.sum(w), rtol=1e-5)
  prec = skm.precision_score(y, pred, average=None, labels=range(num_classes), zero_division=0)
  rec = skm.recall_score(y, pred, average=None, labels=range(num_classes), zero_division=0)
  for c in range(num_classes):
    np.testing.assert_allclose(got[f"class_{c}_precision"], prec[c], rtol=1e-6)
    np.testing.assert_allclose(got[f"class_{c}_recall"], rec[c], rtol=1e-6)
    np.testing.assert_allclose(got[f"class_{c}_acc"], rec[c], rtol=1e-6)
  group_acc = np.array([skm.accuracy_score(y[g == k], pred[g == k]) for k in range(num_groups)])
  for k in range(num_groups):
    np.testing.assert_allclose(got[f"group_{k}_acc"], group_acc[k], rtol=1e-6)
    # Sums of float32 losses over a few hundred examples: relative error ~1e-6.
    np.testing.assert_allclose(got[f"group_{k}_loss"], loss[g == k].mean(), rtol=1e-5)
  # reweighted_acc: each example weighted by 1/n_g of this split = mean group accuracy.
  inv = 1.0 / np.bincount(g)[g]
  np.testing.assert_allclose(got["reweighted_acc"], np.sum(inv * (pred == y)) / inv.sum(), rtol=1e-6)
  np.testing.assert_allclose(got["worst_group_acc"], group_acc.min(), rtol=1e-6)
  freq = train_counts / train_counts.sum()
  np.testing.assert_allclose(got["train_reweighted_acc"], np.sum(freq * group_acc), rtol=1e-6)
  np.testing.assert_allclose(got["frac_predicted_pos"], np.mean(pred == 1), rtol=1e-6)


def test_balanced_accuracy_equals_sklearn_when_groups_are_classes():
  rng = np.random.default_rng(7)
  n = 301
  y = (rng.uniform(size=n) < 0.2).astype(np.int32)
  logits = rng.normal(size=(n, 2)).astype(np.float32)
  sh = placement.Shardings(placement.make_mesh())
  eval_counts = steps.make_eval_counts(model_def=FixedLogits(), loss_fn=ce, num_groups=2,
                                       shardings=sh)
  packed = jax.device_put(steps.pack_for_eval([Split(logits, y, y, np.ones(n, np.float32))], 40),
                          sh.stacked_batches)
  got = metrics.finalize(first_split(jax.device_get(eval_counts(None, packed))),
                         train_group_counts=np.array([1, 1]))
  np.testing.assert_allclose(got["reweighted_acc"],
                             skm.balanced_accuracy_score(y, logits.argmax(-1)), rtol=1e-6)


def test_padding_is_never_counted():
  split = Split(np.zeros((5, 2), np.float32), np.zeros(5, np.int32), np.zeros(5, np.int32),
                np.ones(5, np.float32))
  padded = steps.pack_for_eval([split], 4)
  assert padded["x"].shape == (2, 4, 2) and padded["mask"].sum() == 5
  # Garbage (NaN) logits in the padding must not reach any sum.
  logits = np.concatenate([np.zeros((5, 2)), np.full((3, 2), np.nan)]).reshape(2, 4, 2)
  counts = metrics.batch_counts(
      logits_BxC=jnp.asarray(logits.reshape(8, 2), jnp.float32), labels_B=jnp.zeros(8, jnp.int32),
      groups_B=jnp.zeros(8, jnp.int32), loss_B=jnp.asarray(logits.reshape(8, 2)[:, 0], jnp.float32),
      weight_B=jnp.ones(8), mask_B=jnp.asarray(padded["mask"][..., 0].reshape(8)), num_groups=1)
  assert float(counts["n"]) == 5 and np.isfinite(float(counts["loss_sum"]))


def _eval(logits, y, g, num_groups, train_counts, batch=64):
  """`metrics.finalize` of one split through the real padded, sharded eval path."""
  sh = placement.Shardings(placement.make_mesh())
  eval_counts = steps.make_eval_counts(model_def=FixedLogits(), loss_fn=ce,
                                       num_groups=num_groups, shardings=sh)
  w = np.ones(len(y), np.float32)
  packed = jax.device_put(steps.pack_for_eval([Split(logits, y, g, w)], batch),
                          sh.stacked_batches)
  return metrics.finalize(first_split(jax.device_get(eval_counts(None, packed))),
                          train_group_counts=train_counts)


def test_group_metrics_of_a_split_missing_a_group():
  """A group with no examples in the split has no accuracy: every group metric
  averages over the groups present (train_reweighted_acc renormalises the training
  frequencies over them), checked against per-example weights in NumPy."""
  rng = np.random.default_rng(3)
  n, num_groups = 411, 4
  logits = rng.normal(size=(n, 2)).astype(np.float32)
  y = rng.integers(0, 2, n).astype(np.int32)
  g = rng.choice([0, 1, 3], n).astype(np.int32)  # Group 2 absent from this split.
  train_counts = np.array([50, 30, 15, 5])
  got = _eval(logits, y, g, num_groups, train_counts)

  correct = (logits.argmax(-1) == y).astype(np.float64)
  n_g = np.bincount(g, minlength=num_groups)
  freq = train_counts / train_counts.sum()
  # Each example weighted by its group's training frequency over the group's size
  # in the split: the training distribution of groups, restricted to those present.
  w = freq[g] / n_g[g]
  np.testing.assert_allclose(got["train_reweighted_acc"], np.sum(w * correct) / np.sum(w),
                             rtol=1e-6)
  inv = 1.0 / n_g[g]
  np.testing.assert_allclose(got["reweighted_acc"], np.sum(inv * correct) / np.sum(inv),
                             rtol=1e-6)
  present_acc = [correct[g == k].mean() for k in (0, 1, 3)]
  np.testing.assert_allclose(got["worst_group_acc"], min(present_acc), rtol=1e-6)
  assert got["group_2_n"] == 0


def test_train_reweighted_acc_of_two_present_groups_at_the_same_accuracy():
  # Four equally frequent training groups; the split holds two, both at accuracy 0.8.
  counts = {"n": 20.0, "loss_sum": 0.0, "weighted_loss_sum": 0.0, "weight_sum": 20.0,
            "correct": 16.0, "class_n": np.array([10.0, 10.0]),
            "class_pred": np.array([10.0, 10.0]), "class_correct": np.array([8.0, 8.0]),
            "group_n": np.array([10.0, 0.0, 10.0, 0.0]),
            "group_correct": np.array([8.0, 0.0, 8.0, 0.0]),
            "group_loss_sum": np.array([3.0, 0.0, 5.0, 0.0])}
  got = metrics.finalize(counts, train_group_counts=np.array([5, 5, 5, 5]))
  assert got["train_reweighted_acc"] == pytest.approx(0.8)
  assert got["reweighted_acc"] == pytest.approx(0.8)
  assert got["worst_group_acc"] == pytest.approx(0.8)
  assert [got[f"group_{g}_loss"] for g in range(4)] == pytest.approx([0.3, 0.0, 0.5, 0.0])
  # No present group has training examples: no training distribution to weight by.
  got = metrics.finalize(counts, train_group_counts=np.array([0, 5, 0, 5]))
  assert math.isnan(got["train_reweighted_acc"])
