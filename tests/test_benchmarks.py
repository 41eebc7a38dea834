"""benchmarks/: the comparison rewrites only its own section of docs/BENCHMARKS.md;
the runner times polyjax's epoch loop and prints one JSON line."""

import importlib.util
import json
import pathlib
import subprocess
import sys
import subprocess_env

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_write_section_replaces_only_its_own(tmp_path):
  compare = _load("compare")
  path = tmp_path / "BENCHMARKS.md"
  compare.write_section(path, f"{compare.SECTION}\n\nfirst\n")
  assert path.read_text().startswith("# Benchmarks\n")
  with path.open("a") as f:
    f.write("\n## Input pipeline\n\nkept\n")
  compare.write_section(path, f"{compare.SECTION}\n\nsecond\n")
  text = path.read_text()
  assert "first" not in text and "second" in text
  assert text.index(compare.SECTION) < text.index("## Input pipeline")
  assert "kept" in text and text.count(compare.SECTION) == 1


def test_render_ratio_uses_faster_reference():
  compare = _load("compare")
  results = [{"name": "mlp b512", "unit": "examples/s", "steps": (200, 200),
              "polyjax": [300.0, 200.0, 400.0], "torch": [10.0, 20.0, 30.0],
              "torch_1thread": [100.0, 90.0, 110.0], "first_call": [1.0]}]
  text = compare.render(results, {"jax": "x"}, rounds=3, load=(1.0, 2.0))
  assert "**3.00x**" in text  # 300 / max(20, 100)


def test_run_prints_one_json_line():
  out = subprocess.run(
      [sys.executable, "benchmarks/run.py", "mlp", "--batch-size", "8", "--steps", "3"],
      cwd=ROOT, capture_output=True, text=True, check=True,
      env={"PYTHONPATH": subprocess_env.pythonpath(), "PATH": "/usr/bin:/bin"})
  result = json.loads(out.stdout.strip())
  assert result["workload"] == "mlp" and result["steps"] == 3
  assert result["examples_per_s"] > 0 and result["seconds"] > 0


def test_fig1_times_the_runs_own_calls():
  out = subprocess.run(
      [sys.executable, "benchmarks/run.py", "fig1", "--steps", "600"],  # Two calls.
      cwd=ROOT, capture_output=True, text=True, check=True,
      env={"PYTHONPATH": subprocess_env.pythonpath(), "PATH": "/usr/bin:/bin"})
  result = json.loads(out.stdout.strip())
  assert result["workload"] == "fig1" and result["steps"] == 600 and result["steps_per_s"] > 0


def test_mlp_dots_counts_the_steps_products_and_prints_one_json_line():
  dots = _load("mlp_dots")
  # Per example: forward 64x200 + 2 x 200x200 + 200x2 multiply-adds, as many for the
  # weight gradients, and the input gradients of layers 2-4 (2 x 200x200 + 200x2).
  forward = 64 * 200 + 2 * 200 * 200 + 200 * 2
  assert dots.products_flops(512) == 2 * 512 * (2 * forward + 2 * 200 * 200 + 200 * 2)
  out = subprocess.run(
      [sys.executable, "benchmarks/mlp_dots.py", "--batch-size", "8", "--steps", "3",
       "--rounds", "1", "--peak-size", "64"],
      cwd=ROOT, capture_output=True, text=True, check=True,
      env={"PYTHONPATH": subprocess_env.pythonpath(), "PATH": "/usr/bin:/bin"})
  result = json.loads(out.stdout.strip())
  assert result["batch_size"] == 8 and result["products_only_ms_per_step"] > 0
  assert result["whole_step_examples_per_s"] > 0
  assert result["large_product_size"] == 64 and result["large_product_gflop_per_s"] > 0


def test_sweep_compare_reads_non_finite_values_written_as_strings(tmp_path):
  bench = _load("sweep")
  finals = {"sweep": {"a": {"x": 1.0, "y": "nan", "z": "inf"}, "b": {"x": 2.0, "y": 1.0, "z": 0.0}},
            "single": {"a": {"x": 1.5, "y": "nan", "z": "inf"}, "b": {"x": 2.0, "y": "nan", "z": 0.0}}}
  singles = {}
  for side, members in finals.items():
    for name, final in members.items():
      run = tmp_path / side / name
      run.mkdir(parents=True)
      (run / "summary.json").write_text(json.dumps({"status": "completed", "final": final}))
      if side == "single":
        singles[name] = run
  got = bench.compare(tmp_path / "sweep", singles)
  assert got["max_final_metric_diff"] == float("inf")  # b's y: finite in the sweep, NaN alone.
  assert got["max_final_metric_diff_at"].startswith("b y")


