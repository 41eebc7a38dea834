"""data.pipeline='stream': images read per batch, each process only its rows, with the
same batches, metrics and resume as the in-memory pipeline."""

import dataclasses
import json
import threading

import jax
import numpy as np
import pytest

import mock_tfds
import test_data_waterbirds
from polyjax import config as config_lib
from polyjax import data, experiment, placement, run_dir, steps, streaming, train
from polyjax.data.stream import StreamSplit


class Recording:
  """A random-access source that records every index read (grain reads from threads)."""

  def __init__(self, source):
    self.source, self.read = source, []
    self._lock = threading.Lock()

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    with self._lock:
      self.read.append(int(i))
    return self.source[i]


def recorded(split: StreamSplit) -> StreamSplit:
  return dataclasses.replace(split, source=Recording(split.source))


def _config(pipeline, **over):
  c = config_lib.base_config()
  c.data.name = "cifar10"
  c.data.data_dir = "/nonexistent"
  c.data.class_subset = ((3,), (5,))
  c.data.augment = True  # the step's on-device randomness must follow the step, too
  c.data.pipeline = pipeline
  c.model.name = "mlp"
  c.model.hidden = 16
  c.model.depth = 1
  c.lr = 1e-4
  c.batch_size = 16
  c.eval_batch_size = 16  # does not divide the 40 test or 13 val examples: padding is exercised
  c.checkpoint_every_epochs = 1
  for k, v in over.items():
    c[k] = v
  return c


def _rows(workdir):
  return [json.loads(line) for line in (workdir / run_dir.METRICS).read_text().splitlines()]


