"""Sweep grids: every point (a *member*) of a hyperparameter grid as a config, and
the members grouped by the program they can share.

Members that differ only in the fields of `STACKABLE` share array shapes and
program, so they train together as one stacked program (`polyjax.programs`); any
other field splits the grid into groups that run one after another.

A config file may define `sweep()` returning its grid: a dict field -> list of
values (the product of the lists), or a list of such dicts (their union).
`--grid` flags replace it.
"""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any, Mapping, Sequence

import ml_collections

from polyjax import config as config_lib
from polyjax import programs, run_dir

# Fields whose members can share one compiled program, and where each member's
# value lives in it. Anything not listed here splits the grid into groups.
STACKABLE: dict[str, str] = {
    "seed": "the stacked train state (initial parameters, step rng); data order too "
            "unless data.order_seed is set",
    "data.order_seed": "per-member (steps, batch) index arrays",
    "lr": "the stacked optimizer state (optax.inject_hyperparams)",
    "momentum": "the stacked optimizer state (optax.inject_hyperparams)",
    "weight_decay": "the stacked optimizer state (optax.inject_hyperparams)",
    "loss.alpha": "a per-member traced loss parameter (loss.name 'poly' or 'ce')",
    "loss.beta": "a per-member traced loss parameter (loss.name 'poly' or 'ce')",
    "method.stage1_dir": "per-member example weights (weighting.source, JTT) or initial "
                         "state and weight decay (DFR); the stage-1 runs' data is the "
                         "members' own (stage1.check_stage1_dir)",
    "weighting.exponent": "per-member example weights ('reweighted') or sampling "
                          "probabilities ('resampled'); unused by 'none' and 'dro' "
                          "(not stackable for 'undersampled': it changes the data; nor "
                          "with weighting.anneal, whose weights are constants of the program)",
}
# Fields that split the grid although a stack could hold them, because they are
# constants of the program: the loss name, weighting.mode (the reduction, e.g.
# group DRO, is one function for the whole stack; DRO's probabilities are per
# member in the stacked state), weighting.adv_probs_lr, and the lr schedule
# (lr_schedule, warmup_epochs, lr_step_*: one `lr_factor` multiplies each
# member's own base lr).
# Loss fields are traced only for losses that use them as plain jnp values
# (`programs.TRACED_LOSS_FIELDS`).
# In these modes the exponent changes per-member weights or sampling probabilities
# (or nothing); in 'undersampled' it changes the training split.
_EXPONENT_STACKABLE_MODES = ("none", "reweighted", "resampled", "dro")

Grid = list[dict[str, list[Any]]]


def _field_type(config: ml_collections.ConfigDict, field: str) -> type:
  try:
    kind = config_lib.field_type(config, field)
  except config_lib.ConfigError:
    raise config_lib.ConfigError(f"grid field {field!r} is not a config field") from None
  if kind not in (int, float, str, bool):
    raise config_lib.ConfigError(
        f"grid field {field!r} has type {kind.__name__}; grids take int, float, str or bool")
  return kind


def _coerce(config, field: str, value: Any) -> Any:
  kind = _field_type(config, field)
  try:
    if kind is bool and isinstance(value, str):
      if value.lower() not in ("true", "false"):
        raise ValueError(value)
      return value.lower() == "true"
    if kind is int and isinstance(value, float) and not value.is_integer():
      raise ValueError(value)
    return kind(value)
  except ValueError:
    raise config_lib.ConfigError(
        f"grid value {value!r} of config.{field} is not a {kind.__name__}") from None


def parse_grid_flags(flags: Sequence[str]) -> dict[str, list[str]]:
  """`["lr=0.01,0.1", "seed=0,1"]` -> `{"lr": ["0.01", "0.1"], "seed": ["0", "1"]}`."""
  grid: dict[str, list[str]] = {}
  for flag in flags:
    field, sep, values = flag.partition("=")
    field = field.strip().removeprefix("config.")
    if not sep or not field or not values.strip():
      raise config_lib.ConfigError(f"--grid={flag!r} must look like field=v1,v2,...")
    if field in grid:
      raise config_lib.ConfigError(f"--grid names config.{field} twice")
    grid[field] = [v.strip() for v in values.split(",")]
  return grid


def config_sweep(config_spec: str) -> Grid | None:
  """The grid the config file's `sweep()` returns, as a list of dicts (None: no
  `sweep`). `config_spec` is `--config`'s value: a path, or 'path:arg' for a
  parameterised file, whose `sweep(arg)` takes the same argument as `get_config`."""
  path, arg = config_lib.split_config_spec(config_spec)
  module = config_lib.load_config_module(path, "_polyjax_sweep_config")
  if not hasattr(module, "sweep"):
    return None
  grid = module.sweep() if arg is None else module.sweep(arg)
  return [grid] if isinstance(grid, Mapping) else list(grid)


