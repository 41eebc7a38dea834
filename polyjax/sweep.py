"""Sweeps: every point of a hyperparameter grid, trained as few compiled programs as possible.

    python -m polyjax.sweep --config=configs/digits_poly.py --workdir=DIR \\
        --grid=lr=0.01,0.1 --grid=seed=0,1,2 [--config.<field>=<value> ...]

Each point of the grid (a *member*) is the base config with some fields changed.
Members that differ only in the fields of `STACKABLE` share array shapes and
program, so they are trained together: their train states are stacked along a
leading member axis and one `vmap`ped, jitted epoch updates all of them. The
stack is split over the devices (`member_mesh`: each device trains its own
members, with no communication between them; each member's batch is split over
the devices left over, as in a single run), and on a CPU the sweep makes one
device per core for this (`--cpu_devices`). `--member_batch=N`: N members side by
side at a time on each device, the rest in turn inside the same program, to bound
memory.
Any other field (model, dataset, batch size, loss name, epochs, ...) splits the
grid into groups that run one after another. Before training, the sweep says which
fields split its grid and how many members each group has (`describe_groups`), and
when a group leaves CPU cores or devices idle, how to use them (`idle_note`); while
training, each group shows one progress bar, or plain lines when stdout is not a
terminal (`polyjax.progress`, `--log_every`).

Every member writes an ordinary run directory, `DIR/<field>=<value>,...`, with the
same files `polyjax.main` writes for that member's config (config.json,
metrics.jsonl with `train/lr`, summary.json with the best epoch and its test
values, checkpoints/ with the latest and the best checkpoint and their meta), so
analysis treats members as ordinary runs: the end of each epoch is
`train.record_epoch`, as in `train.train_and_evaluate`. Each member logs to its own
wandb run (and `wandb.json`), as `polyjax.main` would, grouped under the sweep
directory's name. A member whose objective becomes NaN/Inf is marked diverged (its
summary says so, as a single run's would); from that step on its updates are
masked, so it keeps its last good state and the others go on. A member whose train
state becomes non-finite is marked diverged too. Running the same command again
resumes: finished and diverged members are skipped, the others restore their
latest checkpoint (step = completed epochs) and are re-stacked; a member
directory whose config differs in a field that matters (`config.resume_changes`)
is refused before anything is written. SIGTERM/SIGINT stop every member after the
current epoch with a checkpoint and status 'interrupted', as for a single run.

A config file may define `sweep()` returning its grid: a dict field -> list of
values (the product of the lists), or a list of such dicts (their union).
`--grid` flags replace it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.util
import itertools
import json
import math
import os
import pathlib
import shutil
import sys
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from polyjax import (checkpointing, cli, data, distributed, lifecycle, losses, progress,
                     run_dir, steps, train, wandb_logger, weighting)
from polyjax import placement, xla_runtime
from polyjax import config as config_lib
from polyjax.data.splits import with_weights

# Fields whose members can share one compiled program, and where each member's
# value lives in it. Anything not listed here splits the grid into groups.
MEMBERS_AXIS = "members"  # The mesh axis that members are split along (`member_mesh`).

STACKABLE: dict[str, str] = {
    "seed": "the stacked train state (initial parameters, step rng); data order too "
            "unless data.order_seed is set",
    "data.order_seed": "per-member (steps, batch) index arrays",
    "lr": "the stacked optimizer state (optax.inject_hyperparams)",
    "momentum": "the stacked optimizer state (optax.inject_hyperparams)",
    "weight_decay": "the stacked optimizer state (optax.inject_hyperparams)",
    "loss.alpha": "a per-member traced loss parameter (loss.name 'poly' or 'ce')",
    "loss.beta": "a per-member traced loss parameter (loss.name 'poly' or 'ce')",
    "weighting.exponent": "per-member example weights ('reweighted') or sampling "
                          "probabilities ('resampled'); unused by 'none' and 'dro' "
                          "(not stackable for 'undersampled': it changes the data)",
}
# Fields that split the grid although a stack could hold them, because they are
# constants of the program: the loss name, weighting.mode (the reduction, e.g.
# group DRO, is one function for the whole stack; DRO's probabilities are per
# member in the stacked state), weighting.adv_probs_lr, and the lr schedule
# (lr_schedule, warmup_epochs, lr_step_*: one `lr_factor` multiplies each
# member's own base lr).
# Loss fields are traced only for losses that use them as plain jnp values.
_TRACED_LOSS_FIELDS = ("alpha", "beta")
_LOSSES_WITH_TRACED_FIELDS = ("poly", "ce")
# In these modes the exponent changes per-member weights or sampling probabilities
# (or nothing); in 'undersampled' it changes the training split.
_EXPONENT_STACKABLE_MODES = ("none", "reweighted", "resampled", "dro")

Grid = list[dict[str, list[Any]]]


# ----------------------------------------------------------------------------
# Grids and members.


def _field_type(config: ml_collections.ConfigDict, field: str) -> type:
  *parents, leaf = field.split(".")
  node = config
  for p in parents:
    if not isinstance(node, ml_collections.ConfigDict) or p not in node:
      raise config_lib.ConfigError(f"grid field {field!r} is not a config field")
    node = node[p]
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    raise config_lib.ConfigError(f"grid field {field!r} is not a config field")
  kind = node.get_type(leaf)
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


def config_sweep(config_path: str) -> Grid | None:
  """The grid the config file's `sweep()` returns, as a list of dicts (None: no `sweep`)."""
  spec = importlib.util.spec_from_file_location("_polyjax_sweep_config", config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "sweep"):
    return None
  grid = module.sweep()
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
      *parents, leaf = field.split(".")
      node = member
      for p in parents:
        node = node[p]
      node[leaf] = value
    name = ",".join(f"{f}={point[f]}" for f in varying if f in point) or "member"
    if name in seen:
      continue  # The union of several grids may name a point twice.
    seen.add(name)
    out.append((name, member))
  return out


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  """The value of a dotted field, e.g. 'loss.alpha'."""
  node = config
  for p in field.split("."):
    node = node[p]
  return node


