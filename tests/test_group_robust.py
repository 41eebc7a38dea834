"""Group-robustness options: group DRO's generalisation adjustment (Sagawa et al.
2020) and CVaR DRO (Levy et al. 2020, SubpopBench) against NumPy transcriptions of
their reference code, config validation, and stacked sweep members against single
runs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyjax import config as config_lib, group_robust, weighting


def np_sagawa_adjusted(q, loss_B, groups_B, train_counts, eta, c):
  """Sagawa et al.'s `compute_robust_loss` with `adj = C`: `C / sqrt(n_g)` (training
  counts) is added in place to the batch's group losses, so to the objective too."""
  num_groups = len(train_counts)
  group_map = (groups_B == np.arange(num_groups)[:, None]).astype(np.float64)
  count = group_map.sum(1)
  group_loss = group_map @ loss_B / (count + (count == 0))
  if c > 0:
    group_loss = group_loss + c / np.sqrt(train_counts)
  q = q * np.exp(eta * group_loss)
  q = q / q.sum()
  return group_loss @ q, q


@pytest.mark.parametrize("c", [0.0, 1.0, 40.0])
def test_dro_generalisation_adjustment_matches_the_reference(c):
  rng = np.random.default_rng(2)
  loss_B = rng.uniform(0, 3, size=32)
  groups_B = rng.choice([0, 1, 3], size=32)  # Group 2 absent from the batch.
  train_counts = np.array([400.0, 100.0, 9.0, 4.0])
  q0 = np.array([0.1, 0.2, 0.3, 0.4])
  adj = group_robust.dro_adjustment(train_counts, c)
  np.testing.assert_allclose(adj, c / np.sqrt(train_counts), rtol=1e-7)
  reduce = weighting.make_reduction("dro", num_groups=4, adv_probs_lr=0.3, adjustment=adj)
  obj, q = reduce(jnp.asarray(loss_B, jnp.float32), jnp.ones(32), jnp.asarray(groups_B),
                  jnp.asarray(q0, jnp.float32))
  want_obj, want_q = np_sagawa_adjusted(q0, loss_B, groups_B, train_counts, 0.3, c)
  # float32 inputs and sums of at most 32 terms: a few ulps of the largest term.
  assert float(obj) == pytest.approx(want_obj, rel=1e-5)
  np.testing.assert_allclose(q, want_q, rtol=1e-5, atol=1e-30)
  if c == 40.0:  # The absent group 2 (n = 9) has the second largest adjustment.
    assert np.argmax(np.asarray(q)) == 3 and q[2] > q[1]
  # The adjustment is a constant: d obj / d loss_i is still q_g / n_g.
  grad = jax.grad(lambda l: reduce(l, jnp.ones(32), jnp.asarray(groups_B),
                                   jnp.asarray(q0, jnp.float32))[0])(
                                       jnp.asarray(loss_B, jnp.float32))
  n_g = np.bincount(groups_B, minlength=4)
  np.testing.assert_allclose(grad, want_q[groups_B] / n_g[groups_B], rtol=1e-5)


def test_dro_adjustment_of_a_group_absent_from_training_is_zero():
  adj = group_robust.dro_adjustment(np.array([100, 0, 25]), 2.0)
  np.testing.assert_array_equal(adj, np.array([0.2, 0.0, 0.4], np.float32))
  # Huge C and step size: the probabilities stay finite, on the simplex.
  reduce = jax.jit(weighting.make_reduction(
      "dro", num_groups=3, adv_probs_lr=10.0,
      adjustment=group_robust.dro_adjustment(np.array([100, 0, 25]), 1e6)))
  _, q = reduce(jnp.ones(8), jnp.ones(8), jnp.zeros(8, jnp.int32), jnp.full((3,), 1 / 3))
  assert np.all(np.isfinite(q)) and float(q.sum()) == pytest.approx(1.0, abs=1e-6)
  assert float(q[2]) == pytest.approx(1.0)


