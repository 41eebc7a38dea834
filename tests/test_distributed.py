"""When the distributed runtime starts, global arrays from host data, the writer switch."""

import jax
import numpy as np
import pytest

from polyjax import distributed, placement, run_dir

LAPTOP = {"HOME": "/home/me", "PATH": "/usr/bin"}
SRUN = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_NTASKS": "8",
        "SLURM_PROCID": "3", "SLURM_LOCALID": "3"}


def _decide(mode="auto", environ=LAPTOP, tpu_vm=False, **flags):
  args = {"coordinator_address": None, "num_processes": None, "process_id": None, **flags}
  return distributed.decide(mode=mode, environ=environ, tpu_vm=tpu_vm, **args)


def test_plain_laptop_run_stays_single_process():
  assert _decide() is None
  if not distributed.on_cloud_tpu_vm():  # Here the real call must be a no-op.
    assert distributed.initialize(mode="auto", environ=LAPTOP) is None
  assert jax.process_count() == 1


@pytest.mark.parametrize("environ", [
    {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8"},  # Batch script, not inside srun.
    {**SRUN, "SLURM_NTASKS": "1"},  # srun of one task.
    {"OMPI_COMM_WORLD_SIZE": "1"},
])
def test_single_task_cluster_jobs_stay_single_process(environ):
  assert _decide(environ=environ) is None


def test_cluster_environments_start_the_runtime():
  assert _decide(environ=SRUN) == "SLURM step with several tasks"
  assert _decide(environ={"OMPI_COMM_WORLD_SIZE": "4"}) == "Open MPI job with several ranks"
  assert _decide(tpu_vm=True) == "Cloud TPU VM"
  assert _decide(mode="on") == "--distributed=on"
  assert _decide(mode="off", environ=SRUN, tpu_vm=True) is None


def test_launch_flags_start_the_runtime():
  assert _decide(coordinator_address="10.0.0.1:1234", num_processes=2,
                 process_id=1) == "launch flags"
  # Inside a cluster job, JAX's detection fills in the flags left out.
  assert _decide(environ=SRUN, coordinator_address="gpu01:1234") == "launch flags"


@pytest.mark.parametrize("flags, message", [
    ({"mode": "off", "process_id": 0}, "--process_id is set but --distributed=off"),
    ({"num_processes": 0}, "--num_processes must be >= 1"),
    ({"process_id": -1}, "--process_id must be >= 0"),
    ({"num_processes": 2, "process_id": 2}, "--process_id must be < --num_processes (2)"),
    ({"coordinator_address": "localhost"}, "--coordinator_address must be HOST:PORT"),
    ({"mode": "sometimes"}, "--distributed='sometimes' is not known"),
    ({"num_processes": 2, "process_id": 0},
     "--num_processes needs --coordinator_address outside a SLURM, Open MPI or Cloud TPU job"),
])
def test_bad_flags_name_the_flag(flags, message):
  with pytest.raises(distributed.DistributedError, match=message.replace("(", r"\(")
                     .replace(")", r"\)")):
    _decide(**flags)


def test_to_global_places_each_shard_from_host_data():
  shardings = placement.Shardings(placement.make_mesh())
  idx_SxB = np.arange(3 * 16, dtype=np.int32).reshape(3, 16)
  out = placement.to_global({"idx": idx_SxB}, shardings.stacked_batches)["idx"]
  assert out.sharding == shardings.stacked_batches
  np.testing.assert_array_equal(np.asarray(out), idx_SxB)
  for shard in out.addressable_shards:  # Each device holds its slice of every batch.
    np.testing.assert_array_equal(np.asarray(shard.data), idx_SxB[shard.index])
    assert shard.data.shape == (3, 16 // jax.device_count())


def test_to_global_keeps_typed_keys():
  shardings = placement.Shardings(placement.make_mesh())
  key = jax.random.key(3)
  out = placement.to_global({"rng": key}, shardings.replicated)["rng"]
  assert jax.dtypes.issubdtype(out.dtype, jax.dtypes.prng_key)
  assert out.sharding == shardings.replicated
  np.testing.assert_array_equal(jax.random.key_data(out), jax.random.key_data(key))


def test_non_writer_run_dir_writes_nothing(tmp_path):
  run = run_dir.RunDir(tmp_path / "run", is_writer=False)
  run.create()
  run.write_config({"seed": 0})
  run.append_metrics([{"epoch": 1, "split": "test", "acc": 1.0}])
  run.write_summary({"status": "completed"})
  assert not (tmp_path / "run").exists()
  writer = run_dir.RunDir(tmp_path / "run")
  writer.create()
  writer.write_summary({"status": "completed"})
  assert run_dir.read_json(tmp_path / "run" / run_dir.SUMMARY) == {"status": "completed"}
