"""Group DRO's automatic generalisation adjustment (Sagawa et al. 2020,
`--automatic_adjustment`): its loss averages and adjustments against a NumPy
transcription of the reference code, runs through `polyjax.main`'s loop, resume,
checkpoints of runs without it, stacked sweeps and config errors."""

import json

import jax
import numpy as np
import pytest

from polyjax import checkpointing, config as config_lib, group_robust, run_dir, train


def np_reference_epoch(q, ema, init, adj, batches, train_counts, eta, gamma):
  """The reference's training LossComputer over `batches` of (loss_B, groups_B), in
  float64: `update_exp_avg_loss`, then `compute_robust_loss` with `adj / sqrt(n_g)`
  added where `all(adj > 0)`. Returns the objectives and the new (q, ema, init)."""
  num_groups = len(train_counts)
  objs = []
  for loss_B, groups_B in batches:
    group_map = (groups_B == np.arange(num_groups)[:, None]).astype(np.float64)
    count = group_map.sum(1)
    group_loss = group_map @ loss_B / (count + (count == 0))
    prev = (1 - gamma * (count > 0)) * (init > 0)
    cur = 1 - prev
    ema = ema * prev + group_loss * cur
    init = (init > 0) | (count > 0)
    if np.all(adj > 0):
      group_loss = group_loss + adj / np.sqrt(train_counts)
    q = q * np.exp(eta * group_loss)
    q = q / q.sum()
    objs.append(group_loss @ q)
  return np.array(objs), q, ema, init