def stackable_fields(config: ml_collections.ConfigDict) -> set[str]:
  """The fields of `STACKABLE` that members of `config`'s kind can differ in and
  still share a program (loss parameters and the weighting exponent only for some
  losses and modes)."""
  stackable = set(STACKABLE)
  if config.loss.name not in _LOSSES_WITH_TRACED_FIELDS:
    stackable -= {f"loss.{f}" for f in _TRACED_LOSS_FIELDS}
  if config.weighting.mode not in _EXPONENT_STACKABLE_MODES:
    stackable.discard("weighting.exponent")
  return stackable


def group_key(config: ml_collections.ConfigDict) -> str:
  """Members with equal keys can be stacked into one program."""
  c = config.to_dict()
  for field in stackable_fields(config):
    *parents, leaf = field.split(".")
    node = c
    for p in parents:
      node = node[p]
    node.pop(leaf)
  return json.dumps(run_dir.jsonable(c), sort_keys=True)


def groups(members: list[tuple[str, ml_collections.ConfigDict]]
           ) -> list[list[tuple[str, ml_collections.ConfigDict]]]:
  """Members split into stackable groups, in order of first appearance."""
  out: dict[str, list] = {}
  for name, cfg in members:
    out.setdefault(group_key(cfg), []).append((name, cfg))
  return list(out.values())


# ----------------------------------------------------------------------------
# The stacked program.


@jax.jit  # One program for all the leaves (eager stacking compiled one per shape).
def _tree_stack(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def _is_key(a) -> bool:
  return jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)


def member_mesh(devices: Sequence[Any], *, num_members: int, batch_size: int
                ) -> jax.sharding.Mesh:
  """The devices of a group of `num_members` stacked members, as a (members, data) mesh.

  Members are split over as many devices as divide their number (gcd with the
  device count): each device trains its own members, with no communication
  between them. Each member's batch is split over as many of the remaining devices
  as divide `batch_size`; devices beyond (members x data) are left out.
  """
  members = math.gcd(num_members, len(devices))
  per_member = math.gcd(len(devices) // members, batch_size)
  # In the order given (a run's mesh is already laid out for the topology); a subset
  # of devices may not form the physical mesh `jax.make_mesh` would ask for.
  used = np.asarray(list(devices)[:members * per_member]).reshape(members, per_member)
  return jax.sharding.Mesh(used, (MEMBERS_AXIS, placement.DATA_AXIS),
                           axis_types=(jax.sharding.AxisType.Auto,) * 2)


def over_members(fn, *, split: int = 1, member_batch: int | None = None):
  """`fn` over the members (the leading axis of every argument), which are split
  into `split` equal blocks along the mesh's members axis (each device holds its
  block). Within a block: `jax.vmap`, or with `member_batch`, `lax.map` over groups
  of that many vmapped members, so that a device holds the activations of
  `member_batch` members at a time, not of its whole block."""
  if member_batch:
    inner = lambda *args: jax.lax.map(lambda a: fn(*a), args, batch_size=member_batch)
  else:
    inner = jax.vmap(fn)
  outer = jax.vmap(inner, spmd_axis_name=MEMBERS_AXIS)

  def call(*args):
    blocks = jax.tree.map(lambda a: a.reshape(split, a.shape[0] // split, *a.shape[1:]),
                          args)
    return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), outer(*blocks))

  return call


def make_sweep_epoch(exp: train.Experiment, *, mesh: jax.sharding.Mesh,
                     loss_config: Mapping[str, Any],
                     reduction: weighting.Reduction = weighting.weighted_reduction,
                     member_batch: int | None = None):
  """Jitted `(state_M, data, weight_MxN, idx_SxMxB, loss_params_M, alive_M)
  -> (state_M, alive_M, objective_MxS, finite_M)`: one epoch of every member in one
  call; `finite_M` says whether each member's state is finite at its end.

  Each member's step is `steps.make_train_step` with its own traced loss
  parameters and the group's `reduction` (group DRO's probabilities live in each
  member's state); a step whose objective is not finite, and every step after it,
  leaves that member's state unchanged (`alive_M` turns False). `mesh` is the
  group's `member_mesh`: the stacked state and per-member inputs are split along
  its members axis, each member's batch along its data axis.
  """
  sh = placement.Shardings(mesh)
  split = mesh.shape[MEMBERS_AXIS]
  member_loss = _member_loss(exp, loss_config)
  tx = _member_tx(exp)

  def member_step(state, batch, loss_params, alive):
    loss_fn = member_loss(loss_params)
    new, obj = steps.make_train_step(model_def=exp.model_def, loss_fn=loss_fn, tx=tx,
                                     reduction=reduction,
                                     preprocess=exp.dataset.preprocess)(state, batch)
    ok = alive & jnp.isfinite(obj)
    new = jax.tree.map(lambda n, o: n if _is_key(n) else jnp.where(ok, n, o), new, state)
    return new, obj, ok

  def train_epoch(state_M, data, weight_MxN, idx_SxMxB, loss_params_M, alive_M):

    def one(state, weight_N, idx_B, loss_params, alive):
      batch = {k: a[idx_B] for k, a in data.items()}
      batch["weight"] = weight_N[idx_B]
      batch = jax.lax.with_sharding_constraint(batch, sh.batch)
      return member_step(state, batch, loss_params, alive)

    def body(carry, idx_MxB):
      state_M, alive_M = carry
      state_M, obj_M, alive_M = over_members(one, split=split, member_batch=member_batch)(
          state_M, weight_MxN, idx_MxB, loss_params_M, alive_M)
      return (state_M, alive_M), obj_M

    (state_M, alive_M), obj_SxM = jax.lax.scan(body, (state_M, alive_M), idx_SxMxB)
    return state_M, alive_M, obj_SxM.T, _finite_M(state_M)

  rep, mem = sh.replicated, members_sharding(mesh)
  members_batches = NamedSharding(mesh, P(None, MEMBERS_AXIS, placement.DATA_AXIS))
  return jax.jit(train_epoch, in_shardings=(mem, rep, mem, members_batches, mem, mem),
                 out_shardings=(mem, mem, rep, rep), donate_argnums=(0,))


