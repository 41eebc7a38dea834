"""Launchers: where the groups of a sweep or a study train.

A *group* is the members of one sweep directory that stack into one compiled
program (`grid.groups`). `polyjax.sweep` and `polyjax.study` hand their sweeps
to `train`, which trains them with one of:

- local (default): this process trains each sweep's groups one after another
  (`sweep.run_sweep`). With `--side_by_side=K`, K groups at a time instead, each in
  a process of its own (submitit's LocalExecutor), spread over the machine's GPUs
  with a 1/K share of a GPU's memory each, or over its CPU cores.
- slurm: one task of a submitit job array per group with training left to do, with
  the partition, time, GPUs, CPUs and memory of `Options`. The tasks write ordinary
  run directories (the work directory must be on a filesystem the nodes share), so
  what reads a local run reads theirs. A task that ends without finishing its
  members (failed, cancelled, killed) is reported with its log path and the other
  tasks go on; the same command again waits for the tasks an earlier launch
  submitted that SLURM still has, and submits only the other groups with training left.
  Preemption and time limits requeue a task, which resumes from its members'
  latest checkpoints (`slurm_task.GroupTask`).

The launcher waits for its tasks by their result files and `squeue`, so a cluster
without job accounting (`sacct`) works too. Logs: `<folder>/<job>_<task>_log.out`
and `.err`, the folder being `<workdir>/slurm` unless set.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import time
from typing import Any, Callable, Mapping, Sequence

from polyjax.errors import ConfigError

LAUNCHERS = ("local", "slurm")
LOG_FOLDER = "slurm"  # Under the sweep's or study's directory.


@dataclasses.dataclass(frozen=True)
class Options:
  """How groups are launched; `from_values` checks them."""
  launcher: str = "local"
  partition: str | None = None  # slurm: the partition (None: the cluster's default).
  time_min: int = 60  # slurm: each task's time limit, minutes; it is requeued at the limit.
  gpus_per_task: int = 0  # slurm: GPUs per task (one group's program uses all it gets).
  cpus_per_task: int = 0  # slurm: CPU cores per task (0: the cores of this machine).
  mem_gb: float = 0.0  # slurm: memory per task (0: the partition's default).
  max_parallel: int = 0  # slurm: tasks of the array running at once (0: no limit).
  side_by_side: int = 1  # local: groups trained at a time, each in its own process.
  folder: str | None = None  # Task logs and files (None: <workdir>/slurm).
  poll_seconds: float = 2.0  # How often the launcher looks at its tasks.

  FIELDS = ("launcher", "partition", "time_min", "gpus_per_task", "cpus_per_task", "mem_gb",
            "max_parallel", "side_by_side", "folder")

  @classmethod
  def from_values(cls, values: Mapping[str, Any], where: str,
                  names: Mapping[str, str] | None = None) -> Options:
    """Options from a dict (a study's `launcher` section, or the flags); ConfigError,
    one line naming the field (`where` + its name, or `names[field]`), if a value
    cannot be used."""
    def name(field):
      return (names or {}).get(field) or f"{where}{field}"

    unknown = sorted(set(values) - set(cls.FIELDS))
    if unknown:
      raise ConfigError(f"{where}{unknown[0]} is not a launcher field; valid: "
                       f"{', '.join(cls.FIELDS)}")
    rules = {"launcher": (lambda v: v in LAUNCHERS, " or ".join(LAUNCHERS)),
             "partition": (lambda v: v is None or (isinstance(v, str) and v.strip()),
                           "a partition name"),
             "time_min": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
             "gpus_per_task": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
             "cpus_per_task": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
             "mem_gb": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                        and 0 <= v < float("inf"), "a number of GB >= 0"),
             "max_parallel": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
             "side_by_side": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
             "folder": (lambda v: v is None or (isinstance(v, str) and v.strip()), "a path")}
    for field, value in values.items():
      check, rule = rules[field]
      if not check(value):
        raise ConfigError(f"{name(field)} must be {rule}, got {value!r}")
    options = cls(**values)
    if options.launcher == "slurm" and options.side_by_side != 1:
      raise ConfigError(f"{name('side_by_side')} is for the local launcher; with slurm, each "
                       "group is a task of its own (ask for fewer GPUs per task instead)")
    return options

  @property
  def in_processes(self) -> bool:
    """Whether groups train in processes of their own (not in this one)."""
    return self.launcher == "slurm" or self.side_by_side > 1


def _int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True)
class Sweep:
  """Members trained under one sweep directory."""
  label: str  # For the user: 'ce_iw stage1', or the sweep directory.
  directory: pathlib.Path
  members: tuple[tuple[str, Any], ...]  # (name, config)


@dataclasses.dataclass
class Outcome:
  """What `train` did: every member's summary (directory/name -> summary), the
  tasks that ended without finishing their members, and a stop signal's name."""
  summaries: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
  failed: list[str] = dataclasses.field(default_factory=list)
  failed_sweeps: set[str] = dataclasses.field(default_factory=set)  # Their labels.
  interrupted: str | None = None


def train(sweeps: Sequence[Sweep], options: Options, *, root: pathlib.Path,
          deterministic: bool, cpu_devices: int, member_batch: int | None, log_every: int,
          out: Callable[[str], None]) -> Outcome:
  """Trains every sweep's members that have training left, with `options`' launcher.

  Args:
    root: the sweep's or study's directory; task logs go to `root/slurm` unless
      `options.folder` says otherwise.
    deterministic, cpu_devices: the whole-process settings each group's process
      makes before JAX starts (`slurm_task.Setup`); the local launcher's own
      process has made them already.
    member_batch, log_every: as for `sweep.run_sweep`.
    out: prints a line for the user.
  """
  if not options.in_processes:
    return _train_here(sweeps, member_batch=member_batch, log_every=log_every)
  from polyjax import grid

  tasks = [(s, f"{s.label} group {i}/{len(gs)}" if len(gs) > 1 else s.label, tuple(g))
           for s in sweeps for gs in [grid.groups(list(s.members))]
           for i, g in enumerate(gs, 1) if _has_training_left(s.directory, g)]
  outcome = Outcome()
  if tasks:
    folder = pathlib.Path(options.folder or pathlib.Path(root) / LOG_FOLDER)
    _run_in_processes(tasks, options, folder, outcome, deterministic=deterministic,
                      cpu_devices=cpu_devices, member_batch=member_batch,
                      log_every=log_every, out=out)
  for s in sweeps:  # Every member's summary as its directory holds it.
    for name, _ in s.members:
      summary = _read_summary(s.directory / name)
      if summary is not None:
        outcome.summaries[str(s.directory / name)] = summary
  return outcome


def _train_here(sweeps, *, member_batch, log_every) -> Outcome:
  from polyjax import sweep_run

  outcome = Outcome()
  for s in sweeps:
    summaries = sweep_run.run_sweep(list(s.members), str(s.directory),
                                    member_batch=member_batch, log_every=log_every)
    outcome.summaries.update({str(s.directory / n): v for n, v in summaries.items()})
    stopped = [v for v in summaries.values() if v.get("status") == "interrupted"]
    if stopped:
      outcome.interrupted = stopped[0].get("signal") or "SIGTERM"
      break
  return outcome


def _has_training_left(directory: pathlib.Path, group) -> bool:
  from polyjax import member as member_lib
  from polyjax import run_dir

  return any(member_lib.finished_summary(config, run_dir.RunDir(directory / name)) is None
             for name, config in group)


def _read_summary(path: pathlib.Path) -> dict[str, Any] | None:
  from polyjax import run_dir

  return run_dir.RunDir(path).read_summary()


# ---------------------------------------------------------------------------
# Flags shared by polyjax.sweep and polyjax.study.

def define_flags() -> dict[str, Any]:
  """The launcher's flags (absl), field -> flag holder."""
  from absl import flags

  d = Options()
  return {
      "launcher": flags.DEFINE_enum("launcher", None, list(LAUNCHERS), "Where groups train: "
                                    f"local (this machine) or slurm (a job array). Default: "
                                    f"a study's launcher section, else {d.launcher}."),
      "partition": flags.DEFINE_string("slurm_partition", None, "slurm: the partition."),
      "time_min": flags.DEFINE_integer("slurm_time_min", None, "slurm: each task's time "
                                       f"limit in minutes (default {d.time_min})."),
      "gpus_per_task": flags.DEFINE_integer("slurm_gpus_per_task", None, "slurm: GPUs per "
                                            "task (default 0)."),
      "cpus_per_task": flags.DEFINE_integer("slurm_cpus_per_task", None, "slurm: CPU cores "
                                            "per task (default: this machine's)."),
      "mem_gb": flags.DEFINE_float("slurm_mem_gb", None, "slurm: memory per task in GB "
                                   "(default: the partition's)."),
      "max_parallel": flags.DEFINE_integer("slurm_max_parallel", None, "slurm: tasks "
                                           "running at once (default: no limit)."),
      "side_by_side": flags.DEFINE_integer("side_by_side", None, "local: groups trained at "
                                           "a time, each in its own process, spread over "
                                           "the GPUs with 1/K of a GPU's memory each "
                                           "(default 1: in this process)."),
      "folder": flags.DEFINE_string("launch_folder", None, "Task logs and files "
                                    "(default: <workdir>/slurm)."),
  }


def options_from_flags(holders: Mapping[str, Any], section: Mapping[str, Any] | None = None,
                       where: str = "") -> Options:
  """Options from a study's `launcher` section (`where` names it in errors), then the
  flags that were given; ConfigError naming the field."""
  values = dict(section or {})
  Options.from_values(values, where)  # The section's own errors name the section.
  values.update({f: h.value for f, h in holders.items() if h.value is not None})
  return Options.from_values(values, where, {f: f"--{h.name}" for f, h in holders.items()
                                             if h.value is not None})


# ---------------------------------------------------------------------------
# Groups in processes of their own: submitit jobs.

def _run_in_processes(tasks, options: Options, folder: pathlib.Path, outcome: Outcome, *,
                      deterministic: bool,
                      cpu_devices: int, member_batch, log_every, out) -> None:
  """Submits `tasks` (sweep, label, group) as submitit jobs, waits for them, and
  adds a line to `outcome.failed` for each that did not finish its members."""
  from polyjax import slurm_task

  attached: list = []
  if options.launcher == "slurm":
    # Tasks an earlier launcher submitted that are still queued or running (its
    # process was stopped): wait for them rather than train their groups twice.
    attached, tasks = _still_queued(tasks, folder)
    if attached:
      out(f"waiting for {len(attached)} group{'s' if len(attached) > 1 else ''} still "
          f"queued from an earlier launch ({', '.join(j.job_id for j, _, _ in attached)})")
    executor = _slurm_executor(options, folder)
    setups = [slurm_task.Setup(deterministic, cpu_devices)] * len(tasks)
    work = [[(list(g), str(s.directory))] for s, _, g in tasks]
    labels = [[label] for _, label, _ in tasks]
    sweep_labels = [[s.label] for s, _, _ in tasks]
  else:
    import submitit

    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=7 * 24 * 60)
    k = min(options.side_by_side, len(tasks))
    setups = _side_by_side_setups(k, deterministic, cpu_devices)
    # Process i trains groups i, i + k, ...: k at a time, none waiting for a slot.
    work = [[(list(g), str(s.directory)) for s, _, g in tasks[i::k]] for i in range(k)]
    labels = [[label for _, label, _ in tasks[i::k]] for i in range(k)]
    sweep_labels = [[s.label for s, _, _ in tasks[i::k]] for i in range(k)]
  jobs = []
  if tasks:
    task = slurm_task.GroupTask()
    with executor.batch():
      jobs = [executor.submit(task, w, setup, member_batch=member_batch, log_every=log_every)
              for w, setup in zip(work, setups)]
    if options.launcher == "slurm":
      _record_submitted(folder, jobs, [t[2] for t in tasks], [t[0] for t in tasks])
    _say_submitted(jobs, len(tasks), options, folder, out)
  jobs += [j for j, _, _ in attached]
  labels += [[label] for _, label, _ in attached]
  sweep_labels += [[s.label] for _, _, s in attached]
  try:
    for job in _finished_jobs(jobs, options):
      lines = _job_failures(job, labels[jobs.index(job)])
      outcome.failed += lines
      if lines:
        outcome.failed_sweeps.update(sweep_labels[jobs.index(job)])
  except KeyboardInterrupt:
    if options.launcher == "slurm":  # The tasks are the cluster's, not this process's.
      ids = " ".join(sorted({j.job_id.split("_")[0] for j in jobs}))
      out(f"stopped waiting; the tasks keep running (squeue): the same command again waits "
          f"for them and submits only what is missing; to stop them, scancel {ids}")
    raise
  if outcome.failed:
    out(f"{len(outcome.failed)} of {len(jobs)} tasks failed or were stopped")


