"""Expands a grid into one `python -m polyjax.main` command per point, for runs too large
to stack into one `polyjax.sweep` program.

    python scripts/launch_sweep.py --config=configs/digits_poly.py --workdir=DIR \\
        --grid=lr=0.01,0.1 --grid=seed=0,1,2 [--config.<field>=<value> ...] \\
        [--mode=print|local|wandb] [--parallel=N] [--wandb_file=sweep.yaml]

The grid is read as by polyjax.sweep (`--grid` flags, else the config file's
`sweep()`), and each point gets the same run directory name, `DIR/<field>=<value>,...`,
so the two ways of running a grid produce the same tree.
- print (default): prints the commands, one a line, for a cluster scheduler or xargs.
- local: runs them here, `--parallel` at a time; points whose summary.json says
  completed or diverged are skipped, so re-running finishes an interrupted grid.
  Exits 1 if any command failed (a diverged run exits 1 too).
In print and local modes every command keeps its compiled programs in
`--compilation_cache_dir` (default `DIR/.compilation_cache`), where the points
after the first find them: a digits run takes about 6 s instead of 8.
- wandb: writes a wandb sweep file (method grid) for `wandb sweep FILE` and agents;
  each agent run gets a fresh run directory under runs/.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from polyjax import config as config_lib  # noqa: E402
from polyjax import grid as grid_lib  # noqa: E402


def _load_config(config_spec: str):
  """`get_config()` of a config file, or `get_config(arg)` of 'path:arg'."""
  path, arg = config_lib.split_config_spec(config_spec)
  module = config_lib.load_config_module(path, "_launch_config")
  return module.get_config() if arg is None else module.get_config(arg)


def _value(v) -> str:
  return str(v)


def commands(config_path: str, workdir: str, grid: grid_lib.Grid, overrides: list[str],
             python: str = sys.executable, compilation_cache_dir: str | None = None
             ) -> list[tuple[str, list[str]]]:
  """(member name, argv) for every point of the grid."""
  members = grid_lib.expand(_load_config(config_path), grid)
  fields = list(dict.fromkeys(f for g in grid for f in g))
  cache = [f"--compilation_cache_dir={compilation_cache_dir}"] if compilation_cache_dir else []
  out = []
  for name, cfg in members:
    point = [f"--config.{f}={_value(config_lib.get_field(cfg, f))}" for f in fields]
    out.append((name, [python, "-m", "polyjax.main", f"--config={config_path}",
                       f"--workdir={pathlib.Path(workdir) / name}", *cache, *overrides,
                       *point]))
  return out


def wandb_sweep_file(config_path: str, grid: grid_lib.Grid, overrides: list[str],
                     name: str) -> str:
  """A wandb sweep file (YAML) whose runs are `python -m polyjax.main` with the grid."""
  if len(grid) != 1:
    raise config_lib.ConfigError("a wandb sweep file holds one product grid; "
                                 f"this grid is a union of {len(grid)}")
  members = grid_lib.expand(_load_config(config_path), grid)  # Validates fields and types.
  lines = [f"name: {json.dumps(name)}", "method: grid", "command:", "  - ${env}",
           "  - python", "  - -m", "  - polyjax.main",
           f"  - {json.dumps('--config=' + config_path)}"]
  lines += [f"  - {json.dumps(o)}" for o in overrides]
  lines += ["  - ${args}", "parameters:"]
  for field in grid[0]:
    values = list(dict.fromkeys(config_lib.get_field(cfg, field) for _, cfg in members))
    lines += [f"  config.{field}:", f"    values: {json.dumps(values)}"]
  return "\n".join(lines) + "\n"


def _finished(workdir: pathlib.Path) -> bool:
  summary = workdir / "summary.json"
  return summary.exists() and json.loads(summary.read_text()).get("status") in (
      "completed", "diverged")


def run_local(cmds: list[tuple[str, list[str]]], *, parallel: int) -> int:
  """Runs the commands `parallel` at a time; returns how many failed."""
  todo = []
  for name, argv in cmds:
    workdir = pathlib.Path(next(a for a in argv if a.startswith("--workdir="))
                           .split("=", 1)[1])
    if _finished(workdir):
      print(f"launch_sweep: {name} already finished; skipped", flush=True)
    else:
      todo.append((name, argv))
  running: list[tuple[str, subprocess.Popen]] = []
  failed = 0
  while todo or running:
    while todo and len(running) < parallel:
      name, argv = todo.pop(0)
      print(f"launch_sweep: start {name}: {shlex.join(argv)}", flush=True)
      running.append((name, subprocess.Popen(argv, cwd=REPO)))
    time.sleep(0.2)
    for name, proc in list(running):
      if proc.poll() is not None:
        running.remove((name, proc))
        print(f"launch_sweep: {name} exited with {proc.returncode}", flush=True)
        failed += proc.returncode != 0
  return failed


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description="Expands a grid into polyjax.main commands.",
      epilog="Other --config.<field>=<value> arguments are passed to every command.")
  parser.add_argument("--config", required=True)
  parser.add_argument("--workdir", default="runs/sweep")
  parser.add_argument("--grid", action="append", default=[])
  parser.add_argument("--mode", choices=("print", "local", "wandb"), default="print")
  parser.add_argument("--parallel", type=int, default=1)
  parser.add_argument("--wandb_file", default="sweep.yaml")
  parser.add_argument(
      "--compilation_cache_dir", default=None,
      help="passed to every command: compiled programs are kept there and reused by "
           "the next points (default: WORKDIR/.compilation_cache; '' for none)")
  args, rest = parser.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    parser.error(f"unexpected arguments: {' '.join(bad)}")
  if args.parallel < 1:
    parser.error("--parallel must be >= 1")
  try:
    grid = ([grid_lib.parse_grid_flags(args.grid)] if args.grid
            else grid_lib.config_sweep(args.config))
    if grid is None:
      raise config_lib.ConfigError(
          "no grid: pass --grid=field=v1,v2 or define sweep() in the config file")
    if args.mode == "wandb":
      text = wandb_sweep_file(args.config, grid, rest, pathlib.Path(args.workdir).name)
      pathlib.Path(args.wandb_file).write_text(text)
      print(f"launch_sweep: wrote {args.wandb_file}; start it with "
            f"`wandb sweep {args.wandb_file}` and `wandb agent <sweep id>`")
      return 0
    cache = (str(pathlib.Path(args.workdir) / ".compilation_cache")
             if args.compilation_cache_dir is None else args.compilation_cache_dir)
    cmds = commands(args.config, args.workdir, grid, rest, compilation_cache_dir=cache)
  except config_lib.ConfigError as e:
    print(f"launch_sweep: error: {e}", file=sys.stderr)
    return 2
  if args.mode == "print":
    for _, argv_ in cmds:
      print(shlex.join(argv_))
    return 0
  failed = run_local(cmds, parallel=args.parallel)
  print(f"launch_sweep: {len(cmds) - failed} of {len(cmds)} commands succeeded")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