def np_cvar(v, alpha):
  """SubpopBench's `RobustLoss(alpha, 0, 'cvar')`: best response (reg 0), then <p, v>."""
  m = len(v)
  cutoff = int(alpha * m)
  surplus = 1.0 - cutoff / (alpha * m)
  p = np.zeros(m)
  idx = np.argsort(-v, kind="stable")
  p[idx[:cutoff]] = 1.0 / (alpha * m)
  if cutoff < m:
    p[idx[cutoff]] = surplus
  return p @ v, p


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.3, 0.13, 0.01])
def test_cvar_matches_the_reference_and_its_gradient_is_p(alpha):
  rng = np.random.default_rng(4)
  loss_B = rng.uniform(0, 3, size=20)
  reduce = group_robust.cvar_reduction(alpha)
  q0 = jnp.full((3,), 1 / 3)
  obj, q = reduce(jnp.asarray(loss_B, jnp.float32), jnp.ones(20), jnp.zeros(20, jnp.int32), q0)
  want, p = np_cvar(loss_B, alpha)
  # float32 losses and weights, a sum of at most 20 terms: a few ulps.
  assert float(obj) == pytest.approx(want, rel=1e-5)
  assert q is q0
  grad = jax.grad(lambda l: reduce(l, jnp.ones(20), jnp.zeros(20, jnp.int32), q0)[0])(
      jnp.asarray(loss_B, jnp.float32))
  np.testing.assert_allclose(grad, p, rtol=1e-6)
  # The edges: alpha 1 is the mean, alpha * m < 1 the largest loss alone.
  if alpha == 1.0:
    assert float(obj) == pytest.approx(loss_B.mean(), rel=1e-6)
  if alpha == 0.01:
    assert float(obj) == pytest.approx(loss_B.max(), rel=1e-6)
  # alpha m = 2.6 (alpha 0.13): 2 whole examples, 0.6 of the third, over 2.6.
  if alpha == 0.13:
    top = np.sort(loss_B)[::-1]
    assert float(obj) == pytest.approx((top[0] + top[1] + 0.6 * top[2]) / 2.6, rel=1e-5)


def test_cvar_of_tied_losses_and_under_jit():
  loss_B = jnp.asarray([1.0, 2.0, 2.0, 2.0, 0.5, 0.0, 2.0, 1.0])
  reduce = jax.jit(group_robust.cvar_reduction(0.25))  # The worst 2 of 8: all ties at 2.
  obj, _ = reduce(loss_B, jnp.ones(8), jnp.zeros(8, jnp.int32), jnp.ones(1))
  assert float(obj) == 2.0
  obj, _ = jax.jit(group_robust.cvar_reduction(0.5))(
      loss_B, jnp.ones(8), jnp.zeros(8, jnp.int32), jnp.ones(1))
  assert float(obj) == 2.0  # The worst 4 are the four 2s.
  with pytest.raises(ValueError, match="cvar"):
    weighting.make_reduction("cvar", num_groups=2)


