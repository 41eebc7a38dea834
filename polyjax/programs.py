"""The compiled programs of a group of members: M runs that share one program.

The training loop (`polyjax.train`) drives M members through one object with the
same calls whatever M is: `place` their states, `train` some epochs, `evaluate`,
and take one member's state back (`member_states`, `place_rows`).

- `Single` (M = 1, `polyjax.main`): a run's own programs (`steps.make_train_epoch`,
  `steps.make_eval_counts`), its loss parameters constants of the program; or the
  streamed ones (`polyjax.streaming`).
- `Sequential` (M > 1, `--member_batch=1`): each member's `Single` programs, one
  member after another in each call: every member equals its single run bit for bit.
- `Stacked` (M > 1, a sweep's group): the members' train states stacked along a
  leading member axis and one jitted epoch that updates them all. Members differ
  only in the fields of `grid.STACKABLE`: their loss parameters are traced, their
  example weights and batch orders are per-member arrays. The stack is split over
  the devices (`member_mesh`: each device trains its own members, with no
  communication between them; each member's batch is split over the devices left
  over, as in a single run). A member whose step objective is not finite keeps its
  last finite state from that step on (`alive`), so the others go on.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from polyjax import (checkpointing, experiment, group_robust, lifecycle, losses, placement,
                     steps, train_state, weighting, xla_runtime)
from polyjax.experiment import Experiment

MEMBERS_AXIS = "members"  # The mesh axis that members are split along (`member_mesh`).
# Loss fields traced per member, for the losses that use them as plain jnp values.
TRACED_LOSS_FIELDS = ("alpha", "beta")
LOSSES_WITH_TRACED_FIELDS = ("poly", "ce")


def traced_loss_fields(loss_name: str) -> tuple[str, ...]:
  return TRACED_LOSS_FIELDS if loss_name in LOSSES_WITH_TRACED_FIELDS else ()


class Single:
  """One member's own programs (M = 1)."""

  def __init__(self, exp: Experiment, config: ml_collections.ConfigDict):
    self.exp, self.config = exp, config
    self.streamed = config.data.pipeline == "stream"
    sh = exp.shardings
    if self.streamed:  # The streamed steps read the splits themselves, batch by batch.
      self.train_data = exp.dataset.train
    else:
      self.train_data = placement.to_global(steps.split_arrays(exp.dataset.train),
                                            sh.replicated)
    self.eval_inputs = experiment.eval_data(exp, config)

  def place(self, states: Sequence[Any]) -> Any:
    return placement.to_global(states[0], self.exp.shardings.replicated)

  def train(self, state, epochs: range, alive: np.ndarray
            ) -> tuple[Any, np.ndarray, np.ndarray]:
    """Trains `epochs`; returns the state, objectives (1, steps) and finiteness (1,)."""
    exp = self.exp
    idx_SxB = steps.epochs_indices(len(exp.dataset.train), self.config.batch_size,
                                   seed=exp.order_seed, epochs=epochs, p=exp.sample_p,
                                   once=exp.resample_once)
    if not self.streamed:
      idx_SxB = placement.to_global(idx_SxB, exp.shardings.stacked_batches)
    state, objective_S = exp.train_epoch(state, self.train_data, idx_SxB)
    objective_1xS = np.asarray(objective_S)[None]
    # The state is checked only when the objectives are: a NaN objective decides first.
    finite = not np.all(np.isfinite(objective_1xS)) or lifecycle.is_finite(state)
    return state, objective_1xS, np.asarray([finite])

  def evaluate(self, state) -> list[dict[str, float]]:
    return [experiment.evaluate(self.exp, state, self.eval_inputs)]

  def member_states(self, state) -> Callable[[int], Any]:
    return lambda i: state

  def with_dro_adjustment(self, state, adjust: Callable) -> tuple[Any, list[np.ndarray]]:
    """The state with group DRO's adjustment `adjust(i, ema_G)` of each member i
    (`TrainState.dro_auto`), and those adjustments."""
    adj_G = adjust(0, np.asarray(jax.device_get(state.dro_auto["ema"])))
    placed = placement.to_global(adj_G, self.exp.shardings.replicated)
    return state.replace(dro_auto={**state.dro_auto, "adjustment": placed}), [adj_G]

  def place_rows(self, rows: Sequence[Any]) -> Any:
    """States (as `checkpointing.host_copy` gives them) placed like the run's state."""
    return self.place([checkpointing.from_saved(checkpointing.host_copy(rows[0]))])

  def steps_done(self, state) -> list[int]:
    return [int(jax.device_get(state.step))]