def _say_submitted(jobs, groups: int, options: Options, folder, out) -> None:
  where = (f"SLURM job array {jobs[0].job_id.split('_')[0]}" if options.launcher == "slurm"
           else f"{len(jobs)} local process{'es' if len(jobs) > 1 else ''} side by side")
  out(f"submitted {groups} group{'s' if groups > 1 else ''} as {where}; logs in {folder}")


SUBMITTED = "submitted.json"  # In the task folder: job id -> the group it trains.


def _group_key(directory, group) -> str:
  return json.dumps([str(directory), sorted(name for name, _ in group)])


def _record_submitted(folder: pathlib.Path, jobs, groups, sweeps) -> None:
  path = folder / SUBMITTED
  known = json.loads(path.read_text()) if path.exists() else {}
  known.update({job.job_id: _group_key(s.directory, g) for job, g, s in zip(jobs, groups,
                                                                             sweeps)})
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(known, indent=1))
  tmp.replace(path)


def _still_queued(tasks, folder: pathlib.Path):
  """(job, label, sweep) of each task whose group an earlier launcher submitted and
  SLURM still has, and the tasks left to submit."""
  path = folder / SUBMITTED
  queue = squeue_ids() if path.exists() else None
  if not queue:
    return [], tasks
  from submitit.slurm import slurm

  by_group = {key: job_id for job_id, key in json.loads(path.read_text()).items()
              if job_id in queue}
  attached, left = [], []
  for s, label, g in tasks:
    job_id = by_group.get(_group_key(s.directory, g))
    if job_id is None:
      left.append((s, label, g))
    else:
      attached.append((slurm.SlurmJob(folder=folder, job_id=job_id), label, s))
  return attached, left


