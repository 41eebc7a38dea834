"""Studies: the paper's tuning protocol over every cell of a table, as one command.

    python -m polyjax.study --study=configs/studies/digits_mini.py --workdir=DIR \\
        [--config.<field>=<value> ...]

A study file (configs/studies/*.py, docs/studies.md) defines `get_study()`: its cells
(a config, overrides, a row and a column of the table), the protocol and the table's
layout; --config overrides apply to every cell. Per cell: stage 1 trains the (batch
size x lr) grid (`sweep.run_sweep`, DIR/<cell>/stage1), `study_report.select` picks
each batch size's lr on validation metrics only (DIR/<cell>/selection.json), stage 2
trains the seeds of each choice (DIR/<cell>/stage2); then results.csv
(`analysis.collect`) and the report (`study_report.write_report`). A rerun skips what
is done: it resumes a study stopped anywhere (kill -9 too) to the same report.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pathlib
import shutil
import signal
import sys
from typing import Any, Callable, Mapping

import ml_collections

from polyjax import cli, launch, run_dir, stage1, study_file, study_report
from polyjax import config as config_lib
from polyjax.errors import ConfigError
# Reading study files; their names are this module's too (study.load_study, ...).
from polyjax.study_file import Cell, Study, StudyError, load_study, parse_study  # noqa: F401

SELECTION = "selection.json"
RESULTS = "results.csv"
# Set per run by the protocol, so an override of them for every cell would be overwritten.
PROTOCOL_FIELDS = ("lr", "batch_size", "seed")

# ---------------------------------------------------------------------------
# Configs and members.

def resolve_config_path(spec: str, study_path: str) -> str:
  """`spec` with its file found as given (from the current directory), else from the
  study file's directory or one of its parents ('configs/table.py' from anywhere)."""
  path, arg = config_lib.split_config_spec(spec)
  found = pathlib.Path(path)
  if not found.is_file() and not found.is_absolute():
    for parent in pathlib.Path(study_path).resolve().parents:
      if (parent / path).is_file():
        found = parent / path
        break
  return str(found) + ("" if arg is None else f":{arg}")


def cell_config(study: Study, cell: Cell, overrides: Mapping[str, Any]
                ) -> ml_collections.ConfigDict:
  """The cell's config: its file's, then the cell's overrides, then the command's."""
  where = f"study file {study.path}: cell {cell.name}"
  spec = resolve_config_path(cell.config, study.path)
  try:
    config = cli.check_config_file(spec)
  except ValueError as e:
    raise StudyError(f"{where}: {e}") from None
  for source, fields in (("overrides", cell.overrides), ("--config", overrides)):
    for field, value in fields.items():
      try:
        config_lib.set_field(config, field, value)
      except (ConfigError, TypeError, ValueError) as e:
        raise StudyError(f"{where}: {source}: {e}") from None
  return config


def paper_numbers(study: Study, cell: Cell) -> dict[str, float]:
  """The paper's numbers for the cell: its own `paper`, else its config file's `PAPER`
  dict under the config's argument ('final': last epoch, 'best': ES); {} if none."""
  if cell.paper is not None:
    return cell.paper
  path, arg = config_lib.split_config_spec(resolve_config_path(cell.config, study.path))
  if arg is None:
    return {}
  paper = getattr(config_lib.load_config_module(path, "_polyjax_study_paper"), "PAPER", {})
  return study_file.paper_values(paper.get(arg)) or {}