def _assert_rows_close(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert g.keys() == w.keys()
    for k, v in w.items():
      if isinstance(v, float):
        np.testing.assert_allclose(g[k], v, rtol=1e-5, atol=1e-6, err_msg=f"{w['epoch']} {k}")
      else:
        assert g[k] == v, k


def test_stream_matches_memory_and_resumes_exactly(tmp_path):
  runs = {}
  with mock_tfds.mock():
    runs["memory"] = train.train_and_evaluate(_config("memory", num_epochs=3),
                                              str(tmp_path / "memory"))
    train.train_and_evaluate(_config("stream", num_epochs=2), str(tmp_path / "stream"))
    # Resumed from the epoch-2 checkpoint: the order of epoch 3 depends only on (seed, 3).
    runs["stream"] = train.train_and_evaluate(_config("stream", num_epochs=3),
                                              str(tmp_path / "stream"))
  for run in runs.values():
    assert run["epochs_completed"] == 3 and run["steps"] == 3 * (53 // 16)
  _assert_rows_close(_rows(tmp_path / "stream"), _rows(tmp_path / "memory"))
  assert runs["stream"]["final"].keys() == runs["memory"]["final"].keys()
  for k, v in runs["memory"]["final"].items():
    np.testing.assert_allclose(runs["stream"]["final"][k], v, rtol=1e-5, atol=1e-6, err_msg=k)
  assert runs["memory"]["final"]["test/n"] == 40
  # The run moved: the comparison is not between two untrained models.
  rows = _rows(tmp_path / "stream")
  assert rows[0]["loss"] != rows[-3]["loss"]


def test_stream_split_holds_no_images_and_reads_the_memory_pixels():
  with mock_tfds.mock():
    mem = data.load("cifar10", weighting_mode="reweighted", exponent=1.0,
                    data_dir="/nonexistent")
    st = data.load("cifar10", weighting_mode="reweighted", exponent=1.0,
                   data_dir="/nonexistent", pipeline="stream")
  assert st.in_shape == mem.in_shape == (32, 32, 3)
  for name, s in st.splits().items():
    m = mem.splits()[name]
    assert isinstance(s, StreamSplit) and not hasattr(s, "x")
    for field in ("y", "group", "weight"):
      np.testing.assert_array_equal(getattr(s, field), getattr(m, field))
    idx = np.array([len(s) - 1, 0, 3])
    np.testing.assert_array_equal(s.read(idx), m.x[idx])
  np.testing.assert_array_equal(st.train.read(np.array([-1])), np.zeros((1, 32, 32, 3), np.uint8))


def test_every_eval_example_counted_once_and_read_once():
  with mock_tfds.mock():
    exp = experiment.build(_config("stream"))
    mem = experiment.build(_config("memory")).dataset
  names = ("val", "test")
  splits = [recorded(exp.dataset.splits()[name]) for name in names]
  counts_S = jax.device_get(exp.eval_counts(exp.state, splits))
  for i, (name, split) in enumerate(zip(names, splits)):
    counts = {k: v[i] for k, v in counts_S.items()}
    assert counts["n"] == len(split)
    np.testing.assert_array_equal(counts["group_n"], np.bincount(split.group, minlength=2))
    # Every example's record read exactly once; padding reads nothing.
    assert sorted(split.source.read) == sorted(split.rows.tolist())
    x = exp.dataset.preprocess(jax.numpy.asarray(mem.splits()[name].x))
    logits, _ = exp.model_def.apply(exp.state, x, train=False)
    assert counts["correct"] == np.sum(np.argmax(np.asarray(logits), -1) == split.y)


def test_process_rows_for_two_processes_of_four_devices():
  devices = jax.devices()
  assert len(devices) == 8
  process_of = lambda d: d.id // 4  # devices 0-3: process 0, devices 4-7: process 1
  sharding = placement.Shardings(placement.make_mesh(devices)).batch
  assert streaming.process_rows(sharding, 32, process_index=0, process_of=process_of) == slice(0, 16)
  assert streaming.process_rows(sharding, 32, process_index=1, process_of=process_of) == slice(16, 32)
  assert streaming.process_rows(sharding, 32) == slice(0, 32)  # the one real process
  # A mesh that interleaves the processes' devices has no contiguous slice per process.
  mixed = placement.Shardings(placement.make_mesh([devices[i] for i in (0, 4, 1, 5, 2, 6, 3, 7)])).batch
  with pytest.raises(ValueError, match="not contiguous"):
    streaming.process_rows(mixed, 32, process_index=0, process_of=process_of)


def test_each_process_reads_only_its_slice_of_every_batch():
  with mock_tfds.mock():
    ds = data.load("cifar10", weighting_mode="reweighted", exponent=1.0,
                   data_dir="/nonexistent", pipeline="stream")
  sharding = placement.Shardings(placement.make_mesh()).batch
  idx_SxB = steps.epoch_indices(len(ds.train), 16, seed=3, epoch=2)
  parts = []
  for p in (0, 1):
    rows = streaming.process_rows(sharding, 16, process_index=p, process_of=lambda d: d.id // 4)
    split = recorded(ds.train)
    local = list(streaming.read_local_batches(split, idx_SxB, rows, num_threads=4,
                                          prefetch_batches=2))
    assert len(local) == len(idx_SxB)
    want = split.rows[idx_SxB[:, rows]].reshape(-1)
    assert sorted(split.source.read) == sorted(want.tolist())  # its rows, nothing else
    parts.append(local)
  for s, (a, b) in enumerate(zip(*parts)):
    np.testing.assert_array_equal(np.concatenate([a["x"], b["x"]]), ds.train.read(idx_SxB[s]))
    np.testing.assert_array_equal(np.concatenate([a["y"], b["y"]]), ds.train.y[idx_SxB[s]])


def test_waterbirds_stream_reads_the_folder_files(tmp_path, capsys):
  from polyjax.data.__main__ import verify
  test_data_waterbirds.write_folder(tmp_path)
  kw = dict(weighting_mode="reweighted", exponent=1.0, data_dir=str(tmp_path), resolution=32)
  mem = data.load("waterbirds", **kw)
  st = data.load("waterbirds", pipeline="stream", **kw)
  for name, s in st.splits().items():
    np.testing.assert_array_equal(s.read(np.arange(len(s))), mem.splits()[name].x)
    np.testing.assert_array_equal(s.weight, mem.splits()[name].weight)
  c = config_lib.base_config()
  c.data.name, c.data.data_dir, c.data.resolution = "waterbirds", str(tmp_path), 32
  c.data.pipeline = "stream"
  assert verify(c) == 0
  out = capsys.readouterr().out
  assert "train   n=    16  classes=[11, 5]  groups=[9, 2, 1, 4]" in out
  assert "pipeline stream" in out


def test_bad_pipeline_is_a_one_line_config_error():
  c = _config("streaming")
  with pytest.raises(config_lib.ConfigError, match=r"config\.data\.pipeline") as e:
    config_lib.validate(c, device_count=8)
  assert "\n" not in str(e.value)
  c = config_lib.base_config()  # digits: built in memory, no source to stream from
  c.data.pipeline = "stream"
  with pytest.raises(config_lib.ConfigError, match=r"config\.data\.pipeline") as e:
    config_lib.validate(c, device_count=8)
  assert "\n" not in str(e.value) and "digits" in str(e.value)
  config_lib.validate(_config("stream"), device_count=8)
  with pytest.raises(ValueError, match="data.pipeline"):
    data.load("gaussians", weighting_mode="none", exponent=1.0, pipeline="stream")


def test_in_memory_code_paths_refuse_a_stream_split():
  with mock_tfds.mock():
    ds = data.load("cifar10", weighting_mode="reweighted", exponent=1.0,
                   data_dir="/nonexistent", pipeline="stream")
  for fn in (steps.split_arrays, lambda s: steps.pack_for_eval([s], 16)):
    with pytest.raises(config_lib.ConfigError, match=r"config\.data\.pipeline='stream'") as e:
      fn(ds.val)
    assert "\n" not in str(e.value)


def test_celeba_stream_selects_from_attributes_and_reads_the_same_images():
  kw = dict(weighting_mode="reweighted", exponent=1.0, data_dir="/nonexistent",
            train_frac=0.5, test_per_group=6, resolution=32)
  with mock_tfds.mock():
    mem = data.load("celeba", **kw)
    st = data.load("celeba", pipeline="stream", **kw)
  for name, s in st.splits().items():
    m = mem.splits()[name]
    for field in ("y", "group", "weight"):
      np.testing.assert_array_equal(getattr(s, field), getattr(m, field))
    idx = np.array([0, len(s) // 2, len(s) - 1])
    np.testing.assert_array_equal(s.read(idx), m.x[idx])