def test_long_runs_splits_a_runs_time_into_start_epochs_and_between():
  long_runs = _load("long_runs")
  lines = [(0.5, "polyjax: run directory /tmp/x (1 processes, 1 devices)"),
           (10.0, "epoch 1/3  step 68  train/objective 1.0  (6.00s)"),
           (11.0, "epoch 2/3  step 136  train/objective 0.9  (0.50s)"),
           (12.0, "epoch 3/3  step 204  train/objective 0.8  (0.70s)"),
           (13.0, "cifar_shaped: device_peak_bytes 2097152")]
  out = long_runs.parse_output(lines, wall=14.0)
  assert out["epochs_printed"] == 3 and out["epoch_s_median"] == 0.7
  assert out["start_s"] == 4.0 and out["first_epoch_s"] == 6.0
  assert out["between_epochs_s"] == 0.4  # (12 - 10 - 0.5 - 0.7) / 2
  assert out["end_s"] == 2.0 and out["device_peak_mib"] == 2


def test_stacked_members_times_the_sequential_and_stacked_epochs():
  out = subprocess.run(
      [sys.executable, "benchmarks/stacked_members.py", "--members", "2", "--steps", "1",
       "--batch-size", "4", "--variants", "vmap", "--forms", "im2col", "--rounds", "1"],
      cwd=ROOT, capture_output=True, text=True, check=True,
      env={"PYTHONPATH": subprocess_env.pythonpath(), "PATH": "/usr/bin:/bin"})
  result = json.loads(out.stdout.strip())
  assert result["members"] == 2 and result["sequential_s"] > 0
  assert result["vmap_im2col"]["epoch_s"] > 0 and "vmap_xla" not in result


def test_conv_forms_runs_each_form_in_its_own_process_and_prints_a_table():
  out = subprocess.run(
      [sys.executable, "benchmarks/conv_forms.py", "--cases", "convnet:im2col,convnet:xla",
       "--batch-size", "2", "--convnet-steps", "1", "--rounds", "1", "--reps", "1"],
      cwd=ROOT, capture_output=True, text=True, check=True,
      env={"PYTHONPATH": subprocess_env.pythonpath(), "PATH": "/usr/bin:/bin"})
  rows = [line for line in out.stdout.splitlines() if line.startswith("| convnet:")]
  assert [r.split(" | ")[0] for r in rows] == ["| convnet:im2col", "| convnet:xla"]
  assert "**1.00x** / 1.00x" in rows[0]  # Each model's first case is its reference.


def test_precision_finds_the_largest_difference_and_where(tmp_path):
  precision = _load("precision")
  for name, loss in (("ref", 0.5), ("run", 0.75)):
    (tmp_path / name).mkdir()
    lines = [{"epoch": 1, "step": 10, "split": "train", "acc": 0.9, "loss": loss},
             {"epoch": 1, "step": 10, "split": "test", "acc": 0.8, "loss": "inf"},
             {"epoch": 2, "step": 20, "split": "test", "acc": 0.8, "loss": 1.0}]
    (tmp_path / name / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)))
  out = precision.largest_differences(tmp_path / "run", tmp_path / "ref")
  assert out == [{"epoch": 1, "max_abs_diff": 0.25, "at": "train/loss"},
                 {"epoch": 2, "max_abs_diff": 0.0, "at": "test/acc"}]


def test_precision_on_cpu_float32_equals_the_cpu_reference():
  """On a CPU every setting computes float32 products: no difference at all."""
  out = subprocess.run(
      [sys.executable, "benchmarks/precision.py", "--config=configs/digits_poly.py",
       "--data=digits", "--epochs=1", "--lr=0.1", "--precisions=float32"],
      cwd=ROOT, capture_output=True, text=True, check=True,
      env=subprocess_env.env(JAX_PLATFORMS="cpu"))
  result = json.loads(out.stdout)
  run = result["runs"]["default_platform_float32"]
  assert run["status"] == "completed" and run["device_kind"] == "cpu"
  assert run["against_cpu"] == [{"epoch": 1, "max_abs_diff": 0.0, "at": run["against_cpu"][0]["at"]}]
