"""polyjax.study: study files, the selection (validation only), reruns, kill -9 and the
report's numbers.

A tiny study (2 cells, 2 lrs, 1 batch size, 3 seeds, 2 epochs, hidden 16) runs once
in this process (`reference`); the tests read it, rerun it, poison it, or run it
again as the command line does and kill it on the way.
"""

import hashlib
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from polyjax import config as config_lib
from polyjax import run_dir, study, study_report, sweep, train
import subprocess_env

REPO = pathlib.Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "configs" / "digits_poly.py")
SMALL = {"num_epochs": 2, "model.hidden": 16, "wandb.mode": "disabled"}
TINY = {
    "title": "tiny",
    "protocol": {"lrs": [0.01, 0.3], "batch_sizes": [64], "at": "last", "seeds": 3},
    "table": {"columns": ["IW", "IW-ES"], "paired": [["CE", "Poly"]]},
    "cells": [
        {"name": "ce_iw", "config": DIGITS, "row": "CE", "column": "IW",
         "overrides": {**SMALL, "loss.name": "ce"}},
        {"name": "poly_iw", "config": DIGITS, "row": "Poly", "column": "IW", "overrides": SMALL},
    ],
}
REPORT_FILES = ("report.md", "report.tex", "table.csv", "seeds.png", "curves.png",
                "stage1.png", "ce_iw/selection.json", "poly_iw/selection.json")


def write_study(path: pathlib.Path, spec) -> str:
  path.write_text(f"def get_study():\n  return {spec!r}\n")
  return str(path)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
  return write_study(tmp_path_factory.mktemp("study") / "tiny.py", TINY)


@pytest.fixture(scope="module")
def reference(tiny_file, tmp_path_factory):
  """The tiny study run once, uninterrupted: its directory."""
  workdir = tmp_path_factory.mktemp("reference")
  s = study.load_study(tiny_file)
  study.run_study(s, workdir, study.prepare(s, {}), out=lambda line: None)
  return workdir


def snapshot(root: pathlib.Path) -> dict[str, tuple[str, int]]:
  """Every file under `root` but the study's lock: its content hash and mtime."""
  return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                     p.stat().st_mtime_ns)
          for p in sorted(root.rglob("*")) if p.is_file() and p.name != run_dir.LOCK}


# ---------------------------------------------------------------------------
# Study files.

def test_the_methods_study_has_every_loss_and_weighting_mode_at_10_seeds():
  from polyjax import losses, weighting

  s = study.load_study("configs/studies/digits_methods.py")
  configs = study.prepare(s, {})
  assert len(s.seeds) == 10 and not any(c.lrs for c in s.cells)  # One lr: no stage 1.
  assert [c.row for c in s.cells] == list(s.rows) and s.columns == ("Digits", "Digits-ES")
  used = {(c.loss.name, c.weighting.mode) for c in configs.values()}
  assert {name for name, _ in used} == set(losses.LOSSES)
  assert {mode for _, mode in used} == set(weighting.WEIGHTING_MODES)
  for cell in s.cells:  # Each row is what its overrides say.
    for field, value in cell.overrides.items():
      assert config_lib.get_field(configs[cell.name], field) == value, (cell.row, field)


@pytest.mark.parametrize("name", ["paper_cifar", "paper_celeba", "paper_waterbirds"])
def test_paper_studies_load_and_expand(name):
  s = study.load_study(f"configs/studies/{name}.py")
  configs = study.prepare(s, {})
  assert [c.column for c in s.cells] == ["No IW", "IW", "IW-Exp"] * 2
  assert s.columns == ("No IW", "IW", "IW-Exp", "IW-ES", "IW-Exp-ES")
  assert len(s.seeds) == 10 and s.stage1_seed not in s.seeds
  dataset = name.removeprefix("paper_").replace("cifar", "cifar10")
  for cell in s.cells:
    assert cell.config.startswith(f"configs/table.py:{dataset},")
    members = study.stage1_members(s, cell, configs[cell.name])
    assert {(m.batch_size, m.lr) for _, m in members} == {
        (b, lr) for b in (64, 512) for lr in study.config_lib.TUNING_LRS[dataset]}
  table = study.config_lib.load_config_module("configs/table.py")
  for cell in s.cells:
    assert study.paper_numbers(s, cell) == table.PAPER.get(cell.config.split(":")[1], {})


