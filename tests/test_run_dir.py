"""The files of a run directory: damaged metrics.jsonl lines, atomic JSON writes."""

import json

import pytest

from polyjax import run_dir


def _write_rows(run, epochs):
  run.create()
  run.append_metrics([{"epoch": e, "step": 10 * e, "split": s, "acc": e / 10}
                      for e in epochs for s in ("train", "val", "test")])


def test_a_damaged_middle_line_is_dropped_with_the_original_kept(tmp_path, capsys):
  run = run_dir.RunDir(tmp_path)
  _write_rows(run, range(1, 7))
  path = tmp_path / run_dir.METRICS
  lines = path.read_text().splitlines(keepends=True)
  lines[7] = '{"epoch": 3, "step": 30, "spl\n'  # Epoch 3's val row, damaged.
  original = "".join(lines)
  path.write_text(original)
  assert len(run.read_metrics()) == 17  # Read around it, with a warning naming it.
  assert capsys.readouterr().err == (f"polyjax: warning: {path}: line 8 is not a metrics "
                                     f"row; skipped\n")
  repair = run.truncate_metrics(4)
  assert (repair.dropped, repair.damaged_lines, repair.missing_epochs) == (6, [8], [])
  assert (tmp_path / "metrics.jsonl.damaged").read_text() == original
  rows = run.read_metrics()
  assert [(r["epoch"], r["split"]) for r in rows] == [
      (e, s) for e in range(1, 5) for s in ("train", "val", "test") if (e, s) != (3, "val")]


def test_a_file_cut_short_reports_the_epochs_it_lost(tmp_path):
  run = run_dir.RunDir(tmp_path)
  _write_rows(run, range(1, 7))
  path = tmp_path / run_dir.METRICS
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])  # Epochs 1-3 whole, a torn line of epoch 4.
  repair = run.truncate_metrics(6, eval_every=2)
  assert repair.damaged_lines == []  # A torn last line is a crash's, not damage.
  assert repair.missing_epochs == [4, 6]
  assert not (tmp_path / "metrics.jsonl.damaged").exists()
  assert {r["epoch"] for r in run.read_metrics()} == {1, 2, 3}
  assert path.read_text().endswith("\n")


def test_write_json_leaves_no_temporary_file_when_it_fails(tmp_path):
  path = tmp_path / "summary.json"
  run_dir.write_json(path, {"a": 1})
  with pytest.raises(TypeError):
    run_dir.write_json(path, {"a": object()})
  assert json.loads(path.read_text()) == {"a": 1}  # The previous version stays.
  assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_whole_last_row_without_its_newline_is_kept(tmp_path):
  run = run_dir.RunDir(tmp_path)
  _write_rows(run, [1, 2])
  path = tmp_path / run_dir.METRICS
  path.write_text(path.read_text().rstrip("\n"))  # E.g. written by hand.
  assert len(run.read_metrics()) == 6
  assert run.truncate_metrics(2).dropped == 0
  run.append_metrics([{"epoch": 3, "step": 30, "split": "train"}])
  assert [r["epoch"] for r in run.read_metrics()] == [1, 1, 1, 2, 2, 2, 3]
