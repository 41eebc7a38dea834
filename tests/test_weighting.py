"""Weighting modes of docs/losses.md: importance weights, undersampling, resampling and
group DRO (against a NumPy transcription of Sagawa et al.'s update), in the train
step and through a checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyjax import checkpointing, config as config_lib, data, experiment, steps, weighting

COUNTS = np.array([5000, 500, 120, 33])


def test_importance_weights_have_mean_one_and_loss_weights_follow_the_mode():
  for exponent in (1.0, 2.5):
    w = weighting.importance_weights(COUNTS, exponent=exponent)
    assert np.sum(COUNTS * w) / COUNTS.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(w / w[-1], (COUNTS[-1] / COUNTS) ** exponent)
  np.testing.assert_allclose(weighting.group_weights(COUNTS, mode="reweighted"),
                             weighting.importance_weights(COUNTS), rtol=1e-6)
  for mode in ("none", "undersampled", "resampled", "dro"):
    assert np.all(weighting.group_weights(COUNTS, mode=mode) == 1.0)
  with pytest.raises(ValueError, match="weighting.mode"):
    weighting.group_weights(COUNTS, mode="bogus")


def test_undersampling_leaves_every_group_near_the_smallest_size():
  groups = np.repeat(np.arange(4), COUNTS)
  keep = weighting.undersample_indices(groups, COUNTS, exponent=1.0, seed=3)
  kept = np.bincount(groups[keep], minlength=4)
  assert kept[-1] == COUNTS[-1]  # The smallest group is kept whole.
  n_min = COUNTS.min()
  for g in range(3):  # Binomial(n_g, n_min / n_g): within 4 standard deviations.
    p = n_min / COUNTS[g]
    assert abs(kept[g] - n_min) <= 4 * np.sqrt(COUNTS[g] * p * (1 - p)), kept
  again = weighting.undersample_indices(groups, COUNTS, exponent=1.0, seed=3)
  np.testing.assert_array_equal(keep, again)  # Fixed seed: same examples.


def test_undersampled_digits_train_split_is_balanced_with_unit_weights():
  cfg = config_lib.base_config().data.to_dict()
  cfg.pop("name"), cfg.pop("order_seed")
  full = data.load("digits", weighting_mode="none", exponent=1.0, **cfg)
  ds = data.load("digits", weighting_mode="undersampled", exponent=1.0, **cfg)
  n_full, n = full.train_group_counts, ds.train_group_counts
  assert n[np.argmin(n_full)] == n_full.min()
  assert abs(n[np.argmax(n_full)] - n_full.min()) <= 4 * np.sqrt(n_full.min())
  assert np.all(ds.train.weight == 1.0)
  assert len(ds.test) == len(full.test) and len(ds.val) == len(full.val)
  # Same data seed, same undersampled set, whatever the run seed.
  again = data.load("digits", weighting_mode="undersampled", exponent=1.0, **cfg)
  np.testing.assert_array_equal(ds.train.x, again.train.x)


def test_resampling_group_frequencies_match_the_weights():
  groups = np.repeat(np.arange(4), COUNTS)
  p = weighting.sampling_probs(groups, COUNTS, mode="resampled", exponent=1.0)
  assert weighting.sampling_probs(groups, COUNTS, mode="reweighted", exponent=1.0) is None
  epochs = [steps.epoch_indices(len(groups), 64, seed=7, epoch=e, p=p) for e in (1, 2, 3)]
  drawn = groups[np.concatenate(epochs).ravel()]
  freq = np.bincount(drawn, minlength=4) / len(drawn)
  # Weights 1/n_g: each group is drawn with probability 1/4.
  expected = np.array([np.sum(p[groups == g]) for g in range(4)])
  np.testing.assert_allclose(expected, 0.25)
  se = np.sqrt(expected * (1 - expected) / len(drawn))
  assert np.all(np.abs(freq - expected) < 4 * se), freq
  # Drawn anew each epoch, yet a pure function of (seed, epoch).
  assert not np.array_equal(epochs[0], epochs[1])
  np.testing.assert_array_equal(epochs[1], steps.epoch_indices(len(groups), 64, seed=7,
                                                               epoch=2, p=p))


def np_sagawa(q, loss_B, groups_B, num_groups, eta):
  """Sagawa et al.'s `compute_group_avg` + `compute_robust_loss`, in NumPy."""
  group_map = (groups_B == np.arange(num_groups)[:, None]).astype(np.float64)
  count = group_map.sum(1)
  group_loss = group_map @ loss_B / (count + (count == 0))
  q = q * np.exp(eta * group_loss)
  q = q / q.sum()
  return group_loss @ q, q


def test_dro_matches_the_reference_update_and_its_gradient():
  rng = np.random.default_rng(0)
  loss_B = rng.uniform(0, 3, size=32)
  groups_B = rng.choice([0, 1, 3], size=32)  # Group 2 absent from the batch.
  q0 = np.array([0.1, 0.2, 0.3, 0.4])
  reduce = weighting.make_reduction("dro", num_groups=4, adv_probs_lr=0.3)
  obj, q = reduce(jnp.asarray(loss_B, jnp.float32), jnp.ones(32), jnp.asarray(groups_B),
                  jnp.asarray(q0, jnp.float32))
  want_obj, want_q = np_sagawa(q0, loss_B, groups_B, 4, 0.3)
  assert float(obj) == pytest.approx(want_obj, rel=1e-5)
  np.testing.assert_allclose(q, want_q, rtol=1e-5)
  # No gradient flows through q: d obj / d loss_i = q_g / n_g.
  grad = jax.grad(lambda l: reduce(l, jnp.ones(32), jnp.asarray(groups_B),
                                   jnp.asarray(q0, jnp.float32))[0])(
                                       jnp.asarray(loss_B, jnp.float32))
  n_g = np.bincount(groups_B, minlength=4)
  np.testing.assert_allclose(grad, want_q[groups_B] / n_g[groups_B], rtol=1e-5)


