"""polyjax.sweep: stacked members equal single runs; divergence, resume, grids."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from polyjax import config as config_lib
from polyjax import grid, programs, run_dir, sweep, train
import subprocess_env

REPO = pathlib.Path(__file__).resolve().parents[1]
# Run-record fields that name the run's place, not its content.
PLACE = ("workdir",)


def small_config(num_epochs=2):
  from configs import digits_poly
  c = digits_poly.get_config()
  c.model.hidden = 32
  c.num_epochs = num_epochs
  return c


def rows(path):
  return [json.loads(l) for l in (path / run_dir.METRICS).read_text().splitlines()]


def assert_same_run(member_dir: pathlib.Path, single_dir: pathlib.Path, *, tol=1e-5):
  a, b = rows(member_dir), rows(single_dir)
  assert len(a) == len(b) > 0
  for ra, rb in zip(a, b):
    assert ra.keys() == rb.keys()
    for k in ra:
      if isinstance(ra[k], float):
        # Float32 rounding is relative to the value: accuracies lie in [0, 1], a loss
        # (2.23 for an untrained image group) may be larger.
        assert ra[k] == pytest.approx(rb[k], rel=tol, abs=tol), (member_dir.name,
                                                                 ra["epoch"], k)
      else:
        assert ra[k] == rb[k], (member_dir.name, k)
  sa = run_dir.read_json(member_dir / run_dir.SUMMARY)
  sb = run_dir.read_json(single_dir / run_dir.SUMMARY)
  assert sa.keys() == sb.keys()
  for k in ("status", "epochs_completed", "steps"):
    assert sa[k] == sb[k], k
  for k in ("best_metric", "best_epoch"):
    assert sa[k] == sb[k], k
  for part in ("final", "best"):
    assert sa[part].keys() == sb[part].keys(), part
    for k, v in sb[part].items():
      assert sa[part][k] == pytest.approx(v, rel=tol, abs=tol), (part, k)
  ca = run_dir.read_json(member_dir / run_dir.CONFIG)
  cb = run_dir.read_json(single_dir / run_dir.CONFIG)
  assert {k for k in ca if ca[k] != cb.get(k)} == set(PLACE)
  assert sorted(p.name for p in (member_dir / "checkpoints").iterdir()) == \
      sorted(p.name for p in (single_dir / "checkpoints").iterdir())


# 2 lrs x 2 seeds; one member changing every other stackable field; one diverging.
GRID = [{"lr": [0.01, 0.1], "seed": [0, 1]},
        {"loss.alpha": [2.0], "loss.beta": [0.5], "momentum": [0.5], "weight_decay": [1e-3],
         "weighting.exponent": [2.0], "data.order_seed": [7]},
        {"lr": [1e30]}]
BAD = "lr=1e+30"


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  """One sweep of GRID, shared by the tests below: (members, directory, summaries)."""
  members = grid.expand(small_config(), GRID)
  assert len(grid.groups(members)) == 1  # All six members in one program.
  workdir = tmp_path_factory.mktemp("sweep")
  return members, workdir, sweep.run_sweep(members, str(workdir))


def test_members_equal_single_runs(swept, tmp_path):
  members, workdir, summaries = swept
  assert len(summaries) == 6
  for name, cfg in members:
    if name == BAD:
      continue
    assert summaries[name]["status"] == "completed"
    single = tmp_path / name
    train.train_and_evaluate(cfg, str(single))
    assert_same_run(workdir / name, single)
  # The members really differ (the stack did not collapse them).
  finals = {s["final"]["train/loss"] for n, s in summaries.items() if n != BAD}
  assert len(finals) == 5


def test_diverged_member_does_not_stop_others(swept, tmp_path):
  members, workdir, summaries = swept
  bad = summaries[BAD]
  with pytest.raises(train.Diverged):
    train.train_and_evaluate(dict(members)[BAD], str(tmp_path / "single_bad"))
  single_bad = run_dir.read_json(tmp_path / "single_bad" / run_dir.SUMMARY)
  assert bad["status"] == single_bad["status"] == "diverged"
  assert bad["diverged_at"] == single_bad["diverged_at"]
  assert bad["epochs_completed"] == single_bad["epochs_completed"] == 0
  assert not (workdir / BAD / run_dir.METRICS).exists()
  assert all(s["status"] == "completed" and s["epochs_completed"] == 2
             for n, s in summaries.items() if n != BAD)


def test_interrupted_sweep_resumes(swept, tmp_path, monkeypatch):
  members, workdir, summaries = swept
  real_append = run_dir.RunDir.append_metrics

  def append_then_stop(self, rows_):
    real_append(self, rows_)
    if rows_[0]["epoch"] == 2:
      raise KeyboardInterrupt  # After epoch 2's metrics, before its checkpoint.

  monkeypatch.setattr(run_dir.RunDir, "append_metrics", append_then_stop)
  with pytest.raises(KeyboardInterrupt):
    sweep.run_sweep(members, str(tmp_path), checkpoint_every_epochs=1)
  monkeypatch.setattr(run_dir.RunDir, "append_metrics", real_append)
  name = members[0][0]  # The first member's epoch-2 rows were written before the stop.
  assert run_dir.read_json(tmp_path / name / run_dir.SUMMARY)["status"] == "interrupted"
  assert max(r["epoch"] for r in rows(tmp_path / name)) == 2
  bad_before = run_dir.read_json(tmp_path / BAD / run_dir.SUMMARY)
  assert bad_before["status"] == "diverged"

  resumed = sweep.run_sweep(members, str(tmp_path), checkpoint_every_epochs=1)
  assert resumed[BAD] == bad_before  # Diverged members are not trained again.
  for n, _ in members:
    if n == BAD:
      continue
    assert resumed[n]["status"] == "completed"
    a, b = rows(tmp_path / n), rows(workdir / n)
    assert [r["epoch"] for r in a] == [1, 1, 1, 2, 2, 2]  # Epoch 2 rows not doubled.
    for ra, rb in zip(a, b):
      for k, v in rb.items():
        assert ra[k] == (pytest.approx(v, abs=1e-5) if isinstance(v, float) else v), k
  # A finished sweep is not trained again.
  assert sweep.run_sweep(members, str(tmp_path), checkpoint_every_epochs=1) == resumed


def test_dro_resampled_and_lr_schedule_members_equal_single_runs(tmp_path):
  # Group DRO (state-carried probabilities) and resampling (per-member sampling
  # probabilities) under a cosine schedule with warm-up. The best epoch is the one of
  # largest val loss, mostly the first: that checkpoint is restored and tested.
  c = small_config()
  c.lr_schedule, c.warmup_epochs = "cosine", 0.5
  c.best_metric, c.best_mode = "val/loss", "max"
  points = [{"weighting.mode": ["dro"], "lr": [0.01, 0.05]},
            {"weighting.mode": ["resampled"], "weighting.exponent": [1.0, 2.0]}]
  members = grid.expand(c, points)
  assert [len(g) for g in grid.groups(members)] == [2, 2]
  summaries = sweep.run_sweep(members, str(tmp_path / "sweep"))
  for name, cfg in members:
    assert summaries[name]["status"] == "completed"
    train.train_and_evaluate(cfg, str(tmp_path / name))
    assert_same_run(tmp_path / "sweep" / name, tmp_path / name)
  assert all(s["best"] for s in summaries.values())
  assert 1 in {s["best_epoch"] for s in summaries.values()}  # A best checkpoint restored.
  assert len({s["final"]["train/loss"] for s in summaries.values()}) == 4


def test_directory_of_another_run_is_refused(swept):
  members, workdir, _ = swept
  name = "lr=0.1,seed=0"
  other = grid.expand(small_config(), GRID)
  dict(other)[name].loss.beta = 3.0
  before = (workdir / name / run_dir.METRICS).read_text()
  with pytest.raises(config_lib.ConfigError, match="loss.beta"):
    sweep.run_sweep(other, str(workdir))
  assert (workdir / name / run_dir.METRICS).read_text() == before


def test_grid_parsing_names_and_groups():
  c = small_config()
  points = grid.parse_grid_flags(["lr=0.01,0.1", "config.seed=0,1,2", "batch_size=64,128"])
  members = grid.expand(c, [points])
  assert len(members) == 12
  assert members[0][0] == "lr=0.01,seed=0,batch_size=64"
  assert members[0][1].seed == 0 and isinstance(members[0][1].lr, float)
  groups = grid.groups(members)
  assert [len(g) for g in groups] == [6, 6]  # batch_size changes shapes: two programs.
  assert {g[0][1].batch_size for g in groups} == {64, 128}
  # Loss parameters stack for the losses that trace them.
  ce = grid.expand(c, {"loss.name": ["ce"], "loss.alpha": [1.0, 2.0]})
  assert len(grid.groups(ce)) == 1
  with pytest.raises(config_lib.ConfigError, match="nope"):
    grid.expand(c, {"nope": [1]})
  with pytest.raises(config_lib.ConfigError, match="config.seed"):
    grid.expand(c, {"seed": ["x"]})
  with pytest.raises(config_lib.ConfigError, match="--grid"):
    grid.parse_grid_flags(["lr"])


def test_config_sweep_of_digits_poly():
  points = grid.config_sweep(str(REPO / "configs" / "digits_poly.py"))
  members = grid.expand(small_config(), points)
  assert len(members) > 1
  for _, cfg in members:
    config_lib.validate(cfg, device_count=1)


def test_command_line_rejects_a_bad_grid_before_writing(tmp_path):
  import subprocess
  import sys
  proc = subprocess.run(
      [sys.executable, "-m", "polyjax.sweep", "--config=configs/digits_poly.py",
       f"--workdir={tmp_path / 'w'}", "--grid=lr=0.1", "--grid=loss.alpha=-1"],
      cwd=REPO, capture_output=True, text=True, env=subprocess_env.env())
  assert proc.returncode == 2, proc.stderr
  assert "config.loss.alpha" in proc.stderr
  assert not (tmp_path / "w").exists()


def test_member_mesh_splits_members_then_batches_over_the_devices():
  import jax
  devices = jax.devices()
  assert len(devices) == 8

  def shape(num_members, batch_size):
    mesh = programs.member_mesh(devices, num_members=num_members, batch_size=batch_size)
    return mesh.shape[programs.MEMBERS_AXIS], mesh.shape["data"]

  assert shape(16, 64) == (8, 1)  # Every device trains its own two members.
  assert shape(6, 64) == (2, 4)  # 3 members per block, each batch over 4 devices.
  assert shape(3, 64) == (1, 8)
  assert shape(3, 12) == (1, 4)  # Only the devices that divide the batch: 4 of 8.
  assert shape(5, 7) == (1, 1)


def test_cpu_device_count_divides_every_group():
  assert sweep.cpu_device_count(2, [16]) == 2
  assert sweep.cpu_device_count(16, [10]) == 10
  assert sweep.cpu_device_count(4, [6, 4]) == 2
  assert sweep.cpu_device_count(2, [4, 3]) == 1
  assert sweep.cpu_device_count(1, [16]) == 1
  assert sweep.cpu_count_set({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert sweep.cpu_count_set({"JAX_NUM_CPU_DEVICES": "4"})
  assert not sweep.cpu_count_set({"XLA_FLAGS": "--xla_cpu_use_onednn=true"})


def test_command_line_splits_the_cpu_between_members(tmp_path):
  """Without a device count in the environment, the sweep makes one CPU device per
  core (as many as divide the group) and gives each device its own members."""
  import os
  import subprocess
  import sys
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  proc = subprocess.run(
      [sys.executable, "-m", "polyjax.sweep", "--config=configs/digits_poly.py",
       f"--workdir={tmp_path / 'w'}", "--grid=seed=0,1", "--config.num_epochs=1",
       "--config.model.hidden=16"],
      cwd=REPO, capture_output=True, text=True,
      env={**env, "PYTHONPATH": subprocess_env.pythonpath()})
  assert proc.returncode == 0, proc.stderr
  count = sweep.cpu_device_count(len(os.sched_getaffinity(0)), [2])
  devices = "devices" if count > 1 else "device"
  assert (f"2 members on {count} CPU {devices} (members axis {count} x data axis 1)"
          in proc.stdout), proc.stdout
  assert all(run_dir.read_json(tmp_path / "w" / f"seed={s}" / run_dir.SUMMARY)["status"]
             == "completed" for s in (0, 1))
  # It ends with its members' table, best first by the config's best_metric.
  table = proc.stdout[proc.stdout.index("members, best first by val/reweighted_acc"):]
  best = {s: run_dir.read_json(tmp_path / "w" / f"seed={s}" / run_dir.SUMMARY)
          for s in (0, 1)}
  values = {s: best[s]["best"]["val/reweighted_acc"] for s in (0, 1)}
  if values[0] != values[1]:
    first, second = sorted((0, 1), key=lambda s: -values[s])
    assert table.index(f"seed={first} ") < table.index(f"seed={second} "), table


def test_batch_size_not_divisible_by_the_devices_trains_on_fewer(tmp_path):
  c = small_config(num_epochs=1)
  c.batch_size, c.eval_batch_size = 12, 12  # 8 devices: each batch over 4 of them.
  summaries = sweep.run_sweep(grid.expand(c, {"seed": [0, 1, 2]}), str(tmp_path))
  assert {s["status"] for s in summaries.values()} == {"completed"}


def test_members_in_groups_of_two_equal_all_side_by_side(swept, tmp_path):
  """member_batch=4: six members as a group of four, then two; the same runs."""
  members, workdir, summaries = swept
  chunked = sweep.run_sweep(members, str(tmp_path), member_batch=4)  # 4 + remainder 2.
  for name, _ in members:
    assert chunked[name]["status"] == summaries[name]["status"]
    if name != BAD:
      assert_same_run(tmp_path / name, workdir / name)


def test_image_members_are_normalised_and_augmented_like_single_runs(tmp_path):
  # uint8 images pass through the dataset's preprocess (normalisation, random crop
  # and flip from each member's own key) in the sweep's steps as in a single run's.
  import mock_tfds
  c = config_lib.base_config()
  c.data.name, c.data.data_dir, c.data.class_subset = "cifar10", "/nonexistent", ((3,), (5,))
  c.data.augment = True
  c.model.name = "linear"
  c.batch_size, c.eval_batch_size, c.num_epochs, c.lr = 16, 32, 2, 1e-4
  members = grid.expand(c, [{"seed": [0, 1]}])
  with mock_tfds.mock():
    sweep.run_sweep(members, str(tmp_path / "sweep"))
    for name, cfg in members:
      train.train_and_evaluate(cfg, str(tmp_path / name))
      assert_same_run(tmp_path / "sweep" / name, tmp_path / name)


def test_command_line_refuses_to_run_as_one_of_several_processes(tmp_path):
  """Each task of a multi-task srun step would train the whole grid and write the
  same member directories: refused before anything is written."""
  import subprocess
  import sys
  env = {**subprocess_env.env(), "SLURM_STEP_NODELIST": "node[1-2]",
         "SLURM_NTASKS": "2"}
  proc = subprocess.run(
      [sys.executable, "-m", "polyjax.sweep", "--config=configs/digits_poly.py",
       f"--workdir={tmp_path / 'w'}", "--grid=seed=0,1"],
      cwd=REPO, capture_output=True, text=True, env=env)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith("polyjax.sweep: error: a sweep trains every member in one "
                              "process"), proc.stderr
  assert "SLURM step with several tasks" in lines[-1]
  assert not (tmp_path / "w").exists()
  sweep.check_one_process({"SLURM_NTASKS": "2"})  # A batch script outside srun: one process.
  sweep.check_one_process({})


def test_deterministic_is_one_value_for_the_whole_sweep_process():
  c = small_config()
  assert sweep.process_deterministic(grid.expand(c, {"seed": [0, 1]})) is True
  c.deterministic = False
  assert sweep.process_deterministic(grid.expand(c, {"seed": [0, 1]})) is False
  with pytest.raises(config_lib.ConfigError, match="deterministic"):
    sweep.process_deterministic(grid.expand(c, {"deterministic": [True, False]}))


def test_members_train_and_evaluate_under_their_matmul_precision(tmp_path, monkeypatch):
  """matmul_precision splits the grid into groups, each traced under its own value."""
  import jax

  seen = []
  for make in ("make_stacked_epoch", "make_stacked_eval"):
    def spy(*args, _make=getattr(programs, make), _name=make, **kwargs):
      fn = _make(*args, **kwargs)

      def call(*a):
        seen.append((_name, jax.config.jax_default_matmul_precision))
        return fn(*a)
      return call
    monkeypatch.setattr(programs, make, spy)
  members = grid.expand(small_config(num_epochs=1),
                        {"matmul_precision": ["float32", "default"], "seed": [0, 1]})
  assert len(grid.groups(members)) == 2
  summaries = sweep.run_sweep(members, str(tmp_path))
  assert {s["status"] for s in summaries.values()} == {"completed"}
  assert sorted(set(seen), key=str) == sorted(
      {(m, p) for m in ("make_stacked_epoch", "make_stacked_eval") for p in ("float32", None)},
      key=str)


def test_a_second_sweep_on_a_directory_is_refused(tmp_path):
  members = grid.expand(small_config(), GRID)
  holder = run_dir.RunDir(tmp_path)
  holder.lock()  # As a running sweep holds it.
  try:
    with pytest.raises(run_dir.RunDirBusy, match=f"in use by another process .PID {os.getpid()}"):
      sweep.run_sweep(members, str(tmp_path))
  finally:
    holder.unlock()
  assert [p.name for p in tmp_path.iterdir()] == [run_dir.LOCK]  # No member was started.


def test_a_sweep_on_missing_data_is_one_line_and_writes_nothing(tmp_path):
  workdir = tmp_path / "sweep"
  proc = subprocess.run(
      [sys.executable, "-m", "polyjax.sweep",
       f"--config={REPO / 'configs/table.py'}:waterbirds,poly,iw",
       f"--workdir={workdir}", f"--config.data.data_dir={tmp_path / 'nowhere'}",
       "--grid=seed=0,1"], cwd=REPO, env=subprocess_env.env(), capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 2, proc.stderr
  assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("polyjax.sweep: error:")
  assert str(tmp_path / "nowhere") in proc.stderr
  assert not workdir.exists()


def test_a_parameterised_config_gives_its_argument_to_sweep_and_names_its_runs():
  from polyjax import main
  points = grid.config_sweep(str(REPO / "configs" / "table.py") + ":waterbirds,poly,iw")
  assert points and all(isinstance(p, dict) for p in points)
  assert main.default_workdir("configs/table.py:cifar10,poly,iw").name.startswith(
      "table_cifar10_poly_iw-")
  assert main.default_workdir("configs/digits_poly.py").name.startswith("digits_poly-")


def test_member_batch_1_gives_every_member_its_single_run_bit_for_bit(tmp_path):
  """Each member in turn with the program polyjax.main compiles for it: equal bit for
  bit, also at lr=3.0, where training is chaotic and a stacked member's float
  rounding grows to O(1) differences from its single run."""
  c = small_config(num_epochs=3)
  members = grid.expand(c, {"lr": [0.1, 3.0], "seed": [0, 2]})
  sweep.run_sweep(members, str(tmp_path / "sweep"), member_batch=1)
  for name, cfg in members:
    single = tmp_path / name
    try:
      train.train_and_evaluate(cfg, str(single))
    except train.Diverged:
      pass
    written = lambda d: rows(d) if (d / run_dir.METRICS).exists() else []  # noqa: E731
    assert written(tmp_path / "sweep" / name) == written(single), name
    a = run_dir.read_json(tmp_path / "sweep" / name / run_dir.SUMMARY)
    b = run_dir.read_json(single / run_dir.SUMMARY)
    a.pop("wall_seconds"), b.pop("wall_seconds")
    assert a == b, name