def make_sweep_eval(exp: train.Experiment, *, mesh: jax.sharding.Mesh,
                    loss_config: Mapping[str, Any], member_batch: int | None = None):
  """Jitted `(state_M, packed, weight_Mx..., loss_params_M) -> counts_MxS`: every
  split of `steps.pack_for_eval`'s arrays, for every member.

  Each member runs `steps.make_eval_counts` with its own loss parameters and
  example weights; the counts come back with leading member and split axes
  (replicated). `mesh` as for `make_sweep_epoch`.
  """
  sh = placement.Shardings(mesh)
  split = mesh.shape[MEMBERS_AXIS]
  member_loss = _member_loss(exp, loss_config)

  def eval_member(state, packed, weight, loss_params):
    loss_fn = member_loss(loss_params)
    eval_counts = steps.make_eval_counts(model_def=exp.model_def, loss_fn=loss_fn,
                                         num_groups=exp.dataset.num_groups,
                                         shardings=sh,
                                         preprocess=exp.dataset.preprocess)
    return eval_counts(state, {**packed, "weight": weight})

  def eval_members(state_M, packed, weight_M, loss_params_M):
    return over_members(lambda s, w, lp: eval_member(s, packed, w, lp), split=split,
                        member_batch=member_batch)(state_M, weight_M, loss_params_M)

  mem = members_sharding(mesh)
  return jax.jit(eval_members, in_shardings=(
      mem, sh.stacked_batches, NamedSharding(mesh, P(MEMBERS_AXIS, None, placement.DATA_AXIS)),
      mem), out_shardings=sh.replicated)


def members_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Stacked per-member arrays: the leading (member) axis split along the members axis."""
  return NamedSharding(mesh, P(MEMBERS_AXIS))


def _member_loss(exp: train.Experiment, loss_config: Mapping[str, Any]):
  """`loss_params -> loss_fn`: the group's loss (`loss_config`, with its name) with
  one member's traced parameters (e.g. alpha) and the training split's counts."""
  loss_config = dict(loss_config)
  name = loss_config.pop("name")
  counts = dict(class_counts=exp.dataset.train_class_counts,
                group_counts=exp.dataset.train_group_counts)
  return lambda loss_params: losses.get_loss(name, **{**loss_config, **loss_params},
                                             **counts)


def _member_tx(exp: train.Experiment):
  """An optimizer with the members' structure and (shared) lr schedule; its
  hyperparameters are read from each member's (stacked) optimizer state, never
  from this object."""
  from polyjax import train_state
  return train_state.make_optimizer(lr=1.0, momentum=0.0, weight_decay=0.0,
                                    lr_factor=exp.lr_factor)


def _finite_M(state_M) -> jax.Array:
  """(M,) whether every floating-point array of each member's state is finite
  (`lifecycle.is_finite`, per member)."""
  leaves = [x for x in jax.tree.leaves(state_M) if not _is_key(x)]
  return lifecycle.finite_rows(leaves, leaves[0].shape[0])


# ----------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class Member:
  name: str
  config: ml_collections.ConfigDict
  run: run_dir.RunDir
  exp: train.Experiment | None = None
  state: Any = None  # Its own train state until stacked with the group's.
  checkpoints: checkpointing.Checkpoints | None = None
  start_epoch: int = 0
  best_epoch: int | None = None
  best_value: float | None = None
  prior_seconds: float = 0.0  # wall_seconds of the runs this one resumes.
  resumes: list = dataclasses.field(default_factory=list)
  changed: list = dataclasses.field(default_factory=list)
  steps_done: int = 0
  record: dict[str, Any] = dataclasses.field(default_factory=dict)  # train.run_record.
  values: dict[str, float] = dataclasses.field(default_factory=dict)
  summary: dict[str, Any] = dataclasses.field(default_factory=dict)
  wandb: wandb_logger.WandbLogger | None = None  # While it trains.


def _prepare(member: Member) -> bool:
  """Checks a member's run directory; returns False if the member is already
  finished (completed or diverged: not trained again).

  Raises ConfigError if the directory holds a run whose config differs in a field
  that matters for resuming (`config.resume_changes`), as `polyjax.main` does.
  """
  saved = member.run.read_config()
  train.resume_check(member.config, saved, str(member.run.path), allow_change=False)
  summary = member.run.read_summary()
  if saved is not None and summary and summary.get("status") in ("completed", "diverged"):
    member.summary = summary
    return False
  return True


class _HostStack:
  """The members' states in host memory (`checkpointing.host_copy` of the stack),
  copied once per epoch and only if a member's state is saved or held then; a
  member's state is a copy of its row (a view would keep the epoch's whole stack
  alive while that member's best is held)."""

  def __init__(self, state_M):
    self._state_M, self._host = state_M, None

  def member(self, m: int) -> Any:
    if self._host is None:
      self._host = checkpointing.host_copy(self._state_M)
    return jax.tree.map(lambda a: a[m].copy(), self._host)


