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
import json
import math
import os
import pathlib
import re
import shutil
import signal
import sys
from typing import Any, Callable, Mapping

import ml_collections

from polyjax import cli, run_dir, study_report
from polyjax import config as config_lib
from polyjax.errors import ConfigError

SELECTION = "selection.json"
RESULTS = "results.csv"
AT_RULES = ("last", "best")  # The selection metric at the last evaluated epoch, or its best.
ES_RULES = ("best_val_reweighted_acc", "best_val_worst_group_acc")  # tasks.LOGGED_RULES
# Set per run by the protocol, so an override of them for every cell would be overwritten.
PROTOCOL_FIELDS = ("lr", "batch_size", "seed")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_REQUIRED = object()


class StudyError(ConfigError):
  """A study file that cannot be run; the message names the file and the field."""


@dataclasses.dataclass(frozen=True)
class Cell:
  """One cell of the table: a config and where its numbers go."""
  name: str
  config: str  # 'path' or 'path:arg', as written in the study file.
  row: str
  column: str
  overrides: dict[str, Any]
  lrs: tuple[float, ...]  # Empty: no stage 1; stage 2 runs the config's own lr and batch size.
  batch_sizes: tuple[int, ...]
  paper: dict[str, float]  # The paper's number: 'final' (last epoch), 'best' (ES).


@dataclasses.dataclass(frozen=True)
class Study:
  path: str
  title: str
  description: str
  cells: tuple[Cell, ...]
  metric: str  # Selection metric, 'val/<name>'.
  at: str  # AT_RULES.
  stage1_seed: int
  seeds: tuple[int, ...]
  rows: tuple[str, ...]
  columns: tuple[str, ...]  # Cell columns, and '<column>-ES' for their early-stopped value.
  table_metric: str  # '<split>/<name>', e.g. 'test/reweighted_acc'.
  es_rule: str
  paired: tuple[tuple[str, str], ...]  # (row a, row b): b - a, per column.


# ---------------------------------------------------------------------------
# Reading a study file.

def _is_str(v):
  return isinstance(v, str) and bool(v.strip())


def _is_num(v, low=-math.inf):
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > low


def _is_int(v, low=-1):
  return isinstance(v, int) and not isinstance(v, bool) and v > low


def _list_of(check, nonempty=False):
  return lambda v: isinstance(v, list) and (bool(v) or not nonempty) and all(map(check, v))


# Each section's fields: name -> (check, rule, default); _REQUIRED: no default; None:
# a default that depends on other fields.
_TOP = {
    "title": (_is_str, "a non-empty string", None),
    "description": (lambda v: isinstance(v, str), "a string", ""),
    "protocol": (lambda v: isinstance(v, dict), "a dict", _REQUIRED),
    "cells": (_list_of(lambda v: True, nonempty=True), "a non-empty list", _REQUIRED),
    "table": (lambda v: isinstance(v, dict), "a dict", {})}
_PROTOCOL = {
    "lrs": (_list_of(lambda v: _is_num(v, 0)), "a list of lrs > 0 (empty: no stage 1)",
            _REQUIRED),
    "batch_sizes": (_list_of(lambda v: _is_int(v, 0)), "a list of batch sizes >= 1", [64, 512]),
    "metric": (lambda v: _is_str(v) and v.startswith("val/") and len(v) > 4,
               "a validation metric 'val/<name>'", "val/reweighted_acc"),
    "at": (lambda v: v in AT_RULES, " or ".join(map(repr, AT_RULES)), _REQUIRED),
    "stage1_seed": (_is_int, "an integer >= 0", 0),
    "seeds": (lambda v: _is_int(v, 0) or (_list_of(_is_int, True)(v) and len(set(v)) == len(v)),
              "a count >= 1 or a list of distinct seeds >= 0", _REQUIRED)}
_TABLE = {
    "rows": (_list_of(_is_str, True), "a list of row labels", None),
    "columns": (_list_of(_is_str, True), "a list of column labels", None),
    "metric": (lambda v: _is_str(v) and v.count("/") == 1, "'<split>/<metric>'",
               "test/reweighted_acc"),
    "es_rule": (lambda v: v in ES_RULES, f"one of {', '.join(ES_RULES)}", ES_RULES[0]),
    "paired": (_list_of(lambda p: _list_of(_is_str)(p) and len(p) == 2),
               "a list of [row a, row b] pairs", [])}
_CELL = {
    "name": (lambda v: isinstance(v, str) and bool(_NAME.match(v)),
             "a directory name (letters, digits, '_.+-')", _REQUIRED),
    "config": (_is_str, "a config 'path[:arg]'", _REQUIRED),
    "row": (_is_str, "a row label", _REQUIRED), "column": (_is_str, "a column label", _REQUIRED),
    "overrides": (lambda v: isinstance(v, dict), "a dict field -> value", {}),
    "lrs": (_PROTOCOL["lrs"][0], _PROTOCOL["lrs"][1], None),
    "batch_sizes": (_PROTOCOL["batch_sizes"][0], _PROTOCOL["batch_sizes"][1], None),
    "paper": (lambda v: v is None or _is_num(v) or (isinstance(v, dict) and set(v) <= {
        "final", "best"} and all(map(_is_num, v.values()))),
              "a number or {'final': x, 'best': y}", None)}