def test_dro_probabilities_stay_on_the_simplex_and_move_to_the_worst_group():
  reduce = jax.jit(weighting.make_reduction("dro", num_groups=3, adv_probs_lr=0.5))
  rng = np.random.default_rng(1)
  q = jnp.full((3,), 1 / 3)
  for _ in range(200):
    groups_B = jnp.asarray(rng.integers(0, 3, size=16))
    loss_B = jnp.asarray(rng.uniform(0, 1, size=16) + 2.0 * (np.asarray(groups_B) == 1))
    prev = q
    _, q = reduce(loss_B, jnp.ones(16), groups_B, q)
    assert np.all(np.asarray(q) >= 0) and float(q.sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(q[1]) >= float(prev[1]) - 1e-7  # Group 1 always has the highest loss.
  assert float(q[1]) > 0.99
  # Huge step sizes and losses stay finite (the update runs in log space).
  _, q = jax.jit(weighting.make_reduction("dro", num_groups=3, adv_probs_lr=1e3))(
      jnp.full((16,), 1e4), jnp.ones(16), groups_B, jnp.full((3,), 1 / 3))
  assert np.all(np.isfinite(q)) and float(q.sum()) == pytest.approx(1.0, abs=1e-6)


def _digits_config(**weighting_fields):
  c = config_lib.base_config()
  c.loss.name = "ce"
  c.batch_size = 64
  c.num_epochs = 1
  c.lr = 0.05
  for k, v in weighting_fields.items():
    c.weighting[k] = v
  config_lib.validate(c, device_count=jax.device_count())
  return c


def test_dro_train_step_updates_probabilities_and_they_survive_a_checkpoint(tmp_path):
  c = _digits_config(mode="dro", adv_probs_lr=0.05)
  exp = experiment.build(c)
  train_data = jax.device_put(steps.split_arrays(exp.dataset.train), exp.shardings.replicated)
  idx = steps.epoch_indices(len(exp.dataset.train), c.batch_size, seed=0, epoch=1)
  state, obj_S = exp.train_epoch(exp.state, train_data,
                                 jax.device_put(idx, exp.shardings.stacked_batches))
  q = np.asarray(state.adv_probs)
  assert np.all(np.isfinite(obj_S)) and q.sum() == pytest.approx(1.0, abs=1e-6)
  # q has moved away from uniform, toward the group the model fits worst early on
  # (the minority, group 1, with a tenth of the examples).
  assert q[1] > 0.5 > q[0]
  ckpt = checkpointing.Checkpoints(tmp_path / "ckpt", every_epochs=1)
  ckpt.end_epoch(1, state, meta={}, value=None, is_best=False, force=True)
  ckpt.close()
  reopened = checkpointing.Checkpoints(tmp_path / "ckpt", every_epochs=1)
  restored, _ = reopened.restore(1, like=exp.state)
  reopened.close()
  np.testing.assert_array_equal(np.asarray(restored.adv_probs), q)


def test_resampled_build_draws_epochs_from_the_weights():
  c = _digits_config(mode="resampled")
  exp = experiment.build(c)
  counts = exp.dataset.train_group_counts
  assert exp.sample_p is not None and np.all(exp.dataset.train.weight == 1.0)
  per_group = np.array([exp.sample_p[exp.dataset.train.group == g].sum() for g in range(2)])
  np.testing.assert_allclose(per_group, 0.5)  # exponent 1: groups drawn equally often.
  assert counts.min() < counts.max() / 5  # ... although the split is imbalanced.


@pytest.mark.parametrize("field,value,match", [
    ("loss.max_margin", 0.0, "config.loss.max_margin must be > 0"),
    ("loss.inv_temperature", -1.0, "config.loss.inv_temperature must be > 0"),
    ("loss.tau", -0.5, "config.loss.tau must be >= 0"),
    ("loss.gamma", float("nan"), "config.loss.gamma must be >= 0"),
    ("weighting.adv_probs_lr", -0.1, "config.weighting.adv_probs_lr must be >= 0"),
    ("weighting.mode", "bogus", "config.weighting.mode='bogus' is not known"),
    ("loss.name", "polyloss", "config.loss.name='polyloss' is not known"),
])
def test_validation_names_each_new_field(field, value, match):
  c = config_lib.base_config()
  section, name = field.split(".")
  c[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(c, device_count=1)


def test_dro_needs_a_positive_step_size():
  c = config_lib.base_config()
  c.weighting.mode = "dro"
  c.weighting.adv_probs_lr = 0.0
  with pytest.raises(config_lib.ConfigError, match="adv_probs_lr must be > 0 for"):
    config_lib.validate(c, device_count=1)