def _train_group(members: list[Member], *, stop: lifecycle.StopSignals,
                 member_batch: int | None = None, label: str = "sweep",
                 log_every: int = 0) -> None:
  """Trains members that share a program and a start epoch, together, and writes
  each one's rows, checkpoints and summary as `train.train_and_evaluate` would.
  Shows one progress bar (`label`: which group) or the plain lines, as
  `progress.Progress` decides from stdout and `log_every`."""
  exp0 = members[0].exp
  cfg0 = members[0].config
  num_epochs, eval_every = cfg0.num_epochs, cfg0.eval_every_epochs
  ds = exp0.dataset
  n_train = len(ds.train)
  loss_config = cfg0.loss.to_dict()
  traced = (_TRACED_LOSS_FIELDS if cfg0.loss.name in _LOSSES_WITH_TRACED_FIELDS else ())
  loss_params_M = {f: np.asarray([m.config.loss[f] for m in members], np.float32)
                   for f in traced}
  for f in traced:
    loss_config.pop(f)
  loss_config["name"] = cfg0.loss.name

  mesh = member_mesh(list(exp0.shardings.mesh.devices.flat), num_members=len(members),
                     batch_size=cfg0.batch_size)
  sh = placement.Shardings(mesh)
  mem = members_sharding(mesh)
  print(f"polyjax.sweep: {len(members)} members on {mesh.size} "
        f"{mesh.devices.flat[0].platform.upper()} device{'s' if mesh.size > 1 else ''} "
        f"(members axis {mesh.shape[MEMBERS_AXIS]} x data axis "
        f"{mesh.shape[placement.DATA_AXIS]})", flush=True)
  state_M = jax.device_put(_tree_stack([m.state for m in members]), mem)
  like = members[0].state  # Structure and dtypes of one member's state.
  for m in members:
    m.state = None  # The stack is the only copy from here on.
  train_arrays = steps.split_arrays(ds.train)
  train_data = jax.device_put({k: v for k, v in train_arrays.items() if k != "weight"},
                              sh.replicated)
  train_weight_MxN = jax.device_put(
      np.stack([m.exp.dataset.train.weight for m in members]), mem)
  # All splits in one pass (`steps.pack_for_eval`); only the weights differ by member.
  member_splits = [[m.exp.dataset.splits()[s] for s in train.SPLITS] for m in members]
  eval_batch = steps.eval_batch_size(cfg0.eval_batch_size, member_splits[0],
                                     mesh.shape[placement.DATA_AXIS])
  eval_data = jax.device_put(
      steps.pack_for_eval(member_splits[0], eval_batch, keys=("x", "y", "group")),
      sh.stacked_batches)
  eval_weight_M = jax.device_put(
      np.stack([steps.pack_for_eval(splits, eval_batch, keys=("weight",))["weight"]
                for splits in member_splits]),
      NamedSharding(mesh, P(MEMBERS_AXIS, None, placement.DATA_AXIS)))
  loss_params_M = jax.device_put(loss_params_M, mem)

  reduction = weighting.make_reduction(cfg0.weighting.mode, num_groups=ds.num_groups,
                                       adv_probs_lr=cfg0.weighting.adv_probs_lr)
  epoch_fn = xla_runtime.WithMatmulPrecision(  # The group's (a field that splits groups).
      make_sweep_epoch(exp0, mesh=mesh, loss_config=loss_config, reduction=reduction,
                       member_batch=member_batch), cfg0.matmul_precision)
  eval_fn = xla_runtime.WithMatmulPrecision(
      make_sweep_eval(exp0, mesh=mesh, loss_config=loss_config, member_batch=member_batch),
      cfg0.matmul_precision)

  def evaluate_M(state_M) -> list[dict[str, float]]:
    """Every member's `train.evaluate` values, from one call."""
    counts_MxS = jax.device_get(eval_fn(state_M, eval_data, eval_weight_M, loss_params_M))
    return [train.split_values({k: v[i] for k, v in counts_MxS.items()}, train.SPLITS,
                               train_group_counts=ds.train_group_counts)
            for i in range(len(members))]

  active = [True] * len(members)
  alive_M = jax.device_put(np.ones(len(members), bool), mem)
  idx_sharding = NamedSharding(mesh, P(None, MEMBERS_AXIS, placement.DATA_AXIS))
  for m in members:  # Each member its own wandb run, as `polyjax.main` would log it.
    m.wandb = wandb_logger.for_run(m.config, m.run.path, m.record,
                                   group=m.run.path.parent.name)
  start = time.time()
  status = "completed"
  # The medians over the members still training: one line per group, however many.
  shown = progress.Progress(num_epochs, start_epoch=members[0].start_epoch,
                            desc=f"{label} ({len(members)} members) epoch",
                            log_every=log_every, eval_every=eval_every)
  try:
    for epoch in range(members[0].start_epoch + 1, num_epochs + 1):
      t0 = time.time()
      idx_MxSxB = np.stack([
          steps.epoch_indices(n_train, cfg0.batch_size, seed=m.exp.order_seed, epoch=epoch,
                              p=m.exp.sample_p) for m in members])
      num_steps = idx_MxSxB.shape[1]
      state_M, alive_M, obj_MxS, finite_M = epoch_fn(
          state_M, train_data, train_weight_MxN,
          jax.device_put(idx_MxSxB.transpose(1, 0, 2), idx_sharding), loss_params_M, alive_M)
      obj_MxS = np.asarray(obj_MxS)
      finite_M = np.asarray(finite_M)
      newly_diverged = False
      for i, m in enumerate(members):
        if not active[i]:
          continue
        if not np.all(np.isfinite(obj_MxS[i])):
          bad = int(np.flatnonzero(~np.isfinite(obj_MxS[i]))[0])
          step = (epoch - 1) * num_steps + bad + 1
          why = f"training objective is {obj_MxS[i, bad]} at epoch {epoch}, step {step}"
        elif not finite_M[i]:
          step = epoch * num_steps
          why = f"the train state holds NaN or Inf after epoch {epoch}, step {step}"
        else:
          continue
        active[i], newly_diverged = False, True
        m.summary.update(status="diverged", diverged_at={"epoch": epoch, "step": step},
                         wall_seconds=m.prior_seconds + time.time() - start,
                         steps=m.steps_done)
        m.checkpoints.flush()  # Its held best is a finite, evaluated state: keep it.
        m.checkpoints.close()
        m.run.write_summary(m.summary)
        m.wandb.finish(m.summary)
        shown.write(f"polyjax.sweep: {m.name} diverged: {why}")
      if not any(active):
        break
      if newly_diverged:  # Mask them from here on, whatever their objective does.
        alive_M = jax.device_put(np.asarray(active), mem)
      steps_M = np.asarray(state_M.step)
      evaluated = epoch % eval_every == 0 or epoch == num_epochs
      values_M = evaluate_M(state_M) if evaluated else None
      stopping = epoch < num_epochs and stop.received_anywhere()
      for i, m in enumerate(members):
        # Start every held best's (background) write first, so that the members'
        # writes overlap: a member's forced save then waits only for its own (an
        # interval save that finds its write in progress is deferred).
        if active[i] and m.checkpoints.due(epoch, force=epoch == num_epochs or stopping):
          m.checkpoints.flush_best()
      host = _HostStack(state_M)
      for i, m in enumerate(members):
        if not active[i]:
          continue
        m.summary["epochs_completed"] = epoch
        m.steps_done = step = int(steps_M[i])
        values = None
        if evaluated:
          values = m.values = values_M[i]
          values["train/objective"] = float(obj_MxS[i].mean())
          values["train/lr"] = train.lr_at(m.config, m.exp, step)
          m.wandb.log(step, {"epoch": epoch, **values})
        m.best_epoch, m.best_value = train.record_epoch(
            m.config, m.run, m.checkpoints, epoch=epoch, step=step,
            state=functools.partial(host.member, i), values=values,
            best_epoch=m.best_epoch, best_value=m.best_value, stopping=stopping)
        m.summary["best_epoch"] = m.best_epoch
      bar_text = line = None
      if evaluated:
        accs = [members[i].values["test/reweighted_acc"] for i in range(len(members))
                if active[i]]
        line = (f"epoch {epoch}/{num_epochs}  {sum(active)}/{len(members)} members  "
                f"test/reweighted_acc min {min(accs):.4f} median {np.median(accs):.4f} "
                f"max {max(accs):.4f}  ({time.time() - t0:.2f}s)")
        medians = {k: float(np.median([members[i].values[k] for i in range(len(members))
                                       if active[i]]))
                   for k in progress.BAR_KEYS}
        bar_text = (f"{sum(active)}/{len(members)} alive, median "
                    if sum(active) < len(members) else "median ") + progress.metrics_text(
                        medians)
      shown.epoch(epoch, bar_text=bar_text, line=line)
      if stopping:
        break
    done = [i for i in range(len(members))
            if active[i] and members[i].summary["epochs_completed"] == num_epochs]
    if any(active) and len(done) < sum(active):
      status = "interrupted"
    if done:
      _finish(members, done, state_M, like, evaluate_M, mem)
  except KeyboardInterrupt:
    status = "interrupted"
    raise
  except BaseException:
    status = "failed"
    raise
  finally:
    shown.close()
    for i, m in enumerate(members):
      if not active[i]:
        continue
      if m.summary["status"] != "completed":
        m.summary["status"] = status
        if status == "interrupted" and stop.name is not None:
          m.summary["signal"] = stop.name
      m.summary["wall_seconds"] = m.prior_seconds + time.time() - start
      m.summary["steps"] = m.steps_done
      try:
        m.checkpoints.close()
      finally:
        m.run.write_summary(m.summary)
        m.wandb.finish(m.summary)


