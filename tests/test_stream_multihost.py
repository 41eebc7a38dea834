"""Two processes on loopback, one CPU device each, train mock CIFAR-10 with
data.pipeline='stream' through the real CLI: each process decodes only its half of
every batch, and the run matches one in-memory process with two devices."""

import collections
import importlib.util
import json
import pathlib
import sys

import jax

import mock_tfds
import test_multihost
from polyjax import experiment, placement, steps, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
BATCH, EVAL_BATCH, EPOCHS = 16, 16, 2
OVERRIDES = {"data.data_dir": "/nonexistent", "model.name": "mlp", "model.hidden": 16,
             "model.depth": 1, "lr": 1e-4, "batch_size": BATCH, "eval_batch_size": EVAL_BATCH,
             "num_epochs": EPOCHS, "test_on_best": False, "data.augment": True}

# Runs polyjax.main under mock data, recording every image read: (split size, example).
RUN_MAIN = """
import json, runpy, sys, threading
sys.path.insert(0, {tests!r})
import mock_tfds
from polyjax.data import stream
reads, lock, read_one = [], threading.Lock(), stream.StreamSplit.read_one
def recording(self, i):
  if i >= 0:
    with lock:
      reads.append((len(self), int(i)))
  return read_one(self, i)
stream.StreamSplit.read_one = recording
sys.argv = ["polyjax.main"] + {args!r} + sys.argv[1:]
try:
  with mock_tfds.mock():
    runpy.run_module("polyjax.main", run_name="__main__")
finally:
  import jax
  with open({out!r} + f"/reads_{{jax.process_index()}}.json", "w") as f:
    json.dump(reads, f)
"""


def _config(pipeline):
  """configs/cifar_poly.py with OVERRIDES, as the command line below builds it."""
  spec = importlib.util.spec_from_file_location("cifar_poly", ROOT / "configs" / "cifar_poly.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.data.pipeline = pipeline
  for field, value in OVERRIDES.items():
    *parents, leaf = field.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def test_two_processes_read_only_their_rows_and_match_one_process(tmp_path):
  with mock_tfds.mock():
    ref_dir = tmp_path / "one_process"
    train.train_and_evaluate(_config("memory"), str(ref_dir),
                             mesh=placement.make_mesh(jax.devices()[:2]))
    ds = experiment.build(_config("stream")).dataset

  workdir = tmp_path / "two_processes"
  args = ["--config=configs/cifar_poly.py", f"--workdir={workdir}",
          "--config.data.pipeline=stream"] + [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  script = RUN_MAIN.format(tests=str(ROOT / "tests"), args=args, out=str(tmp_path))
  test_multihost.run_two_processes([sys.executable, "-c", script])

  rows = test_multihost._rows(workdir)
  ref_rows = test_multihost._rows(ref_dir)
  assert sorted(rows) == sorted(ref_rows)
  for key, row in rows.items():
    test_multihost._assert_close(row, ref_rows[key], f"epoch {key[0]} {key[1]}")

  # What each process decoded: its half of every training batch and of every padded
  # eval batch, for each evaluation.
  reads = [collections.Counter(map(tuple, json.loads((tmp_path / f"reads_{p}.json").read_text())))
           for p in (0, 1)]
  half = BATCH // 2
  for p in (0, 1):
    want = collections.Counter()
    cols = slice(p * half, (p + 1) * half)
    for epoch in range(1, EPOCHS + 1):
      idx = steps.epoch_indices(len(ds.train), BATCH, seed=0, epoch=epoch)
      want.update((len(ds.train), int(i)) for i in idx[:, cols].reshape(-1))
    for split, times in ((ds.train, EPOCHS), (ds.val, EPOCHS), (ds.test, EPOCHS)):
      idx, _ = steps.eval_indices(len(split), EVAL_BATCH)
      for _ in range(times):
        want.update((len(split), int(i)) for i in idx[:, cols].reshape(-1) if i >= 0)
    assert reads[p] == want, f"process {p}"
  assert not set(k for k in reads[0] if k[0] == len(ds.test)) & set(
      k for k in reads[1] if k[0] == len(ds.test))

