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


# wandb starts in the background, so that its import and its service's start-up
# (about 1.5 s of a short run) overlap the compilation of the run's programs. One
# thread starts every logger's run in turn: a sweep's members start one after another.
_STARTER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="wandb-init")
# Modes whose start failed in this process. Later runs (a sweep's other members) do
# not try again: each would wait out `init_timeout` for the same reason.
_FAILED_MODES: set[str] = set()


class WandbLogger:
  """One run's wandb logger; every method is a no-op once wandb is off or has failed.

  The wandb run starts in the background; the first `log` or `finish` waits for it
  (wandb bounds its start by `init_timeout`)."""

  def __init__(self, *, workdir: str | os.PathLike, mode: str | None, project: str,
               entity: str | None, name: str | None, tags, config: Mapping[str, Any],
               init_timeout: float, group: str | None = None):
    self.mode = resolve_mode(mode)
    self._state_path = pathlib.Path(workdir) / STATE_FILE
    saved = run_dir.read_json(self._state_path) if self._state_path.exists() else {}
    self.last_step: int = saved.get("last_step", -1)
    self.run_id: str | None = saved.get("run_id")
    self._timeout = init_timeout
    self._run = None
    self._starting: concurrent.futures.Future | None = None
    if self.mode == "disabled":
      return
    if self.run_id is None:
      self.run_id = uuid.uuid4().hex[:12]
      self._save_state()  # Before init: an init that dies still leaves the id.
    kwargs = dict(project=project, entity=entity, name=name or pathlib.Path(workdir).name,
                  tags=list(tags), config=dict(config), dir=str(workdir), id=self.run_id,
                  group=group, resume="allow", mode=self.mode,
                  reinit="create_new")  # Runs side by side in one process (a sweep).
    self._starting = _STARTER.submit(self._start, kwargs)

  def _start(self, kwargs: dict[str, Any]):
    if self.mode in _FAILED_MODES:
      _warn(f"not started in mode {self.mode!r}: it failed for an earlier run of this "
            f"process; metrics.jsonl has every metric")
      return None
    try:
      import wandb  # Imported here: a disabled run never pays for it.
      return wandb.init(**kwargs, settings=wandb.Settings(
          init_timeout=self._timeout, console="off", save_code=False, silent=True))
    except Exception as e:  # wandb raises many types (CommError, UsageError, ...).
      _FAILED_MODES.add(self.mode)
      _warn(f"could not start in mode {self.mode!r} within {self._timeout:g}s "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"training goes on without wandb, metrics.jsonl has every metric")
      return None

  def _started(self) -> None:
    """Waits for the background start (once)."""
    if self._starting is not None:
      self._run, self._starting = self._starting.result(), None

  @property
  def active(self) -> bool:
    self._started()
    return self._run is not None

  def _save_state(self) -> None:
    run_dir.write_json(self._state_path, {"run_id": self.run_id, "last_step": self.last_step})

  def log(self, step: int, values: Mapping[str, float]) -> None:
    """Logs `values` at `step` unless that step was already logged (by this or an
    earlier session of the run)."""
    self._started()
    if self._run is None or step <= self.last_step:
      return
    try:
      self._run.log(dict(values), step=step)
    except Exception as e:
      _warn(f"logging failed ({type(e).__name__}: {e}); going on without wandb")
      self._run = None
      return
    self.last_step = step
    self._save_state()

  def finish(self, summary: Mapping[str, Any]) -> None:
    """Adds the run summary and closes the run, waiting at most `init_timeout` seconds."""
    self._started()
    if self._run is None:
      return
    run, self._run = self._run, None
    flat = {"status": summary.get("status"), "epochs_completed": summary.get("epochs_completed"),
            "best_epoch": summary.get("best_epoch")}
    for key in ("final", "best"):
      flat.update({f"{key}/{k}": v for k, v in (summary.get(key) or {}).items()})

    def close():
      try:
        run.summary.update({k: v for k, v in flat.items() if v is not None})
        run.finish(exit_code=0 if summary.get("status") == "completed" else 1)
      except Exception as e:
        _warn(f"finishing the run failed ({type(e).__name__}: {e})")

    # Uploads can stall on a dead network; never let that hold the run's exit.
    closer = threading.Thread(target=close, daemon=True, name="wandb-finish")
    closer.start()
    closer.join(self._timeout)
    if closer.is_alive():
      _warn(f"did not finish within {self._timeout:g}s; leaving it behind")