def _finish(members: list[Member], done: list[int], state_M, like, evaluate_M,
            stacked) -> None:
  """Final and best values of the members that completed training (`done`): the
  best checkpoints to test are restored and evaluated together, in one stack."""
  for i in done:  # Resumed after the last epoch: its values as the epoch logged them.
    members[i].values = members[i].values or members[i].run.epoch_values(
        members[i].summary["epochs_completed"])
  if not all(members[i].values for i in done):  # Those rows were lost.
    values_M = evaluate_M(state_M)
    for i in done:
      members[i].values = members[i].values or values_M[i]
  restore = [i for i in done if members[i].config.test_on_best
             and members[i].best_epoch is not None
             and members[i].best_epoch != members[i].summary["epochs_completed"]]
  best_M = None
  if restore:
    host = _HostStack(state_M)
    rows = [host.member(i) for i in range(len(members))]
    for i in restore:
      rows[i] = checkpointing.host_copy(
          members[i].checkpoints.best_state(members[i].best_epoch, like=like))
    best_M = evaluate_M(jax.device_put(
        checkpointing.from_saved(jax.tree.map(lambda *a: np.stack(a), *rows)), stacked))
  for i in done:
    m = members[i]
    best = {}
    if m.config.test_on_best and m.best_epoch is not None:
      best = (best_M[i] if i in restore else
              {k: v for k, v in m.values.items() if k not in train.TRAIN_ONLY_KEYS})
    m.summary.update(status="completed", final=m.values, best=best)