def test_fig5_study_has_every_compared_method_without_stage1():
  s = study.load_study("configs/studies/fig5.py")
  configs = study.prepare(s, {})
  fig5 = study.config_lib.load_config_module("configs/fig5.py")
  assert {c.config.split(":")[1] for c in s.cells} == {f"{d},{m}" for d, m in fig5.METHODS}
  for cell in s.cells:
    assert study.stage1_members(s, cell, configs[cell.name]) == []
    assert study.paper_numbers(s, cell) == {"final": fig5.PAPER[cell.config.split(":")[1]]}
  selection = study_report.select(s, s.cells[0], [], configs[s.cells[0].name], pathlib.Path())
  assert len(study.stage2_members(s, configs[s.cells[0].name], selection)) == 10


def test_digits_mini_loads_validates_and_expands():
  s = study.load_study("configs/studies/digits_mini.py")
  configs = study.prepare(s, {})
  assert len(s.cells) == 6 and s.seeds == tuple(range(1, 11))
  assert {(c.row, c.column) for c in s.cells} == {
      (r, c) for r in ("Digits / CE", "Digits / Poly") for c in ("No IW", "IW", "IW-Exp")}
  modes = {c.column: (configs[c.name].weighting.mode, configs[c.name].weighting.exponent)
           for c in s.cells}
  assert modes["No IW"][0] == "none" and modes["IW"] == ("reweighted", 1.0)
  assert modes["IW-Exp"] == ("reweighted", 2.0)
  for cell in s.cells:
    members = study.stage1_members(s, cell, configs[cell.name])
    assert len(members) == 8 and len({n for n, _ in members}) == 8
    choice = [{"batch_size": 64, "lr": 0.1}, {"batch_size": 512, "lr": 0.3}]
    stage2 = study.stage2_members(s, configs[cell.name], {"by_batch_size": choice})
    assert sorted((m.batch_size, m.lr, m.seed) for _, m in stage2) == sorted(
        (c["batch_size"], c["lr"], seed) for c in choice for seed in range(1, 11))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("protocol"), "protocol is missing"),
    (lambda d: d["protocol"].update(metric="test/reweighted_acc"), "protocol.metric must be"),
    (lambda d: d["protocol"].update(at="middle"), "protocol.at must be"),
    (lambda d: d["cells"][0].update(colour="red"), "cells[0].colour is not a study field"),
    (lambda d: d["cells"][1].update(name="ce_iw"), "two cells with name 'ce_iw'"),
    (lambda d: d["table"].update(columns=["IW", "XX-ES"]), "'XX-ES' is neither"),
    (lambda d: d["table"].update(paired=[["CE", "Hinge"]]), "names row 'Hinge'"),
    (lambda d: d["cells"][0].update(config="configs/nope.py"), "configs/nope.py does not exist"),
    (lambda d: d["cells"][0]["overrides"].update({"model.hiden": 3}), "config.model.hiden"),
    (lambda d: d["cells"][0]["overrides"].update({"lr": -1.0}), None),  # Tuned: not an error.
    (lambda d: d["protocol"].update(lrs=[0.1, -1.0]), "protocol.lrs must be"),
    (lambda d: d["cells"][0]["overrides"].update({"data.augment": True}), "data.augment"),
])
def test_bad_study_files_are_one_line_errors(change, message, tmp_path):
  spec = json.loads(json.dumps(TINY))
  change(spec)
  path = write_study(tmp_path / "bad.py", spec)
  if message is None:
    study.prepare(study.load_study(path), {})
    return
  with pytest.raises(study.StudyError) as e:
    study.prepare(study.load_study(path), {})
  assert message in str(e.value) and "\n" not in str(e.value)
  assert str(e.value).startswith(f"study file {path}")


