"""wandb logging: offline runs that `wandb sync` can upload, resumes that keep the run id
and never re-log a step, and an unreachable server that cannot hold training up.

Nothing here touches the network: offline mode writes files only, and the online
test points wandb at a closed port on the loopback interface.
"""

import glob
import json
import socket
import struct
import time
import zlib


from polyjax import config as config_lib
from polyjax import grid, run_dir, train, wandb_logger

BLOCK = 32768  # The .wandb file is a LevelDB-style log: 32 KiB blocks of records.


def _records(path):
  """The protobuf records of a `.wandb` file, each record's CRC checked: what `wandb
  sync` reads and uploads."""
  from wandb.proto import wandb_internal_pb2

  raw = open(path, "rb").read()
  assert raw[:4] == b":W&B", raw[:7]
  pos, chunks, out = 7, b"", []
  while pos + 7 <= len(raw):
    if BLOCK - pos % BLOCK < 7:  # A block's tail too short for a header is padding.
      pos += BLOCK - pos % BLOCK
      continue
    crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
    if length == 0 and kind == 0:
      break
    data = raw[pos + 7:pos + 7 + length]
    assert zlib.crc32(data, zlib.crc32(bytes([kind]))) == crc, f"bad CRC at {pos}"
    pos += 7 + length
    chunks += data
    if kind in (1, 4):  # FULL or LAST.
      record = wandb_internal_pb2.Record()
      record.ParseFromString(chunks)
      out.append(record)
      chunks = b""
  return out


def _config(num_epochs, **wandb_fields):
  c = config_lib.base_config()
  c.model.hidden = 32
  c.lr = 0.05
  c.num_epochs = num_epochs
  for k, v in wandb_fields.items():
    c.wandb[k] = v
  return c


def test_resolve_mode(monkeypatch):
  monkeypatch.delenv("WANDB_MODE", raising=False)
  assert wandb_logger.resolve_mode(None) == "offline"
  assert wandb_logger.resolve_mode("online") == "online"
  monkeypatch.setenv("WANDB_MODE", "disabled")
  assert wandb_logger.resolve_mode(None) == "disabled"
  assert wandb_logger.resolve_mode("offline") == "offline"  # The config wins.
  monkeypatch.setenv("WANDB_MODE", "dryrun")
  assert wandb_logger.resolve_mode(None) == "offline"
  monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # Logged in: still offline unless asked.
  monkeypatch.delenv("WANDB_MODE")
  assert wandb_logger.resolve_mode(None) == "offline"


def test_offline_run_is_syncable_and_resume_keeps_id_without_relogging(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(_config(3, mode="offline"), workdir)
  run_id = run_dir.read_json(tmp_path / "run" / wandb_logger.STATE_FILE)["run_id"]
  # Resume with 2 more epochs (allowed: num_epochs and wandb settings do not matter).
  summary = train.train_and_evaluate(_config(5, mode="offline"), workdir)
  assert summary["status"] == "completed"

  files = sorted(glob.glob(f"{workdir}/wandb/offline-run-*/run-*.wandb"))
  assert [f.rsplit("run-", 1)[1] for f in files] == [f"{run_id}.wandb"] * 2  # Same run.
  steps, configs = [], []
  for f in files:
    for record in _records(f):
      kind = record.WhichOneof("record_type")
      if kind == "run":
        assert record.run.run_id == run_id
        configs.append({u.key: json.loads(u.value_json) for u in record.run.config.update})
      elif kind == "history":
        items = {".".join(i.nested_key) or i.key: json.loads(i.value_json)
                 for i in record.history.item}
        steps.append(items["_step"])
        assert "val/reweighted_acc" in items and "epoch" in items
        assert not any("params" in k or "kernel" in k for k in items)  # Never weights.
      assert kind != "artifact"
  assert len(configs) == 2 and steps
  rows = run_dir.RunDir(workdir).read_metrics()
  assert steps == sorted({r["step"] for r in rows})  # Each step once, as in metrics.jsonl.
  for config in configs:  # The whole config, and the run's identity.
    assert config["seed"] == 0 and config["workdir"] == workdir
    assert "data_dir" in config and config["model"]["hidden"] == 32
    assert config["loss"]["name"] == "poly" and "versions" in config


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]  # Nothing listens once the socket is closed.