def run_sweep(members: list[tuple[str, ml_collections.ConfigDict]], workdir: str, *,
              mesh=None, checkpoint_every_epochs: int | None = None,
              member_batch: int | None = None, log_every: int = 0
              ) -> dict[str, dict[str, Any]]:
  """Trains every member (name, config) under `workdir/<name>`; returns name -> summary.

  Args:
    members: from `expand`; configs are validated here before anything is written.
    workdir: the sweep directory; an existing one is resumed.
    mesh: device mesh shared by all members (default: every device).
    checkpoint_every_epochs: if given, sets `config.checkpoint_every_epochs` of every
      member (so config.json records it).
    member_batch: train (and evaluate) this many members side by side at a time
      (`over_members`); None: all members of a group. Smaller bounds memory.
    log_every: as for `train.train_and_evaluate`: a bar per group when stdout is a
      terminal, and the line of every `log_every`-th evaluated epoch (0: on a
      terminal none, elsewhere every one).

  Raises:
    ConfigError: a member config that cannot be trained, or a member directory holding
      a run of a different config (before any training).
  """
  mesh = placement.make_mesh() if mesh is None else mesh
  if checkpoint_every_epochs is not None:
    members = [(name, _with_checkpoint_every(cfg, checkpoint_every_epochs))
               for name, cfg in members]
  for _, cfg in members:
    # Any batch size: each group's mesh splits a batch over only as many devices as
    # divide it (`member_mesh`).
    config_lib.validate(cfg, device_count=1)
  workdir_path = pathlib.Path(workdir)
  out: dict[str, dict[str, Any]] = {}
  todo_groups: list[tuple[str, list[Member]]] = []
  all_groups = groups(members)
  for number, group in enumerate(all_groups, 1):  # Every directory is checked first.
    todo: list[Member] = []
    for name, cfg in group:
      m = Member(name=name, config=cfg, run=run_dir.RunDir(workdir_path / name))
      if _prepare(m):
        todo.append(m)
      else:
        print(f"polyjax.sweep: {name} already {m.summary['status']}; skipped", flush=True)
        out[name] = m.summary
    if todo:  # Numbered as `describe_groups` lists them.
      todo_groups.append((f"group {number}/{len(all_groups)}" if len(all_groups) > 1
                          else "sweep", todo))
  # One sweep process per directory (a second exits naming the first's PID).
  lock = run_dir.RunDir(workdir_path)
  created = not workdir_path.exists()
  lock.lock()
  stop = lifecycle.StopSignals()
  try:
    with stop:
      for label, todo in todo_groups:
        if stop.received_anywhere():
          break  # Stopped during an earlier group: later groups are not started.
        _run_group(todo, mesh=mesh, stop=stop, member_batch=member_batch, label=label,
                   log_every=log_every)
        for m in todo:
          out[m.name] = m.summary
  finally:
    lock.unlock()
    if created and [p.name for p in workdir_path.iterdir()] == [run_dir.LOCK]:
      shutil.rmtree(workdir_path)  # Failed before any member started (e.g. missing data).
  return out


def _with_checkpoint_every(config: ml_collections.ConfigDict, every: int
                           ) -> ml_collections.ConfigDict:
  config = copy.deepcopy(config)
  config.checkpoint_every_epochs = every
  return config


def _run_group(todo: list[Member], *, mesh, stop: lifecycle.StopSignals,
               member_batch: int | None = None, label: str = "sweep",
               log_every: int = 0) -> None:
  """Builds, opens (resuming) and trains the members of one stackable group."""
  cfg0 = todo[0].config
  # One load of the data; each member reweights it with its own exponent.
  data_cfg = cfg0.data.to_dict()
  data_name = data_cfg.pop("name")
  data_cfg.pop("order_seed")
  base = data.load(data_name, weighting_mode=cfg0.weighting.mode,
                   exponent=cfg0.weighting.exponent, **data_cfg)
  for m in todo:
    dataset = with_weights(base, mode=m.config.weighting.mode,
                           exponent=m.config.weighting.exponent)
    m.exp = train.build(m.config, mesh=mesh, dataset=dataset)
  exp0 = todo[0].exp
  train.check_best_metric(cfg0, exp0.dataset)
  for m in todo:
    m.changed = []
    saved = m.run.read_config()
    m.resumes = list((saved or {}).get("resumes", []))
    checkpointing.check_writable(m.run.path, "run directory")
    m.checkpoints = checkpointing.Checkpoints(
        m.run.checkpoints, every_epochs=m.config.checkpoint_every_epochs,
        best_mode=m.config.best_mode, defer_while_writing=True)  # One process.
    m.state = m.exp.state
    latest = m.checkpoints.latest_epoch()
    if latest is not None:
      if latest > m.config.num_epochs:
        raise config_lib.ConfigError(
            f"config.num_epochs={m.config.num_epochs} is below the {latest} epochs "
            f"already done in {m.run.path}")
      try:
        restored = m.checkpoints.restore_latest(like=m.exp.state)
      except checkpointing.CheckpointMismatch as e:
        raise config_lib.ConfigError(str(e)) from e
      if restored is not None:
        m.start_epoch, m.state, meta = restored
        m.best_epoch, m.best_value = meta["best_epoch"], meta["best_value"]
        m.steps_done = int(meta["step"])
        m.prior_seconds = float((m.run.read_summary() or {}).get("wall_seconds", 0.0))
        m.resumes.append({"epoch": m.start_epoch, "changed_fields": m.changed,
                          "time": time.time()})
        print(f"polyjax.sweep: {m.name} resumes after epoch {m.start_epoch}", flush=True)
    if saved is not None:
      repair = m.run.truncate_metrics(m.start_epoch, eval_every=m.config.eval_every_epochs)
      warning = repair.warning(m.run.path / run_dir.METRICS, m.start_epoch)
      if warning:
        print(f"polyjax.sweep: warning: {warning}", file=sys.stderr, flush=True)
    m.record = train.run_record(m.config, m.run.path)
    m.run.write_config(m.config.to_dict(), **m.record, resumes=m.resumes)
    m.summary = {"status": "running", "epochs_completed": m.start_epoch, "final": {},
                 "best": {}, "best_metric": m.config.best_metric, "best_epoch": m.best_epoch}
  by_start: dict[int, list[Member]] = {}
  for m in todo:
    by_start.setdefault(m.start_epoch, []).append(m)
  for start_epoch, sub in sorted(by_start.items()):
    if stop.received_anywhere():
      for m in sub:
        m.summary.update(status="interrupted", signal=stop.name,
                         wall_seconds=m.prior_seconds, steps=m.steps_done)
        m.checkpoints.close()
        m.run.write_summary(m.summary)
      continue
    print(f"polyjax.sweep: training {len(sub)} members together "
          f"({', '.join(m.name for m in sub)}) from epoch {start_epoch}", flush=True)
    _train_group(sub, stop=stop, member_batch=member_batch, label=label,
                 log_every=log_every)