def expand(config: ml_collections.ConfigDict, grid: Grid | Mapping[str, Sequence[Any]]
           ) -> list[tuple[str, ml_collections.ConfigDict]]:
  """Every member of `grid` as (name, config); names are unique, in grid order.

  The name lists the fields that vary across the whole grid, e.g. 'lr=0.1,seed=2'.
  Every member config is validated; a bad one raises ConfigError before any work.
  """
  grids = [grid] if isinstance(grid, Mapping) else list(grid)
  points: list[dict[str, Any]] = []
  for g in grids:
    fields = list(g)
    values = [[_coerce(config, f, v) for v in g[f]] for f in fields]
    for combo in itertools.product(*values):
      points.append(dict(zip(fields, combo)))
  if not points:
    raise config_lib.ConfigError("the sweep grid is empty")
  varying = [f for f in dict.fromkeys(f for p in points for f in p)
             if len({repr(p.get(f)) for p in points}) > 1 or len(points) == 1]
  out, seen = [], set()
  for point in points:
    member = copy.deepcopy(config)
    for field, value in point.items():
      config_lib.set_field(member, field, value)
    name = ",".join(f"{f}={point[f]}" for f in varying if f in point) or "member"
    if name in seen:
      continue  # The union of several grids may name a point twice.
    seen.add(name)
    out.append((name, member))
  return out


def stackable_fields(config: ml_collections.ConfigDict) -> set[str]:
  """The fields of `STACKABLE` that members of `config`'s kind can differ in and
  still share a program (loss parameters and the weighting exponent only for some
  losses and modes)."""
  stackable = set(STACKABLE)
  if config.loss.name not in programs.LOSSES_WITH_TRACED_FIELDS:
    stackable -= {f"loss.{f}" for f in programs.TRACED_LOSS_FIELDS}
  if (config.weighting.mode not in _EXPONENT_STACKABLE_MODES
      or config.weighting.anneal != "none"):  # Annealed weights: a constant of the program.
    stackable.discard("weighting.exponent")
  return stackable


def group_key(config: ml_collections.ConfigDict) -> str:
  """Members with equal keys can be stacked into one program."""
  flat = config_lib.flatten(config)
  for field in stackable_fields(config):
    flat.pop(field)
  return json.dumps(run_dir.jsonable(flat), sort_keys=True)


def groups(members: list[tuple[str, ml_collections.ConfigDict]]
           ) -> list[list[tuple[str, ml_collections.ConfigDict]]]:
  """Members split into stackable groups, in order of first appearance."""
  out: dict[str, list] = {}
  for name, cfg in members:
    out.setdefault(group_key(cfg), []).append((name, cfg))
  return list(out.values())


def describe_groups(members: list[tuple[str, ml_collections.ConfigDict]],
                    fields: Sequence[str], *, most: int = 8) -> list[str]:
  """What the sweep will train, as lines for the user: which of the grid's `fields`
  split it into separate programs (groups trained one after another), which are
  stacked within a program, and each group's number of members (the first `most`
  groups by name)."""
  varying = [f for f in fields if len({repr(config_lib.get_field(c, f)) for _, c in members}) > 1]
  split = [f for f in varying if any(f not in stackable_fields(c) for _, c in members)]
  stacked = [f for f in varying if f not in split]
  # A loss parameter is stacked for some losses and splits for others.
  partly = {f for f in split if any(f in stackable_fields(c) for _, c in members)}
  found = groups(members)
  n = len(members)
  if len(found) == 1:
    return [f"{n} member{'s' if n > 1 else ''} in one compiled program"
            + (f" (stacked: {', '.join(stacked)})" if stacked else "")]
  named = ", ".join(f + (" (for some members)" if f in partly else "") for f in split)
  lines = [f"{n} members in {len(found)} groups, one compiled program each, trained one "
           f"after another: split by {named} (a field outside STACKABLE changes the "
           "program)" + (f"; stacked within a group: {', '.join(stacked)}" if stacked
                         else "")]
  for number, group in enumerate(found[:most], 1):
    values = ",".join(f"{f}={config_lib.get_field(group[0][1], f)}" for f in split)
    lines.append(f"group {number}/{len(found)} ({values}): {len(group)} "
                 f"member{'s' if len(group) > 1 else ''}")
  if len(found) > most:
    rest = found[most:]
    lines.append(f"... and {len(rest)} more groups ({sum(map(len, rest))} members)")
  return lines


