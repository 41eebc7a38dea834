"""Group-robustness options: group DRO's generalisation adjustment (Sagawa et al.
2020) against a NumPy transcription of its reference code, config validation, and
stacked sweep members against single runs."""

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


@pytest.mark.parametrize("field,value,match", [
    ("weighting.generalization_adjustment", -1.0,
     "config.weighting.generalization_adjustment must be >= 0 and finite"),
    ("weighting.generalization_adjustment", float("nan"),
     "config.weighting.generalization_adjustment must be >= 0 and finite"),
    ("weighting.generalization_adjustment", 1.0,
     "config.weighting.generalization_adjustment must be 0 unless weighting.mode='dro'"),
])
def test_validation_names_the_field(field, value, match):
  c = config_lib.base_config()
  section, name = field.split(".")
  c[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(c, device_count=1)


def test_group_robust_members_of_a_sweep_equal_their_single_runs_bit_for_bit(tmp_path):
  """Group DRO with its generalisation adjustment, in a stacked sweep run member by
  member (member_batch=1), writes exactly the metrics of single runs."""
  from polyjax import grid, run_dir, sweep, train
  c = config_lib.base_config()
  c.model.hidden, c.num_epochs, c.lr = 16, 2, 0.05
  c.weighting.mode = "dro"
  members = grid.expand(c, {"weighting.generalization_adjustment": [0.0, 3.0]})
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
  assert finals[0]["train/loss"] != finals[1]["train/loss"]  # The adjustment acts.