def test_loss_averages_and_adjustments_match_the_reference():
  """Three epochs of batches, group 2 absent from the first epoch and from some
  later batches; the first epoch's gaps are all > 0 (the adjustment applies), the
  second's are not (it is 0 for every group)."""
  rng = np.random.default_rng(0)
  train_counts, eta, gamma, num_groups = np.array([40.0, 25.0, 9.0]), 0.5, 0.3, 3
  epochs = []
  for e in range(3):
    batches = []
    for b in range(4):
      groups_B = rng.integers(0, 2 if e == 0 or b == 1 else 3, 12).astype(np.int32)
      batches.append((rng.uniform(0.1, 2.0, 12).astype(np.float32), groups_B))
    epochs.append(batches)
  w = config_lib.base_config().weighting
  w.mode, w.automatic_adjustment, w.adv_probs_lr, w.loss_ema_gamma = "dro", True, eta, gamma
  reduce = jax.jit(group_robust.config_reduction(w, train_counts))
  auto = group_robust.initial_auto_state(w, train_counts)
  q = np.full(num_groups, 1 / num_groups, np.float32)
  want_q, want_ema = q.astype(np.float64), np.zeros(num_groups)
  want_init, want_adj = np.zeros(num_groups, bool), np.zeros(num_groups)
  applied = []
  for e, batches in enumerate(epochs):
    want_objs, want_q, want_ema, want_init = np_reference_epoch(
        want_q, want_ema, want_init, want_adj, batches, train_counts, eta, gamma)
    for (loss_B, groups_B), want_obj in zip(batches, want_objs):
      obj, (q, auto) = reduce(loss_B, np.ones_like(loss_B), groups_B, (q, auto))
      # float32 against float64: a few roundings of O(1) values per batch, 12 batches.
      np.testing.assert_allclose(obj, want_obj, rtol=1e-5)
    np.testing.assert_allclose(q, want_q, rtol=1e-5)
    np.testing.assert_allclose(auto["ema"], want_ema, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(auto["initialized"] > 0, want_init)
    # The epoch's end: validation losses above every average, then one below.
    val = want_ema + (np.array([0.2, 0.1, 0.3]) if e != 1 else np.array([0.2, -0.1, 0.3]))
    want_adj = (val - want_ema) * np.sqrt(train_counts)  # The reference's train.py.
    adj = group_robust.next_adjustment(val, auto["ema"], train_counts)
    want_term = want_adj / np.sqrt(train_counts) if np.all(want_adj > 0) else 0 * want_adj
    np.testing.assert_allclose(adj, want_term, atol=1e-6)
    auto = {**auto, "adjustment": adj}
    applied.append(bool(np.any(adj)))
    if e == 0:
      assert list(want_init) == [True, True, False]  # Group 2's average not started.
  assert applied == [True, False, True]


def test_a_group_absent_from_training_turns_the_adjustment_off():
  """adj = gap * sqrt(n_g) is 0 for a group with no training examples: not all > 0."""
  adj = group_robust.next_adjustment([1.0, 1.0], [0.5, 0.5], np.array([10, 0]))
  np.testing.assert_array_equal(adj, [0.0, 0.0])
  adj = group_robust.next_adjustment([1.0, np.inf], [0.5, 0.5], np.array([10, 4]))
  np.testing.assert_array_equal(adj, [0.0, 0.0])


def test_until_the_first_epoch_ends_the_adjustment_is_the_static_one():
  w = config_lib.base_config().weighting
  w.mode, w.automatic_adjustment, w.generalization_adjustment = "dro", True, 2.0
  auto = group_robust.initial_auto_state(w, np.array([16, 4]))
  np.testing.assert_array_equal(auto["adjustment"], np.float32([0.5, 1.0]))
  np.testing.assert_array_equal(auto["initialized"], [0, 0])
  w.automatic_adjustment = False
  assert group_robust.initial_auto_state(w, np.array([16, 4])) is None


def auto_config(num_epochs=4):
  """Digits, where these settings give positive gaps after some epochs only."""
  c = config_lib.base_config()
  c.model.hidden, c.num_epochs, c.lr, c.loss.name = 64, num_epochs, 0.1, "ce"
  c.weighting.mode, c.weighting.automatic_adjustment = "dro", True
  c.weighting.loss_ema_gamma = 1.0
  return c


def rows(d, split):
  return [r for r in map(json.loads, (d / run_dir.METRICS).read_text().splitlines())
          if r["split"] == split]


def saved_state(d, epoch):
  """The saved state tree of epoch `epoch` (nested dicts of arrays)."""
  ckpt = checkpointing.Checkpoints(d / run_dir.CHECKPOINTS, read_only=True)
  try:
    return ckpt.restore(epoch)[0]
  finally:
    ckpt.close()


def test_a_run_logs_its_adjustments_and_resumes_exactly(tmp_path):
  """Each epoch's logged adjustment is the gap between its validation group losses
  (metrics rows) and the checkpointed loss averages; a run stopped after 2 epochs
  and resumed writes the rows and final state of an uninterrupted one."""
  c = auto_config()
  train.train_and_evaluate(c, str(tmp_path / "full"))
  train_rows, val_rows = rows(tmp_path / "full", "train"), rows(tmp_path / "full", "val")
  kept = sorted(int(p.name) for p in (tmp_path / "full" / run_dir.CHECKPOINTS).iterdir()
                if p.name.isdigit())
  assert len(kept) == 2  # The best and the last.
  for epoch in kept:
    auto = saved_state(tmp_path / "full", epoch)["dro_auto"]
    gap = np.array([val_rows[epoch - 1][f"group_{g}_loss"] for g in range(2)]) - auto["ema"]
    got = [train_rows[epoch - 1][f"dro_adjustment_{g}"] for g in range(2)]
    want = gap if np.all(gap > 0) else 0 * gap  # Training groups all present.
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(auto["adjustment"], np.float32(got))
  applied = [r["dro_adjustment_0"] > 0 for r in train_rows]
  assert True in applied and False in applied  # Both branches of `all(adj > 0)`.

  c2 = auto_config(num_epochs=2)
  train.train_and_evaluate(c2, str(tmp_path / "resumed"))
  train.train_and_evaluate(c, str(tmp_path / "resumed"))
  for split in ("train", "val", "test"):
    assert rows(tmp_path / "resumed", split) == rows(tmp_path / "full", split)
  a, b = (jax.tree.leaves(saved_state(tmp_path / d, 4)) for d in ("resumed", "full"))
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)

  c.weighting.automatic_adjustment = False  # The adjustment changes training.
  c.weighting.loss_ema_gamma = 0.1
  train.train_and_evaluate(c, str(tmp_path / "static"))
  assert rows(tmp_path / "static", "train")[-1]["loss"] != train_rows[-1]["loss"]
  assert "dro_adjustment_0" not in rows(tmp_path / "static", "train")[-1]