def test_online_with_unreachable_server_goes_on_within_the_bound(tmp_path, monkeypatch,
                                                                 capsys):
  monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
  monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
  timeout = 3.0
  timings = {}

  class Timed(wandb_logger.WandbLogger):

    def __init__(self, **kwargs):
      t0 = time.time()
      super().__init__(**kwargs)
      timings["init"] = time.time() - t0

    def log(self, step, values):
      t0 = time.time()
      super().log(step, values)
      timings["log"] = timings.get("log", 0.0) + time.time() - t0

    def finish(self, summary):
      t0 = time.time()
      super().finish(summary)
      timings["finish"] = time.time() - t0

  monkeypatch.setattr(train.wandb_logger, "WandbLogger", Timed)
  t0 = time.time()
  summary = train.train_and_evaluate(_config(2, mode="online", init_timeout=timeout),
                                     str(tmp_path))
  total = time.time() - t0
  assert summary["status"] == "completed" and summary["epochs_completed"] == 2
  # The loop never waits for wandb; the end waits for the failing start at most.
  assert timings["init"] + timings["log"] <= 0.5
  assert timings["finish"] <= timeout + 3.0
  err = capsys.readouterr().err
  assert "polyjax: warning: wandb: could not start in mode 'online'" in err
  assert len(run_dir.RunDir(tmp_path).read_metrics()) == 2 * 3  # Metrics all written.
  print(f"online-unreachable: wandb finish {timings['finish']:.1f}s, run {total:.1f}s")


def test_sweep_members_log_their_own_runs_like_single_runs(tmp_path):
  """Each member of a sweep is its own offline wandb run, in one process, with the
  member's config and the steps of its metrics.jsonl, grouped under the sweep."""
  from polyjax import sweep

  workdir = tmp_path / "lr_sweep"
  members = grid.expand(_config(2, mode="offline"), {"seed": [0, 1]})
  sweep.run_sweep(members, str(workdir))
  run_ids = set()
  for name, seed in (("seed=0", 0), ("seed=1", 1)):
    member = workdir / name
    run_id = run_dir.read_json(member / wandb_logger.STATE_FILE)["run_id"]
    run_ids.add(run_id)
    [path] = glob.glob(f"{member}/wandb/offline-run-*/run-{run_id}.wandb")
    steps, config, group = [], None, None
    for record in _records(path):
      kind = record.WhichOneof("record_type")
      if kind == "run":
        config = {u.key: json.loads(u.value_json) for u in record.run.config.update}
        group = record.run.run_group
      elif kind == "history":
        steps.append({".".join(i.nested_key) or i.key: json.loads(i.value_json)
                      for i in record.history.item}["_step"])
    assert config["seed"] == seed and config["workdir"] == str(member)
    assert group == "lr_sweep"
    assert steps == sorted({r["step"] for r in run_dir.RunDir(member).read_metrics()})
  assert len(run_ids) == 2


def test_a_sweep_tries_a_failing_wandb_start_once(tmp_path, monkeypatch, capsys):
  """Members share the process's reasons to fail (network, login): after the first
  failed start the others go on without wandb at once, instead of each waiting out
  init_timeout."""
  import wandb

  from polyjax import sweep

  monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
  monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
  monkeypatch.setattr(wandb_logger, "_FAILED_MODES", set())
  starts = []
  real_init = wandb.init

  def counted(*args, **kwargs):
    starts.append(kwargs["id"])
    return real_init(*args, **kwargs)
  monkeypatch.setattr(wandb, "init", counted)
  members = grid.expand(_config(1, mode="online", init_timeout=3.0), {"seed": [0, 1, 2]})
  summaries = sweep.run_sweep(members, str(tmp_path))
  assert {s["status"] for s in summaries.values()} == {"completed"}
  assert len(starts) == 1
  err = capsys.readouterr().err
  assert err.count("could not start in mode 'online'") == 1
  assert err.count("not started in mode 'online'") == 2


def test_a_stalled_close_is_waited_for_once(tmp_path, monkeypatch, capsys):
  """A close that stalls (an upload on a dead network) holds the first run's end
  for at most twice init_timeout; later runs of the process do not wait for theirs."""
  monkeypatch.setattr(wandb_logger, "_STALLED_MODES", set())
  monkeypatch.setattr(wandb_logger.WandbLogger, "_start", lambda self, kwargs: None)
  monkeypatch.setattr(wandb_logger.WandbLogger, "_close",
                      lambda self, flat, exit_code: time.sleep(0.5))
  loggers = []
  for i in range(3):
    (tmp_path / str(i)).mkdir()
    loggers.append(wandb_logger.WandbLogger(
        workdir=tmp_path / str(i), mode="offline", project="p", entity=None, name=None,
        tags=(), config={}, init_timeout=0.1))
  t0 = time.time()
  for logger in loggers:
    logger.finish({"status": "completed"})
  assert time.time() - t0 < 0.45  # 0.2 s for the first, nothing for the others.
  assert capsys.readouterr().err.count("did not finish within") == 3