# ----------------------------------------------------------------------------
# Command line.


def cpu_device_count(cores: int, group_sizes: Sequence[int]) -> int:
  """How many devices a sweep makes of the CPU: the most, up to `cores`, that divide
  every group's number of members, so that each group's members split evenly over
  them (`member_mesh`) and each device trains its own with one core's worth of
  threads. Measured on 2 cores: 16 digits MLPs train an epoch about twice as fast
  on 2 CPU devices as vmapped on 1 (XLA:CPU runs small batched products on one
  device at 60-80 GFLOP/s, two devices' blocks side by side at 115-120)."""
  return max(c for c in range(1, max(cores, 1) + 1) if all(n % c == 0 for n in group_sizes))


def describe_groups(members: list[tuple[str, ml_collections.ConfigDict]],
                    fields: Sequence[str], *, most: int = 8) -> list[str]:
  """What the sweep will train, as lines for the user: which of the grid's `fields`
  split it into separate programs (groups trained one after another), which are
  stacked within a program, and each group's number of members (the first `most`
  groups by name)."""
  varying = [f for f in fields if len({repr(_get(c, f)) for _, c in members}) > 1]
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
    values = ",".join(f"{f}={_get(group[0][1], f)}" for f in split)
    lines.append(f"group {number}/{len(found)} ({values}): {len(group)} "
                 f"member{'s' if len(group) > 1 else ''}")
  if len(found) > most:
    rest = found[most:]
    lines.append(f"... and {len(rest)} more groups ({sum(map(len, rest))} members)")
  return lines