@pytest.mark.parametrize("args, message", [
    (["--study=configs/studies/none.py"], "study file configs/studies/none.py does not exist"),
    (["--study={bad}"], "cell ce_iw: config file configs/nope.py does not exist"),
    (["--study={tiny}", "--config.model.hiden=3"], "--config.model.hiden"),
    (["--study={tiny}", "--config.lr=0.1"], "--config.lr is set per run by the study's protocol"),
])
def test_command_line_bad_input_exits_2_with_one_line(args, message, tiny_file, tmp_path):
  spec = json.loads(json.dumps(TINY))
  spec["cells"][0]["config"] = "configs/nope.py"
  bad = write_study(tmp_path / "bad.py", spec)
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "polyjax.study", f"--workdir={workdir}",
       *(a.format(bad=bad, tiny=tiny_file) for a in args)],
      cwd=REPO, env=subprocess_env.env(JAX_PLATFORMS="cpu"), capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("polyjax.study: error: "), proc.stderr
  assert message in lines[0]
  assert not workdir.exists()


# ---------------------------------------------------------------------------
# Running a study.

def test_selection_reads_validation_metrics_only(reference, tmp_path):
  s = study.parse_study(TINY, "tiny.py")
  configs = study.prepare(s, {})
  for cell in s.cells:
    kept = json.loads((reference / cell.name / study.SELECTION).read_text())
    shutil.copytree(reference / cell.name / "stage1", tmp_path / cell.name / "stage1")
    # Every test value swapped: the lr not selected has test accuracy 1, the selected 0.
    for run in (p for p in (tmp_path / cell.name / "stage1").iterdir() if p.is_dir()):
      chosen = run.name == kept["selected"]["run"].split("/")[-1]
      poison = lambda k, v: (0.0 if chosen else 1.0) if k.endswith("acc") else math.nan
      metrics = run / run_dir.METRICS
      rows = [json.loads(line) for line in metrics.read_text().splitlines()]
      metrics.write_text("".join(json.dumps(
          {k: poison(k, v) if r["split"] == "test" and k not in ("split", "epoch", "step")
           else v for k, v in r.items()}) + "\n" for r in rows))
      summary = run_dir.read_json(run / run_dir.SUMMARY)
      for part in ("final", "best"):
        summary[part] = {k: poison(k, v) if k.startswith("test/") else v
                         for k, v in summary[part].items()}
      run_dir.write_json(run / run_dir.SUMMARY, summary)
    members = study.stage1_members(s, cell, configs[cell.name])
    again = study_report.select(s, cell, members, configs[cell.name], tmp_path)
    assert again == kept
    assert {c["value"] for c in again["candidates"]} != {None}


def test_a_rerun_trains_and_collects_nothing(reference, tiny_file, monkeypatch):
  before = snapshot(reference)

  def fail(*args, **kwargs):
    raise AssertionError("a finished study trained again")

  monkeypatch.setattr(sweep, "run_sweep", fail)
  monkeypatch.setattr(train, "train_members", fail)
  s = study.load_study(tiny_file)
  lines = []
  study.run_study(s, reference, study.prepare(s, {}), out=lines.append)
  assert snapshot(reference) == before  # Nothing rewritten, not even the report.
  assert "0 rows added" in next(line for line in lines if line.startswith("results.csv"))


def test_a_changed_study_stops_before_anything_is_written(reference, tiny_file):
  s = study.load_study(tiny_file)
  before = snapshot(reference)
  with pytest.raises(study.StudyError, match="differs in num_epochs: the study or its"):
    study.run_study(s, reference, study.prepare(s, {"num_epochs": 3}), out=lambda line: None)
  assert snapshot(reference) == before


def test_kill9_mid_study_then_rerun_gives_the_same_report(reference, tiny_file, tmp_path):
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "polyjax.study", f"--study={tiny_file}",
             f"--workdir={workdir}"]
  env = subprocess_env.env(JAX_PLATFORMS="cpu")  # The tests' 8 CPU devices, as `reference`.
  proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 600
    while not any('"completed"' in p.read_text()
                  for p in workdir.glob("*/stage2/*/summary.json")):
      assert proc.poll() is None and time.time() < deadline, "the study ended unkilled"
      time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.wait()
  assert not (workdir / "report.md").exists()  # Killed in stage 2, before the report.
  done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  for name in REPORT_FILES:
    assert (workdir / name).read_bytes() == (reference / name).read_bytes(), name
  assert "## Results" in done.stdout and "| CE |" in done.stdout


