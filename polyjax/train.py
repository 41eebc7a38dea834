"""The training loop, one for a single run and for a sweep's members.

`train_and_evaluate(config, workdir)` trains one run (`polyjax.main`);
`train_members` trains M members that share one compiled program (a group of
`polyjax.sweep`). Both are the same host loop over a member axis (`Member` per
run directory; `polyjax.programs` holds the M = 1 and M > 1 programs), in a fixed
order: open each run directory (lock, resume check) -> build (`polyjax.experiment`)
-> restore -> per compiled call: train, check each member for divergence,
evaluate, write metrics rows and checkpoints, show progress -> test each member's
best checkpoint -> summary. Consecutive epochs that need nothing from the host share
one compiled call (`call_end`). Every check that can fail on the config and data
runs before a run directory is written.

A run directory is resumed from its latest checkpoint, and ends exactly where an
uninterrupted run ends: the checkpoint holds the whole train state, and the epoch
it was taken at fixes the input order from there on. A resume whose config
differs in a field that matters (`config.resume_changes`) is refused unless
allowed. A run directory that already holds the completed (or diverged) run of its
config is left as it is. SIGTERM/SIGINT stop every member after the current call
with a checkpoint and status 'interrupted'. A member whose objective or state
becomes NaN/Inf is marked diverged (its last checkpoint is its last finite state);
the others go on.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from polyjax import (checkpointing, data, experiment, group_robust, lifecycle, placement,
                     programs, progress, run_dir, stage1, tensorboard_logger, two_stage,
                     wandb_logger)
from polyjax import member as member_lib
from polyjax.data.splits import with_weights
from polyjax.member import Member

TRAIN_ONLY_KEYS = ("train/objective", "train/lr")  # Values of the epoch, not of a state.
DRO_ADJUSTMENT = "train/dro_adjustment_"  # + group: the adjustment the next epoch uses.
LINE_KEYS = ("train/objective", "train/acc", "val/reweighted_acc", "test/reweighted_acc",
             "test/worst_group_acc")  # A run's progress line.
FUSED_STEPS = 512  # At most this many steps per call when a call trains several epochs.


class Diverged(RuntimeError):
  """The training objective became NaN or Inf."""


def call_end(config, epoch: int, steps_per_epoch: int) -> int:
  """The last epoch of the compiled call that starts after `epoch`.

  Epochs that are neither evaluated nor checkpointed need nothing from the host,
  so consecutive ones run in one call (up to FUSED_STEPS steps, which also bounds
  how long a stop signal waits). Tiny epochs gain most: the full-batch Figure 1
  data has one step per epoch, which alone costs far less than a call.
  """
  limit = min(config.num_epochs, epoch + max(1, FUSED_STEPS // steps_per_epoch))
  end = epoch + 1
  while (end < limit and end % config.eval_every_epochs
         and end % config.checkpoint_every_epochs):
    end += 1
  return end


def _better(value: float, best: float | None, mode: str) -> bool:
  """Strictly better, so that among equal values the earliest epoch stays the best."""
  if not np.isfinite(value):
    return False
  return best is None or (value > best if mode == "max" else value < best)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       mesh=None, allow_config_change: bool = False,
                       log_every: int = 0) -> dict[str, Any]:
  """Trains and evaluates one experiment (resuming `workdir` if it holds a run);
  writes its run directory; returns the summary. A run that has already done what
  `config` asks is left as it is (its summary is returned).

  Process 0 shows the progress (`progress.Progress`): a bar when stdout is a
  terminal, and the line of every `log_every`-th evaluated epoch (0: on a terminal
  none, elsewhere every one).

  Raises:
    ConfigError: a value that cannot be trained, or a resume with a changed config
      (before anything is written).
    checkpointing.CheckpointDirError: the run or checkpoint directory is not writable,
      or holds no intact checkpoint.
    run_dir.RunDirBusy: another process is writing the run directory.
    Diverged: the objective or the state became non-finite (after `summary.json`
      records it; the last checkpoint is the last finite state).
  """
  member = Member(name=str(workdir), config=config,
                  run=run_dir.RunDir(workdir, is_writer=jax.process_index() == 0))
  sizes = {"checkpoint_bytes": 0}
  # SIGTERM/SIGINT are handled from here until the run's files are closed: a signal
  # that reaches one process of several, during set-up or the last (collective)
  # saves, must not end it alone; the processes agree on stopping.
  stop = lifecycle.StopSignals()
  try:
    with stop:
      member_lib.open_member(member, allow_config_change=allow_config_change)
      if member.active:
        train_members([member], mesh=mesh, stop=stop, log_every=log_every, sizes=sizes)
      elif member.run.is_writer and member.summary["status"] == "completed":
        print(f"polyjax: {workdir} already holds the completed run of "
              f"{member.summary['epochs_completed']} epochs; nothing to do", flush=True)
  except Exception as e:
    if run_dir.is_disk_full(e):
      raise run_dir.disk_full_error(member.run.path, sizes["checkpoint_bytes"]) from e
    raise
  finally:
    member.run.unlock()
  summary = member.summary
  if summary["status"] == "diverged":
    at = summary.get("diverged_at", {})
    why = member.diverged or (f"{workdir} holds a run of this config that diverged at "
                              f"epoch {at.get('epoch')}, step {at.get('step')}")
    raise Diverged(f"{why}; stopping (no checkpoint of this state is kept)")
  return summary


def build_members(members: list[Member], mesh) -> list[experiment.Experiment]:
  """Each member's experiment; the data is loaded once and reweighted per member."""
  if stage1.uses_stage1(members[0].config):  # Stage 1's model weights each member's data.
    return [two_stage.build(m.config, mesh=mesh) for m in members]
  if len(members) == 1:
    return [experiment.build(members[0].config, mesh=mesh)]
  base = data.load_config(members[0].config)
  return [experiment.build(m.config, mesh=mesh, dataset=with_weights(
      base, mode=m.config.weighting.mode, exponent=m.config.weighting.exponent,
      cb_beta=m.config.weighting.cb_beta))
          for m in members]