def test_runs_without_it_keep_their_checkpoint_arrays(tmp_path):
  """A run without the option saves exactly the arrays runs saved before the option
  existed (no `dro_auto`), and resumes from them."""
  c = auto_config(num_epochs=1)
  c.weighting.automatic_adjustment, c.weighting.loss_ema_gamma = False, 0.1
  train.train_and_evaluate(c, str(tmp_path / "run"))
  saved = saved_state(tmp_path / "run", 1)
  assert set(saved) == {"step", "params", "model_state", "opt_state", "rng", "adv_probs"}
  c.num_epochs = 2
  assert train.train_and_evaluate(c, str(tmp_path / "run"))["epochs_completed"] == 2


def test_stacked_members_equal_their_single_runs(tmp_path):
  """Each member of a sweep gets its own adjustment from its own validation: run
  member by member (member_batch=1) a sweep writes its single runs bit for bit;
  stacked (vmap) it writes them up to float32 rounding (the programs sum in
  another order: ~1e-7 relative here, far below the gaps' ~1e-2)."""
  from polyjax import grid, sweep
  members = grid.expand(auto_config(num_epochs=3), {"seed": [0, 1]})
  sweep.run_sweep(members, str(tmp_path / "sequential"), member_batch=1)
  sweep.run_sweep(members, str(tmp_path / "stacked"))
  adjustments = []
  for name, cfg in members:
    train.train_and_evaluate(cfg, str(tmp_path / name))
    a, b = ((d / run_dir.METRICS).read_text() for d in (tmp_path / "sequential" / name,
                                                       tmp_path / name))
    assert a == b, name
    single = rows(tmp_path / name, "train")
    stacked = rows(tmp_path / "stacked" / name, "train")
    for g in range(2):
      np.testing.assert_allclose([r[f"dro_adjustment_{g}"] for r in stacked],
                                 [r[f"dro_adjustment_{g}"] for r in single], atol=1e-4)
    adjustments.append([r["dro_adjustment_0"] for r in single])
  assert adjustments[0] != adjustments[1]  # Each member's own.


@pytest.mark.parametrize("field,value,others,match", [
    ("weighting.automatic_adjustment", True, {},
     "config.weighting.automatic_adjustment must be False unless weighting.mode='dro'"),
    ("weighting.loss_ema_gamma", 0.0, {"weighting.mode": "dro",
                                       "weighting.automatic_adjustment": True},
     r"config.weighting.loss_ema_gamma must be in \(0, 1\]"),
    ("weighting.loss_ema_gamma", 1.5, {"weighting.mode": "dro",
                                       "weighting.automatic_adjustment": True},
     r"config.weighting.loss_ema_gamma must be in \(0, 1\]"),
    ("weighting.loss_ema_gamma", 0.5, {"weighting.mode": "dro"},
     "config.weighting.loss_ema_gamma must be its default 0.1 unless"),
    ("eval_every_epochs", 2, {"weighting.mode": "dro", "weighting.automatic_adjustment": True},
     "config.eval_every_epochs must be 1 with weighting.automatic_adjustment"),
])
def test_validation_names_the_field(field, value, others, match):
  c = config_lib.base_config()
  for k, v in {**others, field: value}.items():
    c.update_from_flattened_dict({k: v})
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(c, device_count=1)