# ---------------------------------------------------------------------------
# The table, on results built by hand.

HAND = {
    "protocol": {"lrs": [0.1], "batch_sizes": [64], "at": "best", "seeds": 4},
    "table": {"columns": ["IW", "IW-ES"], "paired": [["CE", "Poly"]]},
    "cells": [{"name": "ce", "config": DIGITS, "row": "CE", "column": "IW"},
              {"name": "poly", "config": DIGITS, "row": "Poly", "column": "IW",
               "paper": {"final": 0.604, "best": 0.634}}],
}
# cell -> rule -> the test reweighted_acc of seeds 1-4.
VALUES = {"ce": {"last": [0.61, 0.58, 0.60, 0.57], "best_val_reweighted_acc": [0.62, 0.63,
                                                                                0.61, 0.66]},
          "poly": {"last": [0.64, 0.60, 0.66, 0.59], "best_val_reweighted_acc": [0.65, 0.64,
                                                                                  0.60, 0.70]}}


def test_table_and_paired_tests_on_hand_built_results(tmp_path):
  from scipy import stats

  from polyjax.analysis import results

  s = study.parse_study(HAND, "hand.py")
  selections = {c.name: {"candidates": [], "by_batch_size": [{"batch_size": 64, "lr": 0.1}],
                         "selected": {"batch_size": 64, "lr": 0.1}} for c in s.cells}
  rows = []
  for cell, by_rule in VALUES.items():
    for rule, values in by_rule.items():
      for seed, value in enumerate(values, 1):
        for lr, split, shift in ((0.1, "test", 0.0), (0.1, "val", 0.3), (0.03, "test", 0.2)):
          run = tmp_path / cell / "stage2" / f"batch_size=64,lr={lr},seed={seed}"
          rows.append({"run": str(run), "task": "logged", "checkpoint": rule, "split": split,
                       "seed": seed, "batch_size": 64, "lr": lr, "loss.name": cell,
                       "reweighted_acc": value + shift})  # Only lr 0.1's test rows count.
  results.append(tmp_path / "results.csv", rows)
  df = study_report.results(s, selections, tmp_path / "results.csv", tmp_path)
  long = study_report.table(s, df, selections, {"poly": s.cells[1].paper})
  got = {(e["row"], e["column"]): e for e in long}
  assert set(got) == {(r, c) for r in ("CE", "Poly") for c in ("IW", "IW-ES")}
  for (row, column), e in got.items():
    values = VALUES[row.lower()]["last" if column == "IW" else "best_val_reweighted_acc"]
    assert e["n"] == 4
    assert e["mean"] == pytest.approx(np.mean(values), abs=1e-12)
    assert e["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
  assert got["Poly", "IW"]["paper"] == 0.604 and got["Poly", "IW-ES"]["paper"] == 0.634
  assert got["CE", "IW"]["paper"] is None
  assert study_report.cell_text(got["Poly", "IW"]) == (
      f"{np.mean(VALUES['poly']['last']):.3f} ± "
      f"{np.std(VALUES['poly']['last'], ddof=1):.3f} (4) [paper 0.604]")
  tests = {t["column"]: t for t in study_report.paired(s, df, selections)}
  for column, rule in (("IW", "last"), ("IW-ES", "best_val_reweighted_acc")):
    t, p = stats.ttest_rel(VALUES["poly"][rule], VALUES["ce"][rule])
    assert tests[column]["t"] == pytest.approx(t, rel=1e-9)
    assert tests[column]["p"] == pytest.approx(p, rel=1e-9)
    assert tests[column]["n_pairs"] == 4
    assert tests[column]["mean_diff"] == pytest.approx(
        np.mean(VALUES["poly"][rule]) - np.mean(VALUES["ce"][rule]), abs=1e-12)
