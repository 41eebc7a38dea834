"""Benchmark: a grid trained by `polyjax.sweep` against one `polyjax.main` process per point.

    PYTHONPATH=$PWD python benchmarks/sweep.py [--parts=digits,convnet] [--out=FILE.json]
        [--checkpoint_every_epochs=N] [--compilation_cache] [--sweep_rounds=3]

digits: 16 members (4 lrs x 4 seeds) of configs/digits_poly.py (MLP 3x200, 40 epochs).
convnet: 10 seeds of the ConvNet on CIFAR-shaped random images (benchmarks/cifar_shaped.py;
  4400 training images of 32x32x3 unless --cnn_train_scale shrinks it), lr 0.005.
Each side is timed as whole processes (start-up, compilation, training, evaluation and
files), one after another, so the ratio is what a user waits. Both sides log to wandb
as the environment says (offline unless WANDB_MODE is set; the JSON's `wandb_mode`). The digits sweep runs
--sweep_rounds times, interleaved with the single runs (its median is the figure). Peak memory is the
largest maxrss (os.wait4) of the processes of a side. The final metrics of the two
sides are compared, member by member. --checkpoint_every_epochs=N sets the same
checkpoint interval on both sides (N = the number of epochs: the latest checkpoint only
after the last epoch, plus each new best). --compilation_cache gives each side a
persistent compilation cache, empty at the start (`--compilation_cache_dir`), as
scripts/launch_sweep.py's commands have. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
PY = sys.executable


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
  """Runs `cmd`; returns (wall seconds, maxrss in MiB). Raises if it fails (exit 1, a
  diverged polyjax.main run, is a result)."""
  wall, rss, _ = timed_lines(cmd, env)
  return wall, rss


def timed_lines(cmd: list[str], env: dict[str, str], log: pathlib.Path | None = None
                ) -> tuple[float, float, list[tuple[float, str]]]:
  """`timed`, and [(seconds since the start, line), ...] of the command's stdout and
  stderr, each line also appended to `log` as it comes."""
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace")
  lines = []
  for line in proc.stdout:
    lines.append((time.perf_counter() - t0, line.rstrip("\n")))
    if log:
      with log.open("a") as f:
        f.write(f"{lines[-1][0]:.3f} {lines[-1][1]}\n")
  _, status, usage = os.wait4(proc.pid, 0)
  wall = time.perf_counter() - t0
  if os.waitstatus_to_exitcode(status) not in (0, 1):
    tail = "\n".join(line for _, line in lines[-40:])
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{tail}")
  return wall, usage.ru_maxrss / 1024, lines


def repo_env() -> dict[str, str]:
  """This environment with the checkout first on PYTHONPATH (the caller's entries kept)."""
  return {**os.environ, "PYTHONPATH": os.pathsep.join(
      p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


def write_json(out: dict, path: str | None) -> None:
  """Prints `out` as indented JSON, and writes it to `path` if given."""
  text = json.dumps(out, indent=1)
  print(text)
  if path:
    pathlib.Path(path).write_text(text + "\n")


def summary(run: pathlib.Path) -> dict:
  return json.loads((run / "summary.json").read_text())


def _difference(a, b) -> float:
  """|a - b| of two summary values; run directories write NaN and Inf as strings
  ('nan', 'inf'). Equal non-finite values differ by 0, a finite and a non-finite one by inf."""
  a, b = float(a), float(b)
  if a == b or (math.isnan(a) and math.isnan(b)):
    return 0.0
  diff = abs(a - b)
  return math.inf if math.isnan(diff) else diff


def compare(sweep_dir: pathlib.Path, single_dirs: dict[str, pathlib.Path]) -> dict:
  """Largest difference of final metrics of members completed on both sides, with
  the member and metric it is in; members whose outcome (status, divergence step)
  differs are listed."""
  worst, where, statuses, differ = 0.0, None, {}, {}
  for name, single in single_dirs.items():
    a, b = summary(sweep_dir / name), summary(single)
    statuses[b["status"]] = statuses.get(b["status"], 0) + 1
    if a["status"] != b["status"] or a.get("diverged_at") != b.get("diverged_at"):
      differ[name] = {"sweep": [a["status"], a.get("diverged_at")],
                      "single": [b["status"], b.get("diverged_at")]}
    elif b["status"] == "completed":
      for k in b["final"]:
        diff = _difference(a["final"][k], b["final"][k])
        if diff > worst:
          worst, where = diff, f"{name} {k} (single {float(b['final'][k]):.6g})"
  return {"max_final_metric_diff": worst, "max_final_metric_diff_at": where,
          "single_statuses": statuses, "outcome_differs": differ}


def bench(name: str, entry: list[str], common: list[str], grid: dict[str, list],
          env: dict[str, str], root: pathlib.Path, sweep_flags: tuple[str, ...] = (),
          compilation_cache: bool = False, sweep_rounds: int = 1) -> dict:
  """The sweep `sweep_rounds` times, interleaved with the sequential runs (sweep,
  a share of the single runs, sweep, ...), so that both sides see the machine's
  load over the same period; the ratio takes the sweep's median."""
  from polyjax import grid as grid_lib
  points = grid_lib.expand(_dummy_config(), grid)  # Names only; the grid is int/float.
  if compilation_cache:  # Each side starts from an empty cache of its own.
    common = common + [f"--compilation_cache_dir={root / name}-cache-{{side}}"]
  side = lambda args, s: [a.replace("{side}", s) for a in args]  # noqa: E731
  grid_flags = [f"--grid={f}={','.join(map(str, v))}" for f, v in grid.items()]
  sweep_walls, sweep_rss = [], 0.0
  singles, seq_wall, seq_rss = {}, 0.0, 0.0
  share = -(-len(points) // sweep_rounds)
  for r in range(sweep_rounds):
    wall, rss = timed(entry("sweep") + side(common, "sweep") + grid_flags +
                      list(sweep_flags) + [f"--workdir={root / f'{name}-sweep-{r}'}"], env)
    sweep_walls.append(wall)
    sweep_rss = max(sweep_rss, rss)
    for member, cfg in points[r * share:(r + 1) * share]:
      overrides = [f"--config.{f}={_get(cfg, f)}" for f in grid]
      singles[member] = root / f"{name}-single" / member
      wall, rss = timed(entry("main") + side(common, "single") + overrides +
                        [f"--workdir={singles[member]}"], env)
      seq_wall += wall
      seq_rss = max(seq_rss, rss)
  sweep_wall = float(np.median(sweep_walls))
  print(f"{name}: sweep {sweep_wall:.1f}s (median of {sweep_walls}), "
        f"sequential {seq_wall:.1f}s", flush=True)
  return {"members": len(points), "sweep_s": round(sweep_wall, 1),
          "sweep_rounds_s": [round(w, 1) for w in sweep_walls],
          "sequential_s": round(seq_wall, 1), "ratio": round(seq_wall / sweep_wall, 2),
          "sweep_maxrss_mib": round(sweep_rss), "single_maxrss_mib": round(seq_rss),
          **compare(root / f"{name}-sweep-0", singles)}


def _get(cfg, field):
  node = cfg
  for p in field.split("."):
    node = node[p]
  return node


def _dummy_config():
  from polyjax.config import base_config
  return base_config()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--parts", default="digits,convnet")
  parser.add_argument("--cnn_epochs", type=int, default=1)
  parser.add_argument("--cnn_train_scale", type=float, default=1.0,
                      help="fraction of the 4000 + 400 CIFAR-shaped training images")
  parser.add_argument("--checkpoint_every_epochs", type=int, default=None,
                      help="passed to both sides as --config.checkpoint_every_epochs "
                           "(default: the config's)")
  parser.add_argument("--cnn_member_batch", type=int, default=0,
                      help="the ConvNet sweep's --member_batch (0: all members vmapped)")
  parser.add_argument("--compilation_cache", action="store_true",
                      help="both sides keep compiled programs in a cache (empty at the "
                           "start): the sequential runs after the first reuse them, as "
                           "scripts/launch_sweep.py's commands do")
  parser.add_argument("--sweep_rounds", type=int, default=3,
                      help="digits: times the sweep is run, interleaved with the "
                           "sequential runs; the ratio takes its median")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  env = repo_env()
  env.pop("XLA_FLAGS", None)  # No forced device count, as a user's CPU run.
  cfg = "--config=configs/digits_poly.py"
  ckpt = ([] if args.checkpoint_every_epochs is None else
          [f"--config.checkpoint_every_epochs={args.checkpoint_every_epochs}"])
  from polyjax import wandb_logger  # Both sides log as the environment says.
  out = {"host_cpus": os.cpu_count(), "load_before": os.getloadavg(),
         "wandb_mode": wandb_logger.resolve_mode(None),
         "checkpoint_every_epochs": args.checkpoint_every_epochs,
         "compilation_cache": args.compilation_cache}
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    if "digits" in args.parts:
      out["digits_mlp_4lr_x_4seed"] = bench(
          "digits", lambda cmd: [PY, "-m", f"polyjax.{cmd}"], [cfg] + ckpt,
          {"lr": [0.01, 0.03, 0.1, 0.3], "seed": [0, 1, 2, 3]}, env, root,
          compilation_cache=args.compilation_cache, sweep_rounds=args.sweep_rounds)
      print(json.dumps(out), flush=True)
    if "convnet" in args.parts:
      scale_env = {**env, "CIFAR_SHAPED_SCALE": str(args.cnn_train_scale)}
      out["convnet_cifar_shaped_10_seeds"] = bench(
          "convnet", lambda cmd: [PY, "benchmarks/cifar_shaped.py", cmd],
          [cfg, "--config.data.name=cifar_shaped", "--config.model.name=convnet",
           f"--config.num_epochs={args.cnn_epochs}", "--config.eval_batch_size=200",
           # Every member trains the whole epoch on both sides at this rate; at the
           # config's 0.02, 2-4 of the 10 diverged within the first epoch (which ones
           # differs between the sides, by last-bit rounding), and a member that
           # stops early does less of the work being timed.
           "--config.lr=0.005"] + ckpt,
          {"seed": list(range(10))}, scale_env, root,
          sweep_flags=(f"--member_batch={args.cnn_member_batch}",),
          compilation_cache=args.compilation_cache)
      out["convnet_cifar_shaped_10_seeds"].update(
          epochs=args.cnn_epochs, train_images=int(4400 * args.cnn_train_scale),
          member_batch=args.cnn_member_batch)
  out["load_after"] = os.getloadavg()
  write_json(out, args.out)


if __name__ == "__main__":
  main()