@pytest.mark.parametrize("field,value,match", [
    ("weighting.generalization_adjustment", -1.0,
     "config.weighting.generalization_adjustment must be >= 0 and finite"),
    ("weighting.generalization_adjustment", float("nan"),
     "config.weighting.generalization_adjustment must be >= 0 and finite"),
    ("weighting.generalization_adjustment", 1.0,
     "config.weighting.generalization_adjustment must be 0 unless weighting.mode='dro'"),
    ("weighting.cvar_alpha", 0.0, "config.weighting.cvar_alpha must be in \\(0, 1\\]"),
    ("weighting.cvar_alpha", 1.5, "config.weighting.cvar_alpha must be in \\(0, 1\\]"),
    ("weighting.cvar_alpha", float("nan"), "config.weighting.cvar_alpha must be in"),
    ("weighting.cvar_alpha", 0.5,
     "config.weighting.cvar_alpha must be its default 0.1 unless weighting.mode='cvar'"),
])
def test_validation_names_the_field(field, value, match):
  c = config_lib.base_config()
  section, name = field.split(".")
  c[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(c, device_count=1)


def test_group_robust_members_of_a_sweep_equal_their_single_runs_bit_for_bit(tmp_path):
  """Group DRO with its generalisation adjustment and CVaR DRO, in a stacked sweep run
  member by member (member_batch=1), write exactly the metrics of single runs."""
  from polyjax import grid, run_dir, sweep, train
  c = config_lib.base_config()
  c.model.hidden, c.num_epochs, c.lr = 16, 2, 0.05
  members = grid.expand(c, [{"weighting.mode": ["dro"],
                            "weighting.generalization_adjustment": [0.0, 3.0]},
                           {"weighting.mode": ["cvar"], "weighting.cvar_alpha": [0.2]}])
  sweep.run_sweep(members, str(tmp_path / "sweep"), member_batch=1)
  finals = []
  for name, cfg in members:
    train.train_and_evaluate(cfg, str(tmp_path / name))
    for f in (run_dir.METRICS, run_dir.SUMMARY):
      a, b = ((d / f).read_text() for d in (tmp_path / "sweep" / name, tmp_path / name))
      if f == run_dir.SUMMARY:
        a, b = ({k: v for k, v in json.loads(x).items() if k != "wall_seconds"} for x in (a, b))
      assert a == b, (name, f)
    finals.append(run_dir.read_json(tmp_path / name / run_dir.SUMMARY)["final"])
  assert len({f["train/loss"] for f in finals}) == 3  # Each option changes training.


def test_average_reweighted_and_worst_group_acc_of_a_hand_built_batch():
  """The three accuracies SubpopBench reports, on 10 examples of groups 0, 1 and 3
  (group 2 absent from the split) plus 2 padding rows, against NumPy."""
  from polyjax import metrics
  y = np.array([0, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 0])
  pred = np.array([0, 1, 1, 1, 0, 0, 1, 0, 0, 1, 1, 1])
  g = np.array([0, 0, 1, 1, 0, 1, 3, 3, 3, 3, 2, 2])
  mask = np.array([1] * 10 + [0, 0], bool)  # The group-2 rows are padding.
  logits = np.stack([pred == 0, pred == 1], -1).astype(np.float32)
  counts = metrics.batch_counts(
      logits_BxC=jnp.asarray(logits), labels_B=jnp.asarray(y), groups_B=jnp.asarray(g),
      loss_B=jnp.zeros(12), weight_B=jnp.ones(12), mask_B=jnp.asarray(mask), num_groups=4)
  got = metrics.finalize(jax.device_get(counts), train_group_counts=np.array([5, 5, 5, 5]))
  correct = (pred == y)[mask]
  groups = g[mask]
  per_group = {k: correct[groups == k].mean() for k in np.unique(groups)}  # 2/3, 2/3, 3/4
  # By hand: 7 of 10 correct; three different averages.
  assert got["acc"] == pytest.approx(correct.mean(), abs=1e-12)
  assert got["acc"] == pytest.approx(0.7, abs=1e-12)
  assert got["reweighted_acc"] == pytest.approx(np.mean(list(per_group.values())), abs=1e-12)
  assert got["reweighted_acc"] == pytest.approx((2 / 3 + 2 / 3 + 3 / 4) / 3, abs=1e-12)
  assert got["worst_group_acc"] == pytest.approx(min(per_group.values()), abs=1e-12)
  assert got["worst_group_acc"] == pytest.approx(2 / 3, abs=1e-12)
  assert got["group_2_n"] == 0 and got["group_2_acc"] == 0.0  # Left out of both above.


def test_accuracy_table_on_hand_built_results():
  import types

  import pandas as pd

  from polyjax import accuracy_table
  cells = [types.SimpleNamespace(name="ce", row="CE", column="IW"),
           types.SimpleNamespace(name="poly", row="Poly", column="IW")]
  s = types.SimpleNamespace(cells=cells, es_rule="best_val_worst_group_acc")
  selections = {"ce": {"selected": {"batch_size": 64, "lr": 0.1}}, "poly": {"selected": None}}
  rows = []
  for seed, (acc, rw, wg) in enumerate([(0.9, 0.8, 0.6), (0.7, 0.7, 0.5), (0.8, 0.9, 0.7)]):
    for rule, shift in (("last", 0.0), ("best_val_worst_group_acc", 0.05)):
      for split, batch, extra in (("test", 64, 0.0), ("val", 64, 0.3), ("test", 512, 0.2)):
        rows.append({"cell": "ce", "batch_size": batch, "rule": rule, "split": split,
                     "seed": seed, "acc": acc + shift + extra, "reweighted_acc": rw + shift + extra,
                     "worst_group_acc": wg + shift + extra})
  got = accuracy_table.rows(s, pd.DataFrame(rows), selections)
  assert [(e["cell"], e["rule"]) for e in got] == [
      ("ce", "last"), ("ce", "best_val_worst_group_acc"),
      ("poly", "last"), ("poly", "best_val_worst_group_acc")]
  for e, shift in zip(got[:2], (0.0, 0.05)):  # Only batch 64's test rows count.
    assert e["acc_mean"] == pytest.approx(0.8 + shift, abs=1e-12)
    assert e["reweighted_acc_mean"] == pytest.approx(0.8 + shift, abs=1e-12)
    assert e["worst_group_acc_mean"] == pytest.approx(0.6 + shift, abs=1e-12)
  (title, caption, header, body), = accuracy_table.section(s, pd.DataFrame(rows), selections)
  assert header[3:] == ["average acc", "reweighted acc", "worst-group acc"]
  assert body[0] == ["CE", "IW", "last", "0.800 ± 0.100 (3)", "0.800 ± 0.100 (3)",
                     "0.600 ± 0.100 (3)"]
  assert body[2][3:] == ["no completed runs"] * 3  # No selection: no runs to show.
  assert "average accuracy" in caption and "adjusted accuracy" in caption