class Stacked:
  """M > 1 members' stacked programs, on their `member_mesh`."""

  def __init__(self, exps: Sequence[Experiment], configs: Sequence[ml_collections.ConfigDict],
               *, member_batch: int | None = None):
    self.exps, self.configs = list(exps), list(configs)
    exp0, cfg0 = exps[0], configs[0]
    ds = exp0.dataset
    self.mesh = member_mesh(list(exp0.shardings.mesh.devices.flat), num_members=len(exps),
                            batch_size=cfg0.batch_size)
    sh = placement.Shardings(self.mesh)
    self.stacked = NamedSharding(self.mesh, P(MEMBERS_AXIS))
    loss_config = cfg0.loss.to_dict()
    traced = traced_loss_fields(cfg0.loss.name)
    loss_params_M = {f: np.asarray([c.loss[f] for c in configs], np.float32) for f in traced}
    for f in traced:
      loss_config.pop(f)
    self.loss_params_M = jax.device_put(loss_params_M, self.stacked)
    if any(not np.array_equal(e.dataset.train.group, ds.train.group) for e in exps):
      raise ValueError("stacked members must train on the same examples")  # Only weights differ.
    train_arrays = steps.split_arrays(ds.train)
    self.train_data = jax.device_put(
        {k: v for k, v in train_arrays.items() if k != "weight"}, sh.replicated)
    self.train_weight_MxN = jax.device_put(np.stack([e.dataset.train.weight for e in exps]),
                                           self.stacked)
    # All splits in one pass (`steps.pack_for_eval`); only the weights differ by member.
    self.split_names = experiment.eval_splits(ds)  # The same for every member.
    member_splits = [[e.dataset.splits()[s] for s in self.split_names] for e in exps]
    eval_batch = steps.eval_batch_size(cfg0.eval_batch_size, member_splits[0],
                                       self.mesh.shape[placement.DATA_AXIS])
    self.eval_data = jax.device_put(
        steps.pack_for_eval(member_splits[0], eval_batch, keys=("x", "y", "group")),
        sh.stacked_batches)
    self.eval_weight_M = jax.device_put(
        np.stack([steps.pack_for_eval(splits, eval_batch, keys=("weight",))["weight"]
                  for splits in member_splits]),
        NamedSharding(self.mesh, P(MEMBERS_AXIS, None, placement.DATA_AXIS)))
    self.idx_sharding = NamedSharding(self.mesh, P(None, MEMBERS_AXIS, placement.DATA_AXIS))
    reduction = group_robust.config_reduction(cfg0.weighting, ds.train_group_counts)
    self.epoch_fn = xla_runtime.WithMatmulPrecision(  # The group's: a field that splits groups.
        make_stacked_epoch(exp0, mesh=self.mesh, loss_config=loss_config,
                           reduction=reduction, member_batch=member_batch),
        cfg0.matmul_precision)
    self.eval_fn = xla_runtime.WithMatmulPrecision(
        make_stacked_eval(exp0, mesh=self.mesh, loss_config=loss_config,
                          member_batch=member_batch),
        cfg0.matmul_precision)

  def place(self, states: Sequence[Any]) -> Any:
    return jax.device_put(tree_stack(list(states)), self.stacked)

  def train(self, state_M, epochs: range, alive: np.ndarray
            ) -> tuple[Any, np.ndarray, np.ndarray]:
    """Trains `epochs` of every member (those not `alive` keep their state); returns
    the stack, objectives (M, steps) and each member's finiteness (M,)."""
    n, batch_size = len(self.exps[0].dataset.train), self.configs[0].batch_size
    idx_MxSxB = np.stack([steps.epochs_indices(n, batch_size, seed=e.order_seed,
                                               epochs=epochs, p=e.sample_p,
                                               once=e.resample_once)
                          for e in self.exps])
    state_M, objective_MxS, finite_M = self.epoch_fn(
        state_M, self.train_data, self.train_weight_MxN,
        jax.device_put(idx_MxSxB.transpose(1, 0, 2), self.idx_sharding), self.loss_params_M,
        jax.device_put(alive, self.stacked))
    return state_M, np.asarray(objective_MxS), np.asarray(finite_M)

  def evaluate(self, state_M) -> list[dict[str, float]]:
    """Every member's `experiment.evaluate` values, from one call."""
    counts_MxS = jax.device_get(self.eval_fn(state_M, self.eval_data, self.eval_weight_M,
                                             self.loss_params_M))
    counts = self.exps[0].dataset.train_group_counts
    return [experiment.split_values({k: v[i] for k, v in counts_MxS.items()},
                                    self.split_names, train_group_counts=counts)
            for i in range(len(self.exps))]

  def member_states(self, state_M) -> Callable[[int], Any]:
    """Member i's state in host memory (`checkpointing.host_copy` of the stack, copied
    at the first call; each member's row a copy, not a view that would keep the
    whole stack alive while its best is held)."""
    host = []

    def member(i: int):
      if not host:
        host.append(checkpointing.host_copy(state_M))
      return jax.tree.map(lambda a: a[i].copy(), host[0])

    return member

  def with_dro_adjustment(self, state_M, adjust: Callable) -> tuple[Any, list[np.ndarray]]:
    ema_MxG = np.asarray(jax.device_get(state_M.dro_auto["ema"]))
    adj_M = [adjust(i, ema_G) for i, ema_G in enumerate(ema_MxG)]
    placed = jax.device_put(np.stack(adj_M), self.stacked)
    return state_M.replace(dro_auto={**state_M.dro_auto, "adjustment": placed}), adj_M

  def place_rows(self, rows: Sequence[Any]) -> Any:
    saved = [checkpointing.host_copy(r) for r in rows]
    return jax.device_put(
        checkpointing.from_saved(jax.tree.map(lambda *a: np.stack(a), *saved)), self.stacked)

  def steps_done(self, state_M) -> list[int]:
    return [int(s) for s in np.asarray(state_M.step)]