def train_members(members: list[Member], *, stop: lifecycle.StopSignals, mesh=None,
                  member_batch: int | None = None, label: str = "epoch",
                  log_every: int = 0, prefix: str = "polyjax",
                  sizes: dict[str, int] | None = None) -> None:
  """Trains the active members (opened with `open_member`), which share one program
  (`grid.groups`), and writes each one's run directory; each member's summary is
  left in `member.summary`.

  Args:
    members: from `open_member`; inactive ones (finished before) are left alone.
    stop: the process's stop signals.
    mesh: the devices (default: all); a group of several members splits them
      (`programs.member_mesh`).
    member_batch: members side by side at a time (`programs.over_members`).
    label: what the progress display calls the group; prefix: of printed lines.
    sizes: receives 'checkpoint_bytes', the size of the members' states.
  """
  todo = [m for m in members if m.active]
  if not todo:
    return
  mesh = placement.make_mesh() if mesh is None else mesh
  exps = build_members(todo, mesh)
  experiment.check_best_metric(todo[0].config, exps[0].dataset)
  if sizes is not None:
    sizes["checkpoint_bytes"] = sum(x.nbytes for e in exps for x in jax.tree.leaves(e.state))
  try:
    for m, exp in zip(todo, exps):
      m.exp = exp
      checkpointing.check_writable(m.run.path, "run directory")
      m.run.lock()
      member_lib.restore(m, prefix=prefix)
    by_start: dict[int, list[Member]] = {}
    for m in todo:
      by_start.setdefault(m.start_epoch, []).append(m)
    for start_epoch, sub in sorted(by_start.items()):
      if len(todo) > 1:
        print(f"{prefix}: training {len(sub)} members together "
              f"({', '.join(m.name for m in sub)}) from epoch {start_epoch}", flush=True)
      _train(sub, stop=stop, member_batch=member_batch, label=label, log_every=log_every,
             prefix=prefix)
  finally:
    for m in todo:  # Failed before the loop (a restore, the set-up): nothing to record.
      if m.checkpoints is not None:
        member_lib.close(m, "failed", stop=stop, start=time.time(), timed=False, write=False)


