"""Study files: reading and checking what `get_study()` returns (docs/studies.md).

A study file (configs/studies/*.py) defines `get_study()`: a dict with its cells (a
config, overrides, a row and a column of the table), the protocol (stage-1 grid,
selection metric, stage-2 seeds), the table's layout and, optionally, a launcher
section (`polyjax.launch.Options`). `load_study` gives a checked `Study`, or a
one-line StudyError naming the file and the field.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import pathlib
import re
from typing import Any

from polyjax import config as config_lib
from polyjax.errors import ConfigError

AT_RULES = ("last", "best")  # The selection metric at the last evaluated epoch, or its best.
ES_RULES = ("best_val_reweighted_acc", "best_val_worst_group_acc")  # tasks.LOGGED_RULES
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
  # A cell whose runs are this cell's `method.stage1_dir`: the same seed's run of its
  # selected (batch size, lr); None: the config names its own stage-1 run, if any.
  stage1_cell: str | None = None


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
  launcher: dict[str, Any] = dataclasses.field(default_factory=dict)  # launch.Options fields.


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
    "table": (lambda v: isinstance(v, dict), "a dict", {}),
    "launcher": (lambda v: isinstance(v, dict), "a dict of polyjax.launch.Options fields", {})}
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
              "a number or {'final': x, 'best': y}", None),
    "stage1_cell": (lambda v: v is None or _is_str(v),
                    "the name of the cell whose runs this cell's method reads", None)}


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
                      batch_sizes=tuple(sizes), paper=paper_values(c["paper"]),
                      stage1_cell=c["stage1_cell"]))
  seeds, first = proto["seeds"], proto["stage1_seed"] + 1
  study = Study(
      path=path, title=top["title"] or pathlib.Path(path).stem, description=top["description"],
      cells=tuple(cells), metric=proto["metric"], at=proto["at"],
      stage1_seed=proto["stage1_seed"],
      seeds=tuple(range(first, first + seeds) if isinstance(seeds, int) else seeds),
      rows=tuple(table["rows"] or dict.fromkeys(c.row for c in cells)),
      columns=tuple(table["columns"] or dict.fromkeys(c.column for c in cells)),
      table_metric=table["metric"], es_rule=table["es_rule"],
      paired=tuple(map(tuple, table["paired"])), launcher=top["launcher"])
  _check_layout(study)
  _check_chains(study)
  from polyjax import launch

  try:
    launch.Options.from_values(study.launcher, "launcher.")
  except ConfigError as e:
    raise StudyError(f"study file {path}: {e}") from None
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


def _check_chains(study: Study) -> None:
  """StudyError unless every `stage1_cell` names another cell, without a cycle, and
  one with a stage 1 where the reading cell tunes its lr (its stage-1 runs read the
  named cell's selected stage-1 run)."""
  cells = {c.name: c for c in study.cells}
  for i, cell in enumerate(study.cells):
    where = f"study file {study.path}: cells[{i}].stage1_cell"
    if cell.stage1_cell is None:
      continue
    if cell.stage1_cell not in cells:
      raise StudyError(f"{where} names no cell: {cell.stage1_cell!r}; cells: "
                       f"{', '.join(cells)}")
    chain, name = [cell.name], cell.stage1_cell
    while name is not None:
      if name in chain:
        raise StudyError(f"{where}: the cells {' -> '.join(chain + [name])} read each "
                         "other's runs in a cycle")
      chain.append(name)
      name = cells[name].stage1_cell
    if cell.lrs and not cells[cell.stage1_cell].lrs:
      raise StudyError(f"{where}: cell {cell.name} tunes its lr (a stage 1 at seed "
                       f"{study.stage1_seed}), which reads cell {cell.stage1_cell}'s stage-1 "
                       f"run, but that cell has no stage 1; give one of them lrs, or cell "
                       f"{cell.name} 'lrs': []")


def chain_levels(study: Study) -> list[tuple[Cell, ...]]:
  """The cells in the order they can train: first those that read no other cell's
  runs, then those that read only earlier levels' (each level in file order)."""
  depth: dict[str, int] = {}
  cells = {c.name: c for c in study.cells}

  def level(name: str) -> int:
    if name not in depth:
      parent = cells[name].stage1_cell
      depth[name] = 0 if parent is None else level(parent) + 1
    return depth[name]

  levels: list[list[Cell]] = [[] for _ in range(1 + max(map(level, cells), default=0))]
  for cell in study.cells:
    levels[depth[cell.name]].append(cell)
  return [tuple(cells_at) for cells_at in levels]


def paper_values(value) -> dict[str, float] | None:
  if value is None or isinstance(value, dict):
    return value
  return {"final": float(value)}  # A bare number is the last-epoch result.
