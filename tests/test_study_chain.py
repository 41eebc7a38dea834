"""Studies that chain a cell's runs into another's `method.stage1_dir` (`stage1_cell`):
JTT tuned on the stage-1 cell's selected run, DFR and BBSE at a fixed lr, each seed
reading the stage-1 run of its own seed; the checks before anything runs."""

import json
import pathlib

import pandas as pd
import pytest

from polyjax import run_dir, study, study_report, train
from polyjax.analysis import runs

REPO = pathlib.Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "configs" / "digits_poly.py")
SMALL = {"model.hidden": 16, "wandb.mode": "disabled", "loss.name": "ce",
         "weighting.mode": "none", "num_epochs": 3}
DFR = {"method.name": "dfr", "model.freeze_features": True, "weight_decay": 0.0,
       "lr": 0.1, "batch_size": 16}
CHAIN = {
    "title": "chain",
    "protocol": {"lrs": [0.05, 0.1], "batch_sizes": [64], "at": "last", "seeds": 2},
    "cells": [
        {"name": "erm", "config": DIGITS, "row": "ERM", "column": "Digits",
         "overrides": {**SMALL, "num_epochs": 10}},
        {"name": "jtt", "config": DIGITS, "row": "JTT", "column": "Digits",
         "stage1_cell": "erm", "overrides": {**SMALL, "method.name": "jtt"}},
        {"name": "dfr", "config": DIGITS, "row": "DFR", "column": "Digits", "lrs": [],
         "stage1_cell": "erm", "overrides": {**SMALL, **DFR}},
        {"name": "bbse", "config": DIGITS, "row": "BBSE", "column": "Digits", "lrs": [],
         "stage1_cell": "erm", "overrides": {**SMALL, "weighting.source": "bbse",
                                             "weighting.mode": "reweighted"}},
    ],
}


def write_study(path: pathlib.Path, spec) -> str:
  path.write_text(f"def get_study():\n  return {spec!r}\n")
  return str(path)


@pytest.fixture(scope="module")
def chained(tmp_path_factory):
  """The chain study run once, one member per program (bit-exact to single runs)."""
  root = tmp_path_factory.mktemp("chain")
  s = study.load_study(write_study(root / "chain.py", CHAIN))
  workdir = root / "work"
  lines = []
  study.run_study(s, workdir, study.prepare(s, {}), member_batch=1, out=lines.append)
  return s, workdir, lines


def saved_config(run: pathlib.Path) -> dict:
  return run_dir.read_json(run / run_dir.CONFIG)


def test_each_seed_reads_the_stage1_cells_run_of_its_seed(chained):
  s, workdir, _ = chained
  erm = json.loads((workdir / "erm" / study.SELECTION).read_text())["selected"]
  stage1_run = (workdir / erm["run"]).resolve()
  for name in ("jtt", "dfr", "bbse"):
    for seed in s.seeds:
      choice = json.loads((workdir / name / study.SELECTION).read_text())["selected"]
      run = workdir / name / "stage2" / study_report.stage2_name(
          choice["batch_size"], choice["lr"], seed)
      want = workdir / "erm" / "stage2" / study_report.stage2_name(
          erm["batch_size"], erm["lr"], seed)
      assert saved_config(run)["method"]["stage1_dir"] == str(want.resolve())
      assert run_dir.read_json(run / run_dir.SUMMARY)["stage1"]["dir"] == str(want.resolve())
  # JTT tunes its lr on the stage-1 cell's selected stage-1 run (the stage-1 seed).
  jtt_stage1 = sorted(p for p in (workdir / "jtt" / "stage1").iterdir() if p.is_dir())
  assert len(jtt_stage1) == 2
  for run in jtt_stage1:
    assert saved_config(run)["method"]["stage1_dir"] == str(stage1_run)
  # DFR and BBSE have no stage 1: their config's lr and batch size.
  assert not (workdir / "dfr" / "stage1").exists()
  assert json.loads((workdir / "dfr" / study.SELECTION).read_text())["selected"] == {
      "batch_size": 16, "lr": 0.1}


def test_results_csv_has_what_stage1_gave_each_run(chained):
  _, workdir, _ = chained
  df = pd.read_csv(workdir / study.RESULTS)
  for cell, column, key in (("jtt", "jtt.error_set_size", ("jtt", "error_set_size")),
                            ("dfr", "dfr.l2", ("dfr", "l2")),
                            ("bbse", "label_shift.prior_error_l1",
                             ("label_shift", "prior_error_l1"))):
    rows = df[df["run"].str.contains(f"/{cell}/stage2/")]
    assert rows["run"].nunique() == 2  # The 2 seeds, each with a row per rule and split.
    for run, value in zip(rows["run"], rows[column]):
      summary = run_dir.read_json(pathlib.Path(run) / run_dir.SUMMARY)
      assert value == summary[key[0]][key[1]], (run, column)
  assert df[df["run"].str.contains("/erm/")][["jtt.error_set_size", "dfr.l2"]].isna().all().all()


def test_a_chained_run_equals_the_same_config_trained_alone(chained, tmp_path):
  # The stacked stage 2 (members reading different stage-1 runs) is the single run.
  _, workdir, _ = chained
  run = sorted(p for p in (workdir / "jtt" / "stage2").iterdir() if p.is_dir())[1]
  config = runs.load_run(run).config
  train.train_and_evaluate(config, str(tmp_path / "alone"))
  assert ((tmp_path / "alone" / run_dir.METRICS).read_text()
          == (run / run_dir.METRICS).read_text())


