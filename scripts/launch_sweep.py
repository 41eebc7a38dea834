"""Expands a grid into one `python -m polyjax.main` command per point, for runs that
are each a job of their own (several processes or hosts per run), or for wandb agents.

    python scripts/launch_sweep.py --config=configs/digits_poly.py --workdir=DIR \\
        --grid=lr=0.01,0.1 --grid=seed=0,1,2 [--config.<field>=<value> ...] \\
        [--mode=print|wandb] [--wandb_file=sweep.yaml]

The grid is read as by polyjax.sweep (`--grid` flags, else the config file's
`sweep()`), and each point gets the same run directory name, `DIR/<field>=<value>,...`,
so the two ways of running a grid produce the same tree. To train a grid here or on
a SLURM cluster, use `python -m polyjax.sweep` (`--launcher=local|slurm`,
`--side_by_side=K`): it stacks what can share a program and schedules the rest.
- print (default): prints the commands, one a line, for a cluster scheduler or
  `xargs -P`. Every command keeps its compiled programs in `--compilation_cache_dir`
  (default `DIR/.compilation_cache`), where the points after the first find them.
- wandb: writes a wandb sweep file (method grid) for `wandb sweep FILE` and agents;
  each agent run gets a fresh run directory under runs/.
"""

from __future__ import annotations

import argparse
import pathlib
import shlex
import sys

import yaml

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
  parameters = {f"config.{field}": {"values": list(dict.fromkeys(
      config_lib.get_field(cfg, field) for _, cfg in members))} for field in grid[0]}
  sweep = {"name": name, "method": "grid",
           "command": ["${env}", "python", "-m", "polyjax.main", f"--config={config_path}",
                       *overrides, "${args}"],
           "parameters": parameters}
  return yaml.safe_dump(sweep, sort_keys=False)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description="Expands a grid into polyjax.main commands.",
      epilog="Other --config.<field>=<value> arguments are passed to every command.")
  parser.add_argument("--config", required=True)
  parser.add_argument("--workdir", default="runs/sweep")
  parser.add_argument("--grid", action="append", default=[])
  parser.add_argument("--mode", choices=("print", "wandb"), default="print")
  parser.add_argument("--wandb_file", default="sweep.yaml")
  parser.add_argument(
      "--compilation_cache_dir", default=None,
      help="passed to every command: compiled programs are kept there and reused by "
           "the next points (default: WORKDIR/.compilation_cache; '' for none)")
  args, rest = parser.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    parser.error(f"unexpected arguments: {' '.join(bad)}")
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
  for _, argv_ in cmds:
    print(shlex.join(argv_))
  return 0


if __name__ == "__main__":
  sys.exit(main())