def _train(members: list[Member], *, stop: lifecycle.StopSignals, member_batch: int | None,
           label: str, log_every: int, prefix: str) -> None:
  """The epoch loop of members that share a program and a start epoch."""
  cfg0 = members[0].config
  num_epochs = cfg0.num_epochs
  program = programs.for_members([m.exp for m in members], [m.config for m in members],
                                 member_batch=member_batch)
  if isinstance(program, programs.Stacked):
    mesh = program.mesh
    print(f"{prefix}: {len(members)} members on {mesh.size} "
          f"{mesh.devices.flat[0].platform.upper()} device{'s' if mesh.size > 1 else ''} "
          f"(members axis {mesh.shape[programs.MEMBERS_AXIS]} x data axis "
          f"{mesh.shape['data']})", flush=True)
  # A state like each member's, to restore best checkpoints into: a stack's members
  # are host copies (None: the member's own state, on its devices).
  like = members[0].state if isinstance(program, programs.Stacked) else None
  state = program.place([m.state for m in members])
  for m in members:
    m.state = None  # The placed state is the only copy from here on.
    m.wandb = wandb_logger.for_run(m.config, m.run.path, m.record, group=m.wandb_group,
                                   enabled=m.run.is_writer)
    m.events = tensorboard_logger.TensorBoardLogger(
        m.run.path, resume_step=None if m.saved_config is None else m.steps_done,
        enabled=m.run.is_writer)
  steps_per_epoch = len(members[0].exp.dataset.train) // cfg0.batch_size
  shown = progress.Progress(
      num_epochs, start_epoch=members[0].start_epoch, log_every=log_every,
      desc=f"{label} ({len(members)} members) epoch" if len(members) > 1 else label,
      eval_every=cfg0.eval_every_epochs, enabled=members[0].run.is_writer)
  start, status, epoch = time.time(), "completed", members[0].start_epoch
  try:
    stopped_in_setup = stop.received_anywhere()  # Then no epoch is started.
    while epoch < num_epochs and not stopped_in_setup:
      t0 = time.time()
      first, epoch = epoch + 1, call_end(cfg0, epoch, steps_per_epoch)
      alive = np.asarray([m.active for m in members])
      state, objective_MxS, finite_M = program.train(state, range(first, epoch + 1), alive)
      _check_divergence(members, objective_MxS, finite_M, first=first, last=epoch,
                        steps_per_epoch=steps_per_epoch, start=start, shown=shown,
                        prefix=prefix)
      if not any(m.active for m in members):
        break
      stopping = epoch < num_epochs and stop.received_anywhere()
      state = _end_call(members, program, state, objective_MxS[:, -steps_per_epoch:],
                epoch=epoch, stopping=stopping, shown=shown, seconds=time.time() - t0)
      if stopping:
        break
    done = [m for m in members if m.active and m.summary["epochs_completed"] == num_epochs]
    if len(done) < sum(m.active for m in members):
      status = "interrupted"
    if done:
      _finish(members, done, program, state, like=like)
  except KeyboardInterrupt:
    status = "interrupted"
    raise
  except BaseException:
    status = "failed"
    raise
  finally:
    shown.close()  # Before the caller's last line, or the error a raise here leads to.
    for m in members:
      if m.active:
        member_lib.close(m, status, stop=stop, start=start)


def _check_divergence(members: list[Member], objective_MxS: np.ndarray, finite_M: np.ndarray,
                      *, first: int, last: int, steps_per_epoch: int, start: float,
                      shown: progress.Progress, prefix: str) -> None:
  """Marks each member whose objective (epochs `first`..`last`) or state is not finite
  as diverged, and closes its run directory."""
  for i, m in enumerate(members):
    if not m.active:
      continue
    bad = np.flatnonzero(~np.isfinite(objective_MxS[i]))
    if bad.size:
      s = int(bad[0])
      epoch, step = first + s // steps_per_epoch, (first - 1) * steps_per_epoch + s + 1
      why = f"training objective is {objective_MxS[i, s]} at epoch {epoch}, step {step}"
    elif not finite_M[i]:
      epoch, step = last, last * steps_per_epoch
      why = f"the train state holds NaN or Inf after epoch {epoch}, step {step}"
    else:
      continue
    m.active, m.diverged = False, why
    m.summary.update(status="diverged", diverged_at={"epoch": epoch, "step": step},
                     wall_seconds=m.prior_seconds + time.time() - start, steps=m.steps_done)
    m.checkpoints.flush()  # Pending saves hold finite, evaluated states: keep them.
    member_lib.close(m, "diverged", stop=None, start=start, timed=False)
    if len(members) > 1:
      shown.write(f"{prefix}: {m.name} diverged: {why}")


def _end_call(members: list[Member], program, state, objective_MxS: np.ndarray, *,
              epoch: int, stopping: bool, shown: progress.Progress, seconds: float) -> Any:
  """The end of a call's last epoch: evaluation (when due), group DRO's automatic
  adjustment, each member's metrics rows, wandb values and checkpoint, and the
  progress display; returns the state."""
  cfg0 = members[0].config
  num_epochs = cfg0.num_epochs
  evaluated = epoch % cfg0.eval_every_epochs == 0 or epoch == num_epochs
  values_M = program.evaluate(state) if evaluated else None
  if evaluated and cfg0.weighting.automatic_adjustment:  # Every epoch (check_config).
    state = _adjust_dro(members, program, state, values_M)
  steps_M = program.steps_done(state)
  member_state = program.member_states(state)
  for i, m in enumerate(members):
    if not m.active:
      continue
    m.summary["epochs_completed"], m.steps_done = epoch, steps_M[i]
    values = None
    if evaluated:
      values = m.values = values_M[i]
      values["train/objective"] = float(objective_MxS[i].mean())
      values["train/lr"] = experiment.lr_at(m.config, m.exp, m.steps_done)
      m.wandb.log(m.steps_done, {"epoch": epoch, **values})
      m.events.log(m.steps_done, values)
    _record(m, epoch, values, functools.partial(member_state, i),
            force=epoch == num_epochs or stopping)
  bar_text = line = None
  if evaluated:
    bar_text, line = _progress_texts(members, epoch, seconds)
  shown.epoch(epoch, bar_text=bar_text, line=line)
  return state