@jax.jit  # One program for all the leaves (eager stacking compiled one per shape).
def tree_stack(trees: Sequence[Any]) -> Any:
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


def devices_used(num_members: int, devices: int, batch_size: int) -> int:
  """How many of `devices` a group's `member_mesh` uses."""
  members = math.gcd(num_members, devices)
  return members * math.gcd(devices // members, batch_size)


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


def make_stacked_epoch(exp: Experiment, *, mesh: jax.sharding.Mesh,
                       loss_config: Mapping[str, Any],
                       reduction: weighting.Reduction = weighting.weighted_reduction,
                       member_batch: int | None = None):
  """Jitted `(state_M, data, weight_MxN, idx_SxMxB, loss_params_M, alive_M)
  -> (state_M, objective_MxS, finite_M)`: consecutive epochs of every member in one
  call; `finite_M` says whether each member's state is finite at its end.

  Each member's step is `steps.make_train_step` with its own traced loss
  parameters, the group's `reduction` (group DRO's probabilities live in each
  member's state) and the group's `exp.weight_fn` (of each member's own step); a
  step whose objective is not finite, and every step after it, leaves that
  member's state unchanged. `mesh` is the group's `member_mesh`: the
  stacked state and per-member inputs are split along its members axis, each
  member's batch along its data axis. The program gets the compiler options of a
  single run of the same model (`exp.compiler_options`).
  """
  sh = placement.Shardings(mesh)
  split = mesh.shape[MEMBERS_AXIS]
  member_loss = _member_loss(exp, loss_config)
  tx = _member_tx(exp)

  def member_step(state, batch, loss_params, alive):
    new, obj = steps.make_train_step(model_def=exp.model_def, loss_fn=member_loss(loss_params),
                                     tx=tx, reduction=reduction,
                                     preprocess=exp.dataset.preprocess,
                                     weight_fn=exp.weight_fn)(state, batch)
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

    (state_M, _), obj_SxM = jax.lax.scan(body, (state_M, alive_M), idx_SxMxB)
    return state_M, obj_SxM.T, _finite_M(state_M)

  rep, mem = sh.replicated, NamedSharding(mesh, P(MEMBERS_AXIS))
  batches = NamedSharding(mesh, P(None, MEMBERS_AXIS, placement.DATA_AXIS))
  return jax.jit(train_epoch, in_shardings=(mem, rep, mem, batches, mem, mem),
                 out_shardings=(mem, rep, rep), donate_argnums=(0,),
                 compiler_options=exp.compiler_options)


def make_stacked_eval(exp: Experiment, *, mesh: jax.sharding.Mesh,
                      loss_config: Mapping[str, Any], member_batch: int | None = None):
  """Jitted `(state_M, packed, weight_Mx..., loss_params_M) -> counts_MxS`: every
  split of `steps.pack_for_eval`'s arrays, for every member, with its own loss
  parameters and example weights (`steps.make_eval_counts` per member)."""
  sh = placement.Shardings(mesh)
  split = mesh.shape[MEMBERS_AXIS]
  member_loss = _member_loss(exp, loss_config)

  def eval_member(state, packed, weight, loss_params):
    eval_counts = steps.make_eval_counts(model_def=exp.model_def,
                                         loss_fn=member_loss(loss_params),
                                         num_groups=exp.dataset.num_groups, shardings=sh,
                                         preprocess=exp.dataset.preprocess)
    return eval_counts(state, {**packed, "weight": weight})

  def eval_members(state_M, packed, weight_M, loss_params_M):
    return over_members(lambda s, w, lp: eval_member(s, packed, w, lp), split=split,
                        member_batch=member_batch)(state_M, weight_M, loss_params_M)

  mem = NamedSharding(mesh, P(MEMBERS_AXIS))
  return jax.jit(eval_members, in_shardings=(
      mem, sh.stacked_batches,
      NamedSharding(mesh, P(MEMBERS_AXIS, None, placement.DATA_AXIS)), mem),
      out_shardings=sh.replicated)


def _member_loss(exp: Experiment, loss_config: Mapping[str, Any]):
  """`loss_params -> loss_fn`: the group's loss (`loss_config`, with its name) with
  one member's traced parameters (e.g. alpha) and the training split's counts."""
  loss_config = dict(loss_config)
  name = loss_config.pop("name")
  counts = dict(class_counts=exp.dataset.train_class_counts,
                group_counts=exp.dataset.train_group_counts)
  return lambda loss_params: losses.get_loss(name, **{**loss_config, **loss_params},
                                             **counts)


def _member_tx(exp: Experiment):
  """An optimizer with the members' structure and (shared) lr schedule; its
  hyperparameters are read from each member's (stacked) optimizer state, never
  from this object."""
  tx = train_state.make_optimizer(lr=1.0, momentum=0.0, weight_decay=0.0,
                                  lr_factor=exp.lr_factor)
  # model.freeze_features: the members' optimizer state is `head_only`'s.
  frozen = isinstance(exp.state.opt_state, optax.MultiTransformState)
  return train_state.head_only(tx) if frozen else tx


def _finite_M(state_M) -> jax.Array:
  """(M,) whether every floating-point array of each member's state is finite
  (`lifecycle.is_finite`, per member)."""
  leaves = [x for x in jax.tree.leaves(state_M) if not _is_key(x)]
  return lifecycle.finite_rows(leaves, leaves[0].shape[0])


class Sequential:
  """M members one after another in each call, each with the program `polyjax.main`
  compiles for it (`Single`, on the same devices), so that each member equals its
  single run bit for bit. Members whose loss config equals the first member's share
  its compiled programs (the rest of what differs is in the state and the data)."""

  def __init__(self, exps: Sequence[Experiment], configs: Sequence[ml_collections.ConfigDict]):
    loss0 = configs[0].loss.to_dict()
    shared = [dataclasses.replace(e, train_epoch=exps[0].train_epoch,
                                  eval_counts=exps[0].eval_counts)
              if c.loss.to_dict() == loss0 else e for e, c in zip(exps, configs)]
    self.members = [Single(e, c) for e, c in zip(shared, configs)]

  def place(self, states: Sequence[Any]) -> list[Any]:
    return [p.place([s]) for p, s in zip(self.members, states)]

  def train(self, states: list[Any], epochs: range, alive: np.ndarray
            ) -> tuple[list[Any], np.ndarray, np.ndarray]:
    out = [p.train(s, epochs, alive[i:i + 1]) if alive[i] else None
           for i, (p, s) in enumerate(zip(self.members, states))]
    num_steps = next(o[1].shape[1] for o in out if o is not None)
    states = [s if o is None else o[0] for s, o in zip(states, out)]
    objective_MxS = np.stack([np.full(num_steps, np.nan) if o is None else o[1][0]
                              for o in out])  # Not alive: not read.
    finite_M = np.asarray([True if o is None else bool(o[2][0]) for o in out])
    return states, objective_MxS, finite_M

  def evaluate(self, states: list[Any]) -> list[dict[str, float]]:
    return [p.evaluate(s)[0] for p, s in zip(self.members, states)]

  def member_states(self, states: list[Any]) -> Callable[[int], Any]:
    return lambda i: states[i]

  def with_dro_adjustment(self, states: list[Any], adjust: Callable
                          ) -> tuple[list[Any], list[np.ndarray]]:
    out = [p.with_dro_adjustment(s, lambda _, ema_G, i=i: adjust(i, ema_G))
           for i, (p, s) in enumerate(zip(self.members, states))]
    return [s for s, _ in out], [a[0] for _, a in out]

  def place_rows(self, rows: Sequence[Any]) -> list[Any]:
    return [p.place_rows([r]) for p, r in zip(self.members, rows)]

  def steps_done(self, states: list[Any]) -> list[int]:
    return [p.steps_done(s)[0] for p, s in zip(self.members, states)]


def for_members(exps: Sequence[Experiment], configs: Sequence[ml_collections.ConfigDict],
                *, member_batch: int | None = None) -> Single | Sequential | Stacked:
  """The programs of members that share one: `Single` for one; `Sequential` for
  `member_batch=1` (each member bitwise its single run); else `Stacked`."""
  if len(exps) == 1:
    return Single(exps[0], configs[0])
  if member_batch == 1:
    return Sequential(exps, configs)
  return Stacked(exps, configs, member_batch=member_batch)