def _section(source: str, where: str, data: Any, schema: dict) -> dict[str, Any]:
  """The fields of one section, checked against `schema`; StudyError naming the field."""
  def error(text):
    return StudyError(f"study file {source}: {text}")
  if not isinstance(data, dict):
    raise error(f"{where.rstrip('.') or 'get_study()'} must be a dict, got {type(data).__name__}")
  unknown = sorted(set(data) - set(schema))
  if unknown:
    raise error(f"{where}{unknown[0]} is not a study field; valid: {', '.join(schema)}")
  out = {}
  for key, (check, rule, default) in schema.items():
    if key not in data and default is _REQUIRED:
      raise error(f"{where}{key} is missing")
    out[key] = data.get(key, copy.deepcopy(default))
    if key in data and not check(data[key]):
      raise error(f"{where}{key} must be {rule}, got {data[key]!r}")
  return out


def load_study(path: str) -> Study:
  """The study of file `path` (its `get_study()`); StudyError, one line, if it cannot run."""
  if not os.path.isfile(path):
    raise StudyError(f"study file {path} does not exist")
  try:
    module = config_lib.load_config_module(path, "_polyjax_study")
  except SyntaxError as e:
    raise StudyError(f"study file {path}: syntax error at line {e.lineno}: {e.msg}") from None
  except Exception as e:  # noqa: BLE001  (any error in the user's file is reported)
    raise StudyError(f"study file {path} failed to load: {type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''}") from None
  if not callable(getattr(module, "get_study", None)):
    raise StudyError(f"study file {path} defines no get_study() function")
  try:
    # Plain dicts, lists and scalars, whatever mix of ConfigDicts and tuples it returns.
    spec = json.loads(json.dumps(module.get_study(), default=lambda o: o.to_dict()))
  except Exception as e:  # noqa: BLE001
    raise StudyError(f"study file {path}: get_study() raised {type(e).__name__}: {e}") from None
  return parse_study(spec, path)


def parse_study(spec: Any, path: str) -> Study:
  """A `Study` of a plain dict (`get_study()`'s value); StudyError naming the field."""
  top = _section(path, "", spec, _TOP)
  proto = _section(path, "protocol.", top["protocol"], _PROTOCOL)
  table = _section(path, "table.", top["table"], _TABLE)
  cells = []
  for i, raw in enumerate(top["cells"]):
    c = _section(path, f"cells[{i}].", raw, _CELL)
    lrs = proto["lrs"] if c["lrs"] is None else c["lrs"]
    sizes = proto["batch_sizes"] if c["batch_sizes"] is None else c["batch_sizes"]
    if lrs and not sizes:
      raise StudyError(f"study file {path}: cells[{i}].batch_sizes must not be empty when "
                       "lrs are tuned")
    cells.append(Cell(name=c["name"], config=c["config"], row=c["row"], column=c["column"],
                      overrides=c["overrides"], lrs=tuple(map(float, lrs)),
                      batch_sizes=tuple(sizes), paper=_paper(c["paper"])))
  seeds, first = proto["seeds"], proto["stage1_seed"] + 1
  study = Study(
      path=path, title=top["title"] or pathlib.Path(path).stem, description=top["description"],
      cells=tuple(cells), metric=proto["metric"], at=proto["at"],
      stage1_seed=proto["stage1_seed"],
      seeds=tuple(range(first, first + seeds) if isinstance(seeds, int) else seeds),
      rows=tuple(table["rows"] or dict.fromkeys(c.row for c in cells)),
      columns=tuple(table["columns"] or dict.fromkeys(c.column for c in cells)),
      table_metric=table["metric"], es_rule=table["es_rule"],
      paired=tuple(map(tuple, table["paired"])))
  _check_layout(study)
  return study


def _check_layout(study: Study) -> None:
  """StudyError unless the cells' names and places are distinct and the table's rows,
  columns and pairs fit them."""
  plain, bad = {c.column for c in study.cells}, []
  for what, keys in (("name", [c.name for c in study.cells]),
                     ("row and column", [(c.row, c.column) for c in study.cells])):
    bad += [f"cells: two cells with {what} {k!r}" for k in keys if keys.count(k) > 1]
  bad += [f"table.rows lacks cell {c.name}'s row {c.row!r}" for c in study.cells
          if c.row not in study.rows] + [
      f"table.columns lacks cell {c.name}'s column {c.column!r}" for c in study.cells
      if c.column not in study.columns] + [
      f"table.columns: {col!r} is neither a cell's column nor '<column>-ES'"
      for col in study.columns if col not in plain and col.removesuffix("-ES") not in plain] + [
      f"table.paired names row {r!r}, which is not in table.rows"
      for pair in study.paired for r in pair if r not in study.rows]
  if bad:
    raise StudyError(f"study file {study.path}: {bad[0]}")


