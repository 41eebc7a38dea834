"""Mirrors a run's config and metrics to Weights & Biases; never its weights.

`metrics.jsonl` is the source of truth; wandb is a view of it and may be missing.

Mode (`config.wandb.mode`): 'online', 'offline' or 'disabled'. Unset, it is
`$WANDB_MODE` when that is set, else 'offline': a run goes online only when the
user asks (`--config.wandb.mode=online` or `WANDB_MODE=online`); an API key from
`wandb login` alone does not send runs anywhere. Offline runs are written under
`<workdir>/wandb/` and can be uploaded later with `wandb sync <workdir>/wandb/offline-run-*`.

wandb must never stop or hang training: start-up is bounded by
`config.wandb.init_timeout` seconds (wandb's own `init_timeout`), and any wandb
error is reported as one warning, after which the run goes on without wandb.

`<workdir>/wandb.json` keeps the wandb run id and the last step logged, so a
resumed run continues the same wandb run and never logs a step twice.

Each logger owns its own wandb run (`reinit='create_new'`), so one process can log
many runs at once: `polyjax.sweep` logs every member as the run `polyjax.main`
would, grouped under the sweep directory's name.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import queue
import sys
import threading
import uuid
from typing import Any, Mapping

from polyjax import run_dir

STATE_FILE = "wandb.json"
MODES = ("online", "offline", "disabled")
_ENV_ALIASES = {"dryrun": "offline", "run": "online"}


def resolve_mode(mode: str | None) -> str:
  """The mode a run uses: `mode` if set, else $WANDB_MODE if valid, else 'offline'."""
  if mode is not None:
    return mode
  env = os.environ.get("WANDB_MODE", "").strip().lower()
  env = _ENV_ALIASES.get(env, env)
  return env if env in MODES else "offline"


def _warn(message: str) -> None:
  print(f"polyjax: warning: wandb: {message}", file=sys.stderr, flush=True)


class _Worker:
  """One daemon thread that runs the submitted calls in order. Daemon: a call stuck
  on a dead network never holds the process's exit."""

  def __init__(self, name: str):
    self._name, self._queue = name, queue.SimpleQueue()
    self._thread: threading.Thread | None = None
    self._lock = threading.Lock()

  def submit(self, fn, *args) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    with self._lock:
      if self._thread is None:
        self._thread = threading.Thread(target=self._loop, daemon=True, name=self._name)
        self._thread.start()
    self._queue.put((future, fn, args))
    return future

  def _loop(self) -> None:
    while True:
      future, fn, args = self._queue.get()
      try:
        future.set_result(fn(*args))
      except BaseException as e:  # Handed to whoever waits on the future.
        future.set_exception(e)


# Every wandb call runs on this thread, in order, so the training loop never waits for
# wandb's import and its service's start-up (a sizeable part of a short run:
# docs/BENCHMARKS.md, "Start-up") or a log; only `finish` waits. A sweep's members
# start one after another.
_WORKER = _Worker("wandb")
# Modes whose start failed in this process. Later runs (a sweep's other members) do
# not try again: each would wait out `init_timeout` for the same reason.
_FAILED_MODES: set[str] = set()
# Modes whose close timed out in this process: later runs' closes (a sweep's other
# members) are not waited for, as each would wait out the same stall.
_STALLED_MODES: set[str] = set()