def _slurm_executor(options: Options, folder: pathlib.Path):
  import submitit

  from polyjax import sweep_run

  executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=3)
  params: dict[str, Any] = {"time": options.time_min, "job_name": "polyjax",
                            "cpus_per_task": options.cpus_per_task or sweep_run.usable_cores()}
  if options.partition:
    params["partition"] = options.partition
  if options.gpus_per_task:
    params["gpus_per_task"] = options.gpus_per_task
  if options.mem_gb:
    params["mem"] = f"{int(options.mem_gb * 1024)}M"
  if options.max_parallel:
    params["array_parallelism"] = options.max_parallel
  executor.update_parameters(**params)
  return executor


def _side_by_side_setups(k: int, deterministic: bool, cpu_devices: int):
  from polyjax import slurm_task

  gpus = _gpu_ids()
  if not gpus:  # Each process makes devices of its share of the cores.
    return [slurm_task.Setup(deterministic, max(1, cpu_devices // k))] * k
  per_gpu = -(-k // len(gpus))
  return [slurm_task.Setup(deterministic, 0, gpu=gpus[i % len(gpus)],
                           memory_fraction=0.95 / per_gpu) for i in range(k)]


def _gpu_ids() -> list[str]:
  """The GPUs this machine lets processes use (CUDA_VISIBLE_DEVICES, else nvidia-smi)."""
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    return [g for g in visible.split(",") if g.strip()]
  try:
    text = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True,
                          timeout=60).stdout
  except (OSError, subprocess.SubprocessError):
    return []
  return [str(i) for i, line in enumerate(text.splitlines()) if line.startswith("GPU ")]


def _finished_jobs(jobs, options: Options):
  """Yields each job once it has ended: its result file is written, or (slurm) it
  has left the queue twice in a row without one."""
  left, gone = list(jobs), set()
  while left:
    queue = squeue_ids() if options.launcher == "slurm" else None
    for job in list(left):
      if job.paths.result_pickle.exists():
        ended = True
      elif options.launcher == "slurm":
        ended = queue is not None and job.job_id not in queue and job.job_id in gone
        if queue is not None and job.job_id not in queue:
          gone.add(job.job_id)
      else:
        ended = job.done()
      if ended:
        left.remove(job)
        yield job
    if left:
      time.sleep(options.poll_seconds)


def _job_failures(job, labels: list[str]) -> list[str]:
  """Lines for the groups of `job` that did not finish their members, with its log."""
  log = job.paths.stderr
  try:
    summaries = job.result()
  except Exception as e:  # noqa: BLE001  (a task's error is reported, the rest goes on)
    # The task's own exception: the last line of its traceback that names one.
    errors = [line.strip() for line in str(e).splitlines()
              if re.match(r"^\s*[A-Za-z_.]+(Error|Exception|Exit|Interrupt)\b", line)]
    why = f"failed: {errors[-1] if errors else type(e).__name__}"
    if not job.paths.result_pickle.exists():
      why = "ended without a result (cancelled or killed)"
    return [f"{label}: task {job.job_id} {why}; log: {log}" for label in labels]
  stopped = sorted({s.get("signal") or "a signal" for s in summaries.values()
                    if s.get("status") == "interrupted"})
  if stopped:
    return [f"{label}: task {job.job_id} was stopped by {', '.join(stopped)} before its "
            f"members finished; log: {log}" for label in labels]
  return []


def squeue_ids() -> set[str] | None:
  """The ids of this user's jobs in SLURM's queue, array tasks as '<job>_<task>';
  None if squeue cannot be asked."""
  try:
    text = subprocess.run(["squeue", "--noheader", "--array", "--me", "--format=%i"],
                          capture_output=True, text=True, check=True, timeout=60).stdout
  except (OSError, subprocess.SubprocessError):
    return None
  return {line.strip() for line in text.splitlines() if line.strip()}