def test_the_report_says_which_cell_each_reads(chained):
  _, workdir, _ = chained
  report = (workdir / "report.md").read_text()
  assert report.count("(reads cell erm's runs)") == 3


def test_the_methods_study_chains_each_two_stage_method_to_its_stage1_row():
  s = study.load_study(str(REPO / "configs" / "studies" / "digits_methods.py"))
  configs = study.prepare(s, {})
  chained = {c.row: next(d for d in s.cells if d.name == c.stage1_cell)
             for c in s.cells if c.stage1_cell}
  assert {r: d.row for r, d in chained.items()} == {
      "JTT": "CE, 5 epochs", "DFR": "CE", "CE+IW-BBSE": "CE", "CE+IW-MLLS": "CE",
      "Poly+IW-MLLS": "CE"}
  assert configs[chained["JTT"].name].num_epochs == 5  # JTT needs training errors.
  kinds = {(configs[c.name].method.name, configs[c.name].weighting.source)
           for c in s.cells if c.stage1_cell}
  assert kinds == {("jtt", "counts"), ("dfr", "counts"), ("none", "bbse"), ("none", "mlls")}


def test_a_rerun_trains_nothing_and_keeps_the_report(chained):
  s, workdir, _ = chained
  report = (workdir / "report.md").read_text()
  lines = []
  study.run_study(s, workdir, study.prepare(s, {}), member_batch=1, out=lines.append)
  assert not [line for line in lines if "training" in line], lines
  assert (workdir / "report.md").read_text() == report


def test_a_run_whose_stage1_run_did_not_complete_is_left_out(chained, tmp_path):
  s, workdir, _ = chained
  erm = json.loads((workdir / "erm" / study.SELECTION).read_text())
  copy = tmp_path / "work"
  for seed in s.seeds:  # The stage-1 cell's runs, the second seed's diverged.
    name = study_report.stage2_name(erm["selected"]["batch_size"], erm["selected"]["lr"], seed)
    target = copy / "erm" / "stage2" / name
    target.mkdir(parents=True)
    for f in (run_dir.CONFIG, run_dir.SUMMARY):
      (target / f).write_bytes((workdir / "erm" / "stage2" / name / f).read_bytes())
  summary = target / run_dir.SUMMARY
  summary.write_text(json.dumps({**json.loads(summary.read_text()), "status": "diverged"}))
  cell = next(c for c in s.cells if c.name == "bbse")
  configs = study.prepare(s, {})
  members = study.stage2_members(s, configs["bbse"], {"by_batch_size": [
      {"batch_size": 64, "lr": 0.02}]})
  lines = []
  kept = study._reading(s, copy, cell, members, {"erm": erm}, "stage2", lines.append)
  assert [c.seed for _, c in kept] == [1]
  assert kept[0][1].method.stage1_dir == str((copy / "erm" / "stage2").resolve() / name.replace(
      "seed=2", "seed=1"))
  assert lines == [f"bbse stage2: batch_size=64,lr=0.02,seed=2 is left out: it reads "
                   f"{target.resolve()}, whose run is diverged"]


def _with_cell(index, **fields):
  spec = json.loads(json.dumps(CHAIN))
  spec["cells"][index].update(fields)
  return spec


@pytest.mark.parametrize("spec, message", [
    (_with_cell(1, stage1_cell="nope"),
     "cells[1].stage1_cell names no cell: 'nope'; cells: erm, jtt, dfr, bbse"),
    (_with_cell(0, stage1_cell="jtt"),
     "cells[0].stage1_cell: the cells erm -> jtt -> erm read each other's runs in a cycle"),
    (_with_cell(1, stage1_cell="jtt"),
     "cells[1].stage1_cell: the cells jtt -> jtt read each other's runs in a cycle"),
    (_with_cell(1, stage1_cell="dfr"),
     "cells[1].stage1_cell: cell jtt tunes its lr (a stage 1 at seed 0), which reads cell "
     "dfr's stage-1 run, but that cell has no stage 1; give one of them lrs, or cell jtt "
     "'lrs': []"),
])
def test_bad_chains_are_one_line_naming_the_field(tmp_path, spec, message):
  with pytest.raises(study.StudyError) as e:
    study.load_study(write_study(tmp_path / "bad.py", spec))
  assert str(e.value) == f"study file {tmp_path / 'bad.py'}: {message}"


@pytest.mark.parametrize("overrides, message", [
    ({**SMALL, "method.name": "none"},
     "cell jtt: stage1_cell is set, but its config reads no stage-1 run (method.name 'none', "
     "weighting.source 'counts')"),
    ({**SMALL, "method.name": "jtt", "method.stage1_dir": "/x"},
     "cell jtt: its config sets method.stage1_dir ('/x'); with stage1_cell the study sets "
     "it to that cell's run of each seed"),
    ({**SMALL, "method.name": "jtt", "data.imb_factor": 5.0},
     "cell jtt: its stage1_cell 'erm' was trained on other data (data.imb_factor 10.0 there, "
     "5.0 here); stage 2 must use stage 1's data fields"),
    ({**SMALL, "method.name": "jtt", "method.jtt_upweight": 0.5},
     "cell jtt (batch_size=64,lr=0.05): config.method.jtt_upweight must be >= 1 and finite, "
     "got 0.5"),
])
def test_a_chained_cells_config_is_checked_before_anything_runs(tmp_path, overrides, message):
  path = write_study(tmp_path / "bad.py", _with_cell(1, overrides=overrides))
  s = study.load_study(path)
  with pytest.raises(study.StudyError) as e:
    study.prepare(s, {})
  assert str(e.value) == f"study file {path}: {message}"
