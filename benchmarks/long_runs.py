"""Benchmark: whole runs of the CIFAR protocol on CIFAR-shaped data, one run and a seed sweep.

    PYTHONPATH=$PWD python benchmarks/long_runs.py [--epochs=400] [--seeds=10]
        [--member_batch=0] [--lr=0.005] [--checkpoint_every_epochs=N]
        [--matmul_precision=default] [--parts=single,sweep] [--log_dir=DIR]
        [--out=FILE.json]

configs/cifar_poly.py (ConvNet, poly loss, importance weights, batch 64, evaluation and
a checkpoint every epoch) on `benchmarks/cifar_shaped.py`'s random images, shaped like
the imbalanced binary CIFAR-10 (4400 training images, 68 steps per epoch), with
wandb disabled. lr 0.005: at the config's 0.1 these random images diverge in the
second epoch, and a run that stops early does less of the work being timed.

single: one `polyjax.main` process of --epochs epochs.
sweep:  --seeds seeds in one `polyjax.sweep` process (all vmapped unless --member_batch).
Each is timed as a whole process (start-up, compilation, data, training, evaluation
and checkpoints); `epoch_s_median` is the median of the seconds printed per epoch
(the training call and the evaluation, not the checkpoint), `device_peak_mib` the
first device's allocator peak where the backend reports one. `sequential_estimate_s`
is --seeds times the single run, for runs too long to repeat; benchmarks/sweep.py
measures the sequential side itself. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import re
import statistics
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from sweep import PY, repo_env, summary, timed_lines, write_json  # noqa: E402

_EPOCH_SECONDS = re.compile(r"^epoch \d+/\d+ .*\(([0-9.]+)s\)$", re.M)
_PEAK = re.compile(r"^cifar_shaped: device_peak_bytes (\d+)$", re.M)


def parse_output(lines: list[tuple[float, str]], wall: float) -> dict:
  """From a run's timed console lines: the median of the seconds printed per epoch;
  `start_s`, the time until the first epoch began (start-up, data, the state);
  `first_epoch_s`, the first epoch's printed seconds (with the compilations);
  `between_epochs_s`, the time per epoch outside the printed seconds (checkpoints,
  files, the host's share of the loop), from the first to the last epoch printed;
  the device's peak allocation."""
  epochs = [(t, float(m.group(1))) for t, line in lines
            if (m := _EPOCH_SECONDS.match(line))]
  peak = [int(m.group(1)) for _, line in lines if (m := _PEAK.match(line))]
  out = {"epochs_printed": len(epochs), "epoch_s_median": None, "start_s": None,
         "between_epochs_s": None,
         "device_peak_mib": round(peak[-1] / 2**20) if peak else None}
  if epochs:
    seconds = [s for _, s in epochs]
    out.update(epoch_s_median=round(statistics.median(seconds), 4),
               start_s=round(epochs[0][0] - seconds[0], 1), first_epoch_s=seconds[0])
    if len(epochs) > 1:
      span = epochs[-1][0] - epochs[0][0]
      out["between_epochs_s"] = round((span - sum(seconds[1:])) / (len(epochs) - 1), 4)
  out["end_s"] = round(wall - epochs[-1][0], 1) if epochs else None
  return out


def _statuses(run_dirs: list[pathlib.Path]) -> dict[str, int]:
  """How many of the runs ended with each status."""
  return dict(collections.Counter(summary(d)["status"] for d in run_dirs))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=400)
  parser.add_argument("--seeds", type=int, default=10)
  parser.add_argument("--member_batch", type=int, default=0)
  parser.add_argument("--lr", type=float, default=0.005)
  parser.add_argument("--parts", default="single,sweep")
  parser.add_argument("--checkpoint_every_epochs", type=int, default=None,
                      help="both parts' --config.checkpoint_every_epochs (default: the "
                           "config's 1)")
  parser.add_argument("--matmul_precision", default="default",
                      help="config.matmul_precision of every run (TF32 or float32 on GPUs)")
  parser.add_argument("--out", default=None)
  parser.add_argument("--log_dir", default=None,
                      help="each run's console lines, timed, as they come (single.log, sweep.log)")
  args = parser.parse_args()
  env = repo_env()
  common = ["--config=configs/cifar_poly.py", "--config.data.name=cifar_shaped",
            f"--config.num_epochs={args.epochs}", f"--config.lr={args.lr}",
            "--config.wandb.mode=disabled",
            f"--config.matmul_precision={args.matmul_precision}"]
  if args.checkpoint_every_epochs:
    common.append(f"--config.checkpoint_every_epochs={args.checkpoint_every_epochs}")
  entry = lambda cmd: [PY, "benchmarks/cifar_shaped.py", cmd]  # noqa: E731
  out = {"epochs": args.epochs, "lr": args.lr, "matmul_precision": args.matmul_precision,
         "checkpoint_every_epochs": args.checkpoint_every_epochs or 1}
  if args.log_dir:
    pathlib.Path(args.log_dir).mkdir(parents=True, exist_ok=True)
  log = lambda part: pathlib.Path(args.log_dir) / f"{part}.log" if args.log_dir else None  # noqa: E731
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    if "single" in args.parts:
      wall, rss, lines = timed_lines(
          entry("main") + common + [f"--workdir={root / 'single'}"], env, log("single"))
      out["single"] = {"wall_s": round(wall, 1), "maxrss_mib": round(rss),
                       "status": next(iter(_statuses([root / "single"]))),
                       **parse_output(lines, wall)}
      print(json.dumps(out), flush=True)
    if "sweep" in args.parts:
      seeds = ",".join(map(str, range(args.seeds)))
      wall, rss, lines = timed_lines(
          entry("sweep") + common + [f"--grid=seed={seeds}", f"--workdir={root / 'sweep'}",
                                     f"--member_batch={args.member_batch}"], env,
          log("sweep"))
      members = sorted(p.parent for p in (root / "sweep").glob("*/summary.json"))
      out["sweep"] = {"members": len(members), "member_batch": args.member_batch,
                      "wall_s": round(wall, 1), "maxrss_mib": round(rss),
                      "statuses": _statuses(members), **parse_output(lines, wall)}
      if "single" in out:
        sequential = args.seeds * out["single"]["wall_s"]
        out["sweep"].update(sequential_estimate_s=round(sequential, 1),
                            ratio_to_estimate=round(sequential / wall, 2))
  write_json(out, args.out)


if __name__ == "__main__":
  main()