class WandbLogger:
  """One run's wandb logger; every method is a no-op once wandb is off or has failed.

  The methods queue their work for the wandb thread (`_WORKER`) and return at once;
  `finish` waits for the queue up to the close of the run."""

  def __init__(self, *, workdir: str | os.PathLike, mode: str | None, project: str,
               entity: str | None, name: str | None, tags, config: Mapping[str, Any],
               init_timeout: float, group: str | None = None):
    self.mode = resolve_mode(mode)
    self._state_path = pathlib.Path(workdir) / STATE_FILE
    saved = run_dir.read_json(self._state_path) if self._state_path.exists() else {}
    self.last_step: int = saved.get("last_step", -1)  # Updated by the wandb thread.
    self._logged_before = self.last_step  # By earlier sessions of the run.
    self.run_id: str | None = saved.get("run_id")
    self._timeout = init_timeout
    self._run = None  # Touched by the wandb thread only.
    self._open = self.mode != "disabled"
    if not self._open:
      return
    if self.run_id is None:
      self.run_id = uuid.uuid4().hex[:12]
      self._save_state()  # Before init: an init that dies still leaves the id.
    _WORKER.submit(self._start, dict(
        project=project, entity=entity, name=name or pathlib.Path(workdir).name,
        tags=list(tags), config=dict(config), dir=str(workdir), id=self.run_id,
        group=group, resume="allow", mode=self.mode,
        reinit="create_new"))  # Runs side by side in one process (a sweep).

  def _start(self, kwargs: dict[str, Any]) -> None:
    if self.mode in _FAILED_MODES:
      _warn(f"not started in mode {self.mode!r}: it failed for an earlier run of this "
            f"process; metrics.jsonl has every metric")
      return
    try:
      import wandb  # Imported here: a disabled run never pays for it.
      self._run = wandb.init(**kwargs, settings=wandb.Settings(
          init_timeout=self._timeout, console="off", save_code=False, silent=True))
    except Exception as e:  # wandb raises many types (CommError, UsageError, ...).
      _FAILED_MODES.add(self.mode)
      _warn(f"could not start in mode {self.mode!r} within {self._timeout:g}s "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"training goes on without wandb, metrics.jsonl has every metric")

  def _save_state(self) -> None:
    run_dir.write_json(self._state_path, {"run_id": self.run_id, "last_step": self.last_step})

  def log(self, step: int, values: Mapping[str, float]) -> None:
    """Queues `values` at `step` unless an earlier session of the run logged that step."""
    if self._open and step > self._logged_before:
      _WORKER.submit(self._log, step, dict(values))

  def _log(self, step: int, values: dict[str, float]) -> None:
    if self._run is None:
      return
    try:
      self._run.log(values, step=step)
    except Exception as e:
      _warn(f"logging failed ({type(e).__name__}: {e}); going on without wandb")
      self._run = None
      return
    self.last_step = step
    self._save_state()

  def finish(self, summary: Mapping[str, Any]) -> None:
    """Adds the run summary and closes the run. Waits for the queued work at most
    twice `init_timeout` (a start still under way, then the close), and not at all
    once a close of this process has timed out: uploads can stall on a dead
    network, and must never hold the run's exit."""
    if not self._open:
      return
    self._open = False
    flat = {"status": summary.get("status"), "epochs_completed": summary.get("epochs_completed"),
            "best_epoch": summary.get("best_epoch")}
    for key in ("final", "best"):
      flat.update({f"{key}/{k}": v for k, v in (summary.get(key) or {}).items()})
    closed = _WORKER.submit(self._close, {k: v for k, v in flat.items() if v is not None},
                            0 if summary.get("status") == "completed" else 1)
    wait = 0.0 if self.mode in _STALLED_MODES else 2 * self._timeout
    try:
      closed.result(timeout=wait)
    except concurrent.futures.TimeoutError:
      _STALLED_MODES.add(self.mode)
      _warn(f"did not finish within {wait:g}s; leaving it behind")

  def _close(self, flat: dict[str, Any], exit_code: int) -> None:
    run, self._run = self._run, None
    if run is None:
      return
    try:
      run.summary.update(flat)
      run.finish(exit_code=exit_code)
    except Exception as e:
      _warn(f"finishing the run failed ({type(e).__name__}: {e})")


def for_run(config, workdir: str | os.PathLike, record: Mapping[str, Any], *,
            enabled: bool = True, group: str | None = None) -> WandbLogger:
  """The logger of a run of `config` (its `wandb` section), with the config and the
  run record (`member.run_record`) as the wandb run's config; `enabled=False` (a
  process that does not write the run) disables it."""
  w = config.wandb
  return WandbLogger(workdir=workdir, mode=w.mode if enabled else "disabled",
                     project=w.project, entity=w.entity, name=w.name, tags=w.tags,
                     config={**config.to_dict(), **record}, init_timeout=w.init_timeout,
                     group=group)