def _devices_used(num_members: int, devices: int, batch_size: int) -> int:
  """How many of `devices` a group's `member_mesh` uses."""
  members = math.gcd(num_members, devices)
  return members * math.gcd(devices // members, batch_size)


def idle_note(group_sizes: Sequence[int], batch_sizes: Sequence[int], *, devices: int,
              platform: str, cores: int, count_from: str) -> str | None:
  """A note for the user when a group leaves devices (or, on a CPU, cores) idle,
  with how to use them; None when none is.

  Args:
    group_sizes, batch_sizes: each group's number of members and batch size.
    devices: JAX's device count; platform: theirs ('cpu', 'gpu', 'tpu').
    cores: the cores this process may use (a CPU device trains its members with
      about one core's worth of threads: `cpu_device_count`).
    count_from: what set the CPU device count: 'auto' (`cpu_device_count`), 'flag'
      (--cpu_devices) or 'environment' (XLA_FLAGS, JAX_NUM_CPU_DEVICES).
  """
  used = [_devices_used(n, devices, b) for n, b in zip(group_sizes, batch_sizes)]
  numbered = len(group_sizes) > 1
  for number, (n, b, u) in enumerate(zip(group_sizes, batch_sizes, used), 1):
    where = f"group {number}/{len(group_sizes)}'s " if numbered else ""
    on = f"{where}{n} member{'s' if n > 1 else ''} train on {u} {platform.upper()} device"
    on += "s" if u > 1 else ""
    if platform != "cpu":
      if u < devices:
        return (f"{on} of {devices}: members split over as many devices as divide "
                f"their number, each member's batch ({b}) over as many of the rest as "
                f"divide it; a number of members divisible by {devices} uses them all")
      continue
    if min(u, cores) >= cores:
      continue
    idle = cores - u
    fixes = [f"make every group's number of members divisible by {cores}"
             + (f" (e.g. {n - n % cores or cores} or {n - n % cores + cores} here)"
                if n % cores else "")]
    with_cores = _devices_used(n, cores, b)
    if count_from != "environment" and devices != cores and with_cores > u:
      fixes.append(f"pass --cpu_devices={cores} (each member's batch is then split over "
                   f"{with_cores // math.gcd(n, cores)} devices)")
    if count_from == "environment":
      fixes.append(f"set XLA_FLAGS/JAX_NUM_CPU_DEVICES to {cores} devices (now {devices})")
    return (f"{on}, leaving {idle} of the {cores} CPU cores this process may use "
            f"mostly idle (a CPU device trains its members with about one core); to use "
            f"them, {', or '.join(fixes)}")
  return None


def cpu_count_set(environ: Mapping[str, str]) -> bool:
  """Whether the environment already fixes JAX's CPU device count."""
  return ("--xla_force_host_platform_device_count" in environ.get("XLA_FLAGS", "")
          or "JAX_NUM_CPU_DEVICES" in environ)


def _usable_cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def split_cpu(count: int) -> None:
  """Makes JAX's CPU platform `count` devices (`jax_num_cpu_devices`); only the CPU
  platform is affected (a GPU or TPU run's devices are not). Must run before JAX
  starts its backends."""
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:
    raise config_lib.ConfigError(
        f"--cpu_devices={count} cannot take effect: JAX is already running in this "
        "process") from None


def process_deterministic(members: list[tuple[str, ml_collections.ConfigDict]]) -> bool:
  """The members' `deterministic`, which is set for the whole process (XLA_FLAGS);
  raises ConfigError if it differs between them."""
  values = {config.deterministic for _, config in members}
  if len(values) > 1:
    raise config_lib.ConfigError(
        "deterministic applies to the whole process: it cannot vary within a sweep "
        "(run one sweep per value)")
  return values.pop()


_ONE_PROCESS = ("a sweep trains every member in one process, but this is one of "
                "several ({}), which would all write the same member directories: run "
                "it as a single process, or run the members as polyjax.main runs "
                "(scripts/launch_sweep.py)")


def check_one_process(environ: Mapping[str, str]) -> None:
  """Raises ConfigError if the environment launches several processes of this
  command (an srun step of several tasks, an Open MPI job of several ranks)."""
  reason = distributed.decide(mode="auto", coordinator_address=None, num_processes=None,
                              process_id=None, environ=environ, tpu_vm=False)
  if reason is not None:
    raise config_lib.ConfigError(_ONE_PROCESS.format(reason))


def main(argv) -> int:
  from absl import app, flags

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_logs()
  config = _CONFIG.value
  try:
    if _GRID.value:
      grid: Grid = [parse_grid_flags(_GRID.value)]
    else:
      grid = config_sweep(flags.FLAGS["config"].config_filename)
      if grid is None:
        raise config_lib.ConfigError(
            "no grid: pass --grid=field=v1,v2 or define sweep() in the config file")
    members = expand(config, grid)
    xla_runtime.set_deterministic(process_deterministic(members))  # Before JAX starts.
    check_one_process(os.environ)
    if _MEMBER_BATCH.value < 0:
      raise config_lib.ConfigError(f"--member_batch must be >= 0, got {_MEMBER_BATCH.value}")
    if _CPU_DEVICES.value < 0:
      raise config_lib.ConfigError(f"--cpu_devices must be >= 0, got {_CPU_DEVICES.value}")
    count_from = "environment" if cpu_count_set(os.environ) else "auto"
    if _CPU_DEVICES.value:
      split_cpu(_CPU_DEVICES.value)
      count_from = "flag"
    elif count_from == "auto":
      count = cpu_device_count(_usable_cores(), [len(g) for g in groups(members)])
      if count > 1:
        split_cpu(count)
    if jax.process_count() > 1:  # E.g. a runtime started by the platform.
      raise config_lib.ConfigError(_ONE_PROCESS.format(f"{jax.process_count()} processes"))
    # What will happen, before the first (long) compilation.
    fields = list(dict.fromkeys(f for g in grid for f in g))
    for line in describe_groups(members, fields):
      print(f"polyjax.sweep: {line}", flush=True)
    note = idle_note([len(g) for g in groups(members)],
                     [g[0][1].batch_size for g in groups(members)],
                     devices=jax.device_count(), platform=jax.devices()[0].platform,
                     cores=_usable_cores(), count_from=count_from)
    if note:
      print(f"polyjax.sweep: note: {note}", flush=True)
    if _COMPILATION_CACHE.value:
      xla_runtime.use_compilation_cache(_COMPILATION_CACHE.value)
    summaries = run_sweep(members, _WORKDIR.value,
                          checkpoint_every_epochs=_CHECKPOINT_EVERY.value,
                          member_batch=_MEMBER_BATCH.value or None,
                          log_every=_LOG_EVERY.value)
  except (config_lib.ConfigError, checkpointing.CheckpointDirError, run_dir.RunDirBusy,
          data.DataMissing) as e:
    print(f"polyjax.sweep: error: {e}", file=sys.stderr)
    return 2
  except Exception as e:
    if run_dir.is_disk_full(e):
      print(f"polyjax.sweep: error: no space left on the device of {_WORKDIR.value}; free "
            f"some space and rerun the same command to resume", file=sys.stderr)
      return 1
    raise
  by_status: dict[str, list[str]] = {}
  for name, s in summaries.items():
    by_status.setdefault(s["status"], []).append(name)
  print("polyjax.sweep: " + "; ".join(f"{len(v)} {k}" for k, v in by_status.items()) +
        f"; run directories under {_WORKDIR.value}")
  for name in by_status.get("diverged", []):
    print(f"polyjax.sweep: diverged: {name}")
  return 0


_CONFIG = _WORKDIR = _GRID = _CHECKPOINT_EVERY = _MEMBER_BATCH = _COMPILATION_CACHE = None
_CPU_DEVICES = _LOG_EVERY = None


def run() -> None:
  """Defines the flags (here, so importing this module next to polyjax.main is safe)
  and runs `main`."""
  global _CONFIG, _WORKDIR, _GRID, _CHECKPOINT_EVERY, _MEMBER_BATCH, _COMPILATION_CACHE
  global _CPU_DEVICES, _LOG_EVERY
  from absl import app, flags
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file(
      "config", None, "Experiment config file (configs/*.py).", lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory: one run directory "
                                 "per member under it; an existing one is resumed.")
  _GRID = flags.DEFINE_multi_string(
      "grid", [], "field=v1,v2,... (repeatable); the grid is their product. Default: "
      "the config file's sweep().")
  _CHECKPOINT_EVERY = flags.DEFINE_integer(
      "checkpoint_every_epochs", None, "Checkpoint every member this often (default: "
      "the config's checkpoint_every_epochs if it has one, else after the last epoch).")
  _MEMBER_BATCH = flags.DEFINE_integer(
      "member_batch", 0, "Members trained side by side (vmapped) at a time on each "
      "device; the rest wait their turn inside the same program. 0: all. Smaller "
      "values bound memory, e.g. 1 for a conv net on CPU, where vmapped members train "
      "no faster.")
  _CPU_DEVICES = flags.DEFINE_integer(
      "cpu_devices", 0, "Devices to make of the CPU (JAX's CPU platform only), members "
      "split over them. 0: the most, up to the cores this process may use, that divide "
      "every group's number of members (cpu_device_count), unless XLA_FLAGS or "
      "JAX_NUM_CPU_DEVICES set a count.")
  _COMPILATION_CACHE = flags.DEFINE_string(
      "compilation_cache_dir", None, "Keep compiled programs here and reuse them in "
      "later runs of the same shapes (xla_runtime.use_compilation_cache).")
  _LOG_EVERY = flags.DEFINE_integer(
      "log_every", 0, "Print the per-epoch line of every Nth evaluated epoch (and the "
      "last). 0: a live progress bar per group only when stdout is a terminal, every "
      "epoch's line otherwise (a pipe, a log file); N > 0 on a terminal: the lines "
      "above the bar.", lower_bound=0)
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(lambda argv: lifecycle.exit(main(argv)),
          flags_parser=lambda argv: cli.parse_flags(argv, "polyjax.sweep"))


if __name__ == "__main__":
  run()