def _adjust_dro(members: list[Member], program, state, values_M: list[dict[str, float]]):
  """Group DRO's automatic adjustment after an epoch (Sagawa et al. 2020): each
  member's from its own validation group losses and loss averages
  (`group_robust.next_adjustment`), into its state (so that its checkpoint holds
  it) and its values (`train/dro_adjustment_{g}`)."""
  counts = members[0].exp.dataset.train_group_counts

  def adjust(i: int, ema_G: np.ndarray) -> np.ndarray:
    val_G = [values_M[i][f"val/group_{g}_loss"] for g in range(len(counts))]
    return group_robust.next_adjustment(val_G, ema_G, counts)

  state, adj_M = program.with_dro_adjustment(state, adjust)
  for values, adj_G in zip(values_M, adj_M):
    values.update({f"{DRO_ADJUSTMENT}{g}": float(a) for g, a in enumerate(adj_G)})
  return state


def _record(m: Member, epoch: int, values: dict[str, float] | None, state, *,
            force: bool) -> None:
  """Writes the epoch's metrics rows (`values`: None when not evaluated), tracks the
  best epoch and hands the state to the checkpoints (`Checkpoints.end_epoch`)."""
  value, is_best = None, False
  if values is not None:
    rows = []
    for split in experiment.eval_splits(m.exp.dataset):
      prefix = f"{split}/"
      row = {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}
      rows.append({"epoch": epoch, "step": m.steps_done, "split": split, **row})
    m.run.append_metrics(rows)
    value = values[m.config.best_metric]
    if _better(value, m.best_value, m.config.best_mode):
      m.best_epoch, m.best_value, is_best = epoch, value, True
  meta = {"step": m.steps_done, "best_epoch": m.best_epoch, "best_value": m.best_value}
  if m.checkpoints.due(epoch, force=force):
    m.run.sync_metrics()  # The rows a checkpoint's resume keeps are on disk first.
  m.checkpoints.end_epoch(epoch, state, meta=meta, value=value, is_best=is_best, force=force)
  m.summary["best_epoch"] = m.best_epoch


def _progress_texts(members: list[Member], epoch: int, seconds: float) -> tuple[str, str]:
  """The bar text and the line of an evaluated epoch: a run's values, or the
  minimum, median and maximum over the members still training."""
  num_epochs = members[0].config.num_epochs
  live = [m for m in members if m.active]
  if len(members) == 1:
    values = live[0].values
    shown = "  ".join(f"{k} {values[k]:.4f}" for k in LINE_KEYS if k in values)
    return (progress.metrics_text(values), f"epoch {epoch}/{num_epochs}  step "
            f"{live[0].steps_done}  {shown}  ({seconds:.2f}s)")
  accs = [m.values["test/reweighted_acc"] for m in live]
  line = (f"epoch {epoch}/{num_epochs}  {len(live)}/{len(members)} members  "
          f"test/reweighted_acc min {min(accs):.4f} median {np.median(accs):.4f} "
          f"max {max(accs):.4f}  ({seconds:.2f}s)")
  medians = {k: float(np.median([m.values[k] for m in live])) for k in progress.BAR_KEYS}
  alive = f"{len(live)}/{len(members)} alive, " if len(live) < len(members) else ""
  return f"{alive}median " + progress.metrics_text(medians), line


def _finish(members: list[Member], done: list[Member], program, state, *, like) -> None:
  """Final and best values of the members that completed training (`done`): the
  best checkpoints to test are restored and evaluated together, in one call."""
  for m in done:  # Resumed after the last epoch: its values as the epoch logged them.
    m.values = m.values or m.run.epoch_values(m.summary["epochs_completed"])
  if not all(m.values for m in done):  # Those rows were lost: evaluate the state.
    values_M = program.evaluate(state)
    for i, m in enumerate(members):
      if m in done and not m.values:
        m.values = values_M[i]
  restore = [i for i, m in enumerate(members) if m in done and m.config.test_on_best
             and m.best_epoch is not None and m.best_epoch != m.summary["epochs_completed"]]
  best_M = None
  if restore:
    member_state = program.member_states(state)
    rows = [member_state(i) for i in range(len(members))]
    for i in restore:
      rows[i] = members[i].checkpoints.best_state(
          members[i].best_epoch, like=member_state(i) if like is None else like)
    best_M = program.evaluate(program.place_rows(rows))
  for i, m in enumerate(members):
    if m not in done:
      continue
    best = {}
    if m.config.test_on_best and m.best_epoch is not None:
      best = (best_M[i] if i in restore else
              {k: v for k, v in m.values.items()
               if k not in TRAIN_ONLY_KEYS and not k.startswith(DRO_ADJUSTMENT)})
    m.summary.update(status="completed", final=m.values, best=best)