def _with(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  config = copy.deepcopy(config)
  for field, value in fields.items():
    config_lib.set_field(config, field, value)
  return config


def stage1_members(study: Study, cell: Cell, config) -> list[tuple[str, Any]]:
  """(name, config) of every stage-1 run: batch size x lr, the stage-1 seed."""
  return [(f"batch_size={b},lr={lr}", _with(config, batch_size=b, lr=lr, seed=study.stage1_seed))
          for b in cell.batch_sizes for lr in cell.lrs]


def stage2_members(study: Study, config, selection: dict) -> list[tuple[str, Any]]:
  """(name, config) of every stage-2 run: each batch size's chosen lr x the seeds."""
  return [(study_report.stage2_name(c["batch_size"], c["lr"], s),
           _with(config, batch_size=int(c["batch_size"]), lr=float(c["lr"]), seed=s))
          for c in selection["by_batch_size"] if c.get("lr") is not None for s in study.seeds]


def prepare(study: Study, overrides: Mapping[str, Any]) -> dict[str, Any]:
  """Every cell's config, with all its stage-1 members and a stage-2 one validated:
  bad input is reported before anything is written. Cell name -> config. A cell
  that reads another cell's runs (`stage1_cell`) is checked against that cell's
  config here, and against its runs once they are trained (`_reading`)."""
  tuned = [f for f in PROTOCOL_FIELDS if f in overrides
           and (f == "seed" or any(c.lrs for c in study.cells))]
  if tuned:
    raise StudyError(f"--config.{tuned[0]} is set per run by the study's protocol; change "
                     f"its protocol in {study.path} instead")
  configs = {}
  for cell in study.cells:
    where = f"study file {study.path}: cell {cell.name}"
    config = cell_config(study, cell, overrides)
    if cell.stage1_cell is not None:
      _check_reader(config, where)
    members = stage1_members(study, cell, config) or [("fixed", config)]
    for name, member in members + [("stage 2", _with(members[0][1], seed=study.seeds[0]))]:
      try:
        config_lib.validate(member, device_count=1,
                            read_stage1_dir=cell.stage1_cell is None)
      except ConfigError as e:
        raise StudyError(f"{where} ({name}): {e}") from None
    configs[cell.name] = config
  for cell in study.cells:
    if cell.stage1_cell is not None:
      try:
        stage1.check_stage1_config(configs[cell.name], configs[cell.stage1_cell].to_dict(),
                                   f"its stage1_cell {cell.stage1_cell!r}")
      except ConfigError as e:
        raise StudyError(f"study file {study.path}: cell {cell.name}: {e}") from None
  return configs


def _check_reader(config, where: str) -> None:
  """StudyError unless the config of a cell with a `stage1_cell` reads a stage-1 run
  and leaves `method.stage1_dir` to the study."""
  if not stage1.uses_stage1(config):
    raise StudyError(f"{where}: stage1_cell is set, but its config reads no stage-1 run "
                     f"(method.name {config.method.name!r}, weighting.source "
                     f"{config.weighting.source!r})")
  if config.method.stage1_dir is not None:
    raise StudyError(f"{where}: its config sets method.stage1_dir "
                     f"({config.method.stage1_dir!r}); with stage1_cell the study sets it "
                     "to that cell's run of each seed")


# ---------------------------------------------------------------------------
# Running a study.

class StudyInterrupted(Exception):
  """A signal stopped the study's training; the message names it."""


def pending(members: list[tuple[str, Any]], directory: pathlib.Path) -> int:
  """How many members still have training to do in `directory`; StudyError if one's
  directory holds a run of a config that differs in a field that matters."""
  from polyjax import member as member_lib

  todo = 0
  for name, config in members:
    run = run_dir.RunDir(directory / name)
    saved = run.read_config()
    if saved is None:
      todo += 1
      continue
    current = config.to_dict()
    changed = config_lib.resume_changes({k: v for k, v in saved.items() if k in current},
                                        current)
    # Longer runs would keep the shorter runs' rows in results.csv (collect skips them).
    changed += [f for f in ("num_epochs",) if f not in changed and saved.get(f) != config[f]]
    if changed:
      raise StudyError(f"{run.path} holds a run whose config differs in {', '.join(changed)}: "
                       "the study or its --config overrides changed since it ran; use "
                       "another --workdir, or the overrides it ran with")
    todo += member_lib.finished_summary(config, run) is None
  return todo


class StudyIncomplete(Exception):
  """Some groups' tasks ended without finishing; the message says how many."""


def _stage(study: Study, workdir: pathlib.Path, stage: str, members_of, *, cells,
           launching: dict[str, Any], out) -> set[str]:
  """Trains one stage of `cells`, every cell's directories checked first; returns
  the names of the cells whose training did not finish (a launcher's failed task)."""
  members = {c.name: members_of(c) for c in cells}
  todo = {name: pending(m, workdir / name / stage) for name, m in members.items()}
  sweeps = []
  for name, runs in members.items():
    label, directory = f"{name} {stage}", workdir / name / stage
    if runs and not todo[name]:
      out(f"{label}: all {len(runs)} runs done")
    elif runs:
      out(f"{label}: training {todo[name]} of {len(runs)} runs in {directory}")
      sweeps.append(launch.Sweep(label, directory, tuple(runs)))
  outcome = launch.train(sweeps, out=out, **launching)
  if outcome.interrupted:
    raise StudyInterrupted(outcome.interrupted)
  for line in outcome.failed:
    out(f"did not finish: {line}")
  return {s.label.removesuffix(f" {stage}") for s in sweeps if s.label in outcome.failed_sweeps}


def _run_level(study: Study, workdir: pathlib.Path, configs, selections: dict, cells,
               failed: set[str], *, launching, out) -> set[str]:
  """Stage 1, selection and stage 2 of `cells` (one level of `chain_levels`), after
  the levels whose runs they read; returns the cells that did not finish."""
  waiting = {c.name for c in cells if c.stage1_cell in failed}
  for cell in cells:
    if cell.name in waiting:
      out(f"{cell.name}: waits for the runs of cell {cell.stage1_cell}, which did not finish")
  cells = [c for c in cells if c.name not in waiting]

  def members(cell: Cell, stage: str) -> list[tuple[str, Any]]:
    config = configs[cell.name]
    runs = (stage1_members(study, cell, config) if stage == "stage1"
            else stage2_members(study, config, selections[cell.name]))
    return _reading(study, workdir, cell, runs, selections, stage, out)

  unfinished = waiting | _stage(study, workdir, "stage1", lambda c: members(c, "stage1"),
                                cells=cells, launching=launching, out=out)
  for cell in [c for c in cells if c.name not in unfinished]:  # Stage 1 whole first.
    selections[cell.name] = study_report.select(
        study, cell, stage1_members(study, cell, configs[cell.name]), configs[cell.name],
        workdir)
    study_report.write_file(workdir / cell.name / SELECTION, selections[cell.name])
  return unfinished | _stage(study, workdir, "stage2", lambda c: members(c, "stage2"),
                             cells=[c for c in cells if c.name not in unfinished],
                             launching=launching, out=out)


def _reading(study: Study, workdir: pathlib.Path, cell: Cell, runs: list[tuple[str, Any]],
             selections: dict, stage: str, out) -> list[tuple[str, Any]]:
  """`runs` of a cell with a `stage1_cell`, each with its `method.stage1_dir`: that
  cell's selected stage-1 run (for stage 1), or its stage-2 run of the same seed and
  selected (batch size, lr). Runs whose stage-1 run did not complete are left out,
  with a line saying so; the rest are validated against their stage-1 runs."""
  if cell.stage1_cell is None or not runs:
    return runs
  read = cell.stage1_cell
  chosen = selections[read]["selected"]
  if chosen is None:
    out(f"{cell.name} {stage}: cell {read} selected no lr, so there is no run to read")
    return []
  out_runs = []
  for name, config in runs:
    path = (workdir / chosen["run"] if stage == "stage1" else
            workdir / read / "stage2" / study_report.stage2_name(
                chosen["batch_size"], chosen["lr"], config.seed)).resolve()
    status = (run_dir.RunDir(path).read_summary() or {}).get("status", "not run")
    if status != "completed":
      out(f"{cell.name} {stage}: {name} is left out: it reads {path}, whose run is {status}")
      continue
    config = _with(config, **{"method.stage1_dir": str(path)})
    try:
      config_lib.validate(config, device_count=1)
    except ConfigError as e:
      raise StudyError(f"study file {study.path}: cell {cell.name} ({name}): {e}") from None
    out_runs.append((name, config))
  return out_runs


def run_study(study: Study, workdir: str | os.PathLike, configs: dict[str, Any],
              overrides: Mapping[str, Any] | None = None, *, member_batch: int | None = None,
              log_every: int = 0, launcher: launch.Options | None = None,
              cpu_devices: int = 0, out: Callable[[str], None] | None = None) -> pathlib.Path:
  """Runs, resumes or finishes the study in `workdir`; returns the report's path.
  `configs`: `prepare(study, overrides)`'s; `member_batch`, `log_every`: as for
  `sweep.run_sweep`; `launcher`: where groups train (default: here, `launch`), with
  `cpu_devices` made of the CPU in their processes; `out` prints a progress line
  (default: stdout). Raises StudyIncomplete, after the rest of the study has run,
  if a launcher's task did not finish (the report is then not written)."""
  out = out or (lambda line: print(f"polyjax.study: {line}", flush=True))
  workdir = pathlib.Path(workdir)
  created = not workdir.exists()
  lock = run_dir.RunDir(workdir)
  lock.lock()  # One study process per directory; the sweeps lock their own.
  try:
    launching = dict(options=launcher or launch.Options(), root=workdir, cpu_devices=cpu_devices,
                     deterministic=bool(next(iter(configs.values())).deterministic),
                     member_batch=member_batch, log_every=log_every)
    failed: set[str] = set()
    selections: dict[str, dict] = {}
    for level in study_file.chain_levels(study):  # Cells read only earlier levels' runs.
      failed |= _run_level(study, workdir, configs, selections, level, failed,
                           launching=launching, out=out)
    if failed:
      raise StudyIncomplete(f"{len(failed)} of {len(study.cells)} cells did not finish "
                            f"({', '.join(sorted(failed))}; the tasks and logs are listed "
                            "above)")
    return _report(study, workdir, selections, overrides, out)
  except BaseException:
    if created and not any(workdir.rglob(run_dir.CONFIG)):
      shutil.rmtree(workdir, ignore_errors=True)  # Nothing ran (e.g. missing data).
    raise
  finally:
    lock.unlock()


def _report(study: Study, workdir: pathlib.Path, selections, overrides, out) -> pathlib.Path:
  """Collects the stage-2 runs into results.csv and writes the report."""
  roots = [workdir / c.name / "stage2" for c in study.cells]
  if any(r.is_dir() for r in roots):  # Rows results.csv has are skipped.
    from polyjax.analysis import collect

    counts = collect.collect([r for r in roots if r.is_dir()], workdir / RESULTS,
                             task="logged", statuses=("completed",),
                             splits=sorted({study.table_metric.split("/")[0], "val"}))
    out(f"{RESULTS}: {counts.summary()}")
  papers = {c.name: paper_numbers(study, c) for c in study.cells}
  study_report.write_file(workdir / "study.json", {"study": dataclasses.asdict(study),
                                                   "overrides": dict(overrides or {})})
  return study_report.write_report(study, workdir, selections, papers, dict(overrides or {}),
                                   out)


# ---------------------------------------------------------------------------
# Command line.

def main(argv: list[str]) -> int:
  from absl import app, flags

  from polyjax import checkpointing, data, sweep, xla_runtime

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_logs()
  try:
    study = load_study(_STUDY.value)
    overrides = {f: config_lib.get_field(flags.FLAGS["config"].value, f)
                 for f in override_fields(sys.argv)}
    configs = prepare(study, overrides)
    # Whole-process settings, before JAX starts.
    xla_runtime.set_deterministic(sweep.process_deterministic(list(configs.items())))
    sweep.check_one_process(os.environ)
    options = launch.options_from_flags(_LAUNCH, study.launcher,
                                        f"study file {study.path}: launcher.")
    count = 0
    if not sweep.cpu_count_set(os.environ) and _MEMBER_BATCH.value != 1:
      # Devices as a sweep makes them: each batch size's lrs, then the seeds, split evenly.
      count = sweep.cpu_device_count(options.cpus_per_task or sweep.usable_cores(),
                                     [len(c.lrs) for c in study.cells if c.lrs] +
                                     [len(study.seeds)])
      if count > 1 and not options.in_processes:
        sweep.split_cpu(count)
    report = run_study(study, _WORKDIR.value, configs, overrides, launcher=options,
                       cpu_devices=count, member_batch=_MEMBER_BATCH.value or None,
                       log_every=_LOG_EVERY.value)
  except (ConfigError, checkpointing.CheckpointDirError, run_dir.RunDirBusy,
          data.DataMissing) as e:
    print(f"polyjax.study: error: {e}", file=sys.stderr)
    return 2
  except StudyIncomplete as e:
    print(f"polyjax.study: {e}; rerun the same command to train what is missing",
          file=sys.stderr)
    return 1
  except StudyInterrupted as e:
    print(f"polyjax.study: interrupted by {e}; rerun the same command to resume",
          file=sys.stderr)
    return 128 + signal.Signals[str(e)].value
  text = report.read_text()
  start = text.index("## Results")  # The main table, as the report shows it.
  print(text[start:text.index("\n## ", start + 1)].rstrip())
  return 0


def override_fields(argv: list[str]) -> list[str]:
  """The config fields that `--config.<field>=<value>` arguments of `argv` set."""
  return [a[len("--config."):].split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]


_STUDY = _WORKDIR = _MEMBER_BATCH = _LOG_EVERY = None
_LAUNCH: dict[str, Any] = {}


def run() -> None:
  """Defines the flags and runs `main`."""
  global _STUDY, _WORKDIR, _MEMBER_BATCH, _LOG_EVERY, _LAUNCH
  from absl import app, flags
  from ml_collections import config_flags

  for field in override_fields(sys.argv):  # ml_collections would raise a traceback.
    try:
      config_lib.get_field(config_lib.base_config(), field)
    except ConfigError as e:
      cli.fail("polyjax.study", f"--config.{field}: {e}")
  config_flags.DEFINE_config_dict("config", config_lib.base_config(), "Fields to set in "
                                  "every cell's config: --config.<field>=<value>.",
                                  lock_config=True)
  _STUDY = flags.DEFINE_string("study", None, "Study file (configs/studies/*.py).")
  _WORKDIR = flags.DEFINE_string("workdir", None, "Study directory; an existing one is "
                                 "resumed.")
  _MEMBER_BATCH = flags.DEFINE_integer("member_batch", 0, "As for polyjax.sweep: members "
                                       "trained side by side at a time (0: all).",
                                       lower_bound=0)
  _LOG_EVERY = flags.DEFINE_integer("log_every", 0, "As for polyjax.sweep: print every Nth "
                                    "evaluated epoch's line.", lower_bound=0)
  _LAUNCH = launch.define_flags()
  flags.mark_flags_as_required(["study", "workdir"])
  from polyjax import lifecycle

  app.run(lambda argv: lifecycle.exit(main(argv)),
          flags_parser=lambda argv: cli.parse_flags(argv, "polyjax.study"))


if __name__ == "__main__":
  run()