def _paper(value) -> dict[str, float] | None:
  if value is None or isinstance(value, dict):
    return value
  return {"final": float(value)}  # A bare number is the last-epoch result.


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
  return _paper(paper.get(arg)) or {}


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
  bad input is reported before anything is written. Cell name -> config."""
  tuned = [f for f in PROTOCOL_FIELDS if f in overrides
           and (f == "seed" or any(c.lrs for c in study.cells))]
  if tuned:
    raise StudyError(f"--config.{tuned[0]} is set per run by the study's protocol; change "
                     f"its protocol in {study.path} instead")
  configs = {}
  for cell in study.cells:
    config = cell_config(study, cell, overrides)
    members = stage1_members(study, cell, config) or [("fixed", config)]
    for name, member in members + [("stage 2", _with(members[0][1], seed=study.seeds[0]))]:
      try:
        config_lib.validate(member, device_count=1)
      except ConfigError as e:
        raise StudyError(f"study file {study.path}: cell {cell.name} ({name}): {e}") from None
    configs[cell.name] = config
  return configs


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


def _stage(study: Study, workdir: pathlib.Path, stage: str, members_of, *, member_batch,
           log_every: int, out) -> None:
  """Trains one stage of every cell, every cell's directories checked first."""
  members = {c.name: members_of(c) for c in study.cells}
  todo = {name: pending(m, workdir / name / stage) for name, m in members.items()}
  for name, runs in members.items():
    label, directory = f"{name} {stage}", workdir / name / stage
    if runs and not todo[name]:
      out(f"{label}: all {len(runs)} runs done")
    elif runs:
      out(f"{label}: training {todo[name]} of {len(runs)} runs in {directory}")
      from polyjax import sweep

      summaries = sweep.run_sweep(runs, str(directory), member_batch=member_batch,
                                  log_every=log_every)
      stopped = [s for s in summaries.values() if s.get("status") == "interrupted"]
      if stopped:
        raise StudyInterrupted(stopped[0].get("signal") or "SIGTERM")


def run_study(study: Study, workdir: str | os.PathLike, configs: dict[str, Any],
              overrides: Mapping[str, Any] | None = None, *, member_batch: int | None = None,
              log_every: int = 0, out: Callable[[str], None] | None = None) -> pathlib.Path:
  """Runs, resumes or finishes the study in `workdir`; returns the report's path.
  `configs`: `prepare(study, overrides)`'s; `member_batch`, `log_every`: as for
  `sweep.run_sweep`; `out` prints a progress line (default: stdout)."""
  out = out or (lambda line: print(f"polyjax.study: {line}", flush=True))
  workdir = pathlib.Path(workdir)
  created = not workdir.exists()
  lock = run_dir.RunDir(workdir)
  lock.lock()  # One study process per directory; the sweeps lock their own.
  try:
    train = dict(member_batch=member_batch, log_every=log_every, out=out)
    _stage(study, workdir, "stage1",
           lambda c: stage1_members(study, c, configs[c.name]), **train)
    selections = {}
    for cell in study.cells:
      selections[cell.name] = study_report.select(
          study, cell, stage1_members(study, cell, configs[cell.name]), configs[cell.name],
          workdir)
      study_report.write_file(workdir / cell.name / SELECTION, selections[cell.name])
    _stage(study, workdir, "stage2",
           lambda c: stage2_members(study, configs[c.name], selections[c.name]), **train)
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
  except BaseException:
    if created and not any(workdir.rglob(run_dir.CONFIG)):
      shutil.rmtree(workdir, ignore_errors=True)  # Nothing ran (e.g. missing data).
    raise
  finally:
    lock.unlock()


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
    if not sweep.cpu_count_set(os.environ) and _MEMBER_BATCH.value != 1:
      # Devices as a sweep makes them: each batch size's lrs, then the seeds, split evenly.
      cores = sweep.usable_cores()
      count = sweep.cpu_device_count(cores, [len(c.lrs) for c in study.cells if c.lrs] +
                                     [len(study.seeds)])
      if count > 1:
        sweep.split_cpu(count)
    report = run_study(study, _WORKDIR.value, configs, overrides,
                       member_batch=_MEMBER_BATCH.value or None, log_every=_LOG_EVERY.value)
  except (ConfigError, checkpointing.CheckpointDirError, run_dir.RunDirBusy,
          data.DataMissing) as e:
    print(f"polyjax.study: error: {e}", file=sys.stderr)
    return 2
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


def run() -> None:
  """Defines the flags and runs `main`."""
  global _STUDY, _WORKDIR, _MEMBER_BATCH, _LOG_EVERY
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
  flags.mark_flags_as_required(["study", "workdir"])
  from polyjax import lifecycle

  app.run(lambda argv: lifecycle.exit(main(argv)),
          flags_parser=lambda argv: cli.parse_flags(argv, "polyjax.study"))


if __name__ == "__main__":
  run()
