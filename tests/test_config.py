"""Config checking: every bad input fails with one line naming the field, before any write."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from configs import digits_poly, gaussians_poly
from polyjax import config as config_lib
import subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BAD = [
    ("lr", 0.0, "config.lr"),
    ("lr", -0.1, "config.lr"),
    ("loss.alpha", 0.0, "config.loss.alpha"),
    ("loss.alpha", -1.0, "config.loss.alpha"),
    ("num_epochs", 0, "config.num_epochs"),
    ("batch_size", 0, "config.batch_size"),
    ("batch_size", 63, "divisible by the device count"),
    ("eval_batch_size", 12, "config.eval_batch_size"),
    ("weighting.exponent", -0.5, "config.weighting.exponent"),
    ("loss.name", "polyloss", "config.loss.name"),
    ("model.name", "resnet9000", "config.model.name"),
    ("data.name", "mnist", "config.data.name"),
    ("weighting.mode", "iw", "config.weighting.mode"),
    ("loss.kind", "cubic", "config.loss.kind"),
    ("momentum", 1.0, "config.momentum"),
    ("wandb.mode", "sometimes", "config.wandb.mode"),
    ("matmul_precision", "highest", "config.matmul_precision"),
    # Values that pass a sign check but cannot train.
    ("lr", float("inf"), "config.lr must be > 0 and finite"),
    ("weight_decay", float("inf"), "config.weight_decay must be >= 0 and finite"),
    ("loss.beta", float("nan"), "config.loss.beta must be finite"),
    ("loss.alpha", float("inf"), "config.loss.alpha must be > 0 and finite"),
    ("weighting.exponent", float("inf"), "config.weighting.exponent must be >= 0 and finite"),
    ("seed", -1, "config.seed must be in [0, 2**32)"),
    ("data.seed", 2 ** 32, "config.data.seed must be in [0, 2**32)"),
    ("data.order_seed", -3, "config.data.order_seed must be in [0, 2**32)"),
    ("data.val_frac", 0.0, "config.data.val_frac must be in (0, 1)"),
    # Fields of another dataset or model: they would be ignored by training.
    ("data.target", "Male", "config.data.target='Male' has no effect with "
                            "data.name='digits' (it is read only by data.name 'celeba')"),
    ("data.resolution", 64, "config.data.resolution=64 has no effect with data.name='digits'"),
    ("data.imb_type", "exp", "config.data.imb_type='exp' has no effect"),
    ("data.train_frac", 0.5, "config.data.train_frac=0.5 has no effect"),
    ("data.data_dir", "/data", "config.data.data_dir='/data' has no effect"),
]


@pytest.mark.parametrize("field,value,message", BAD)
def test_validate_rejects_bad_values(field, value, message):
  c = digits_poly.get_config()
  config_lib.set_field(c, field, value)
  with pytest.raises(config_lib.ConfigError, match=re.escape(message)) as e:
    config_lib.validate(c, device_count=8)
  assert "\n" not in str(e.value)


def test_dotted_fields_get_set_and_type():
  c = config_lib.base_config()
  config_lib.set_field(c, "loss.alpha", 2.0)
  config_lib.set_field(c, "lr", 0.5)
  assert (c.loss.alpha, config_lib.get_field(c, "loss.alpha"), c.lr) == (2.0, 2.0, 0.5)
  assert config_lib.get_field(c.to_dict(), "loss.alpha") == 2.0  # Plain dicts too.
  assert config_lib.field_type(c, "data.order_seed") is int  # A placeholder's type.
  assert config_lib.field_type(c, "loss.name") is str
  for dotted in ("loss.alpah", "los.alpha", "lr.x", ""):
    for call in (lambda: config_lib.get_field(c, dotted),
                 lambda: config_lib.set_field(c, dotted, 1.0),
                 lambda: config_lib.field_type(c, dotted)):
      with pytest.raises(config_lib.ConfigError, match=f"^config.{re.escape(dotted)} is not a "
                         "field of the config$"):
        call()
  assert config_lib.flatten(c)["loss.alpha"] == 2.0
  assert config_lib.flatten(c) == config_lib.flatten(c.to_dict())
  assert list(config_lib.flatten(c)) == [f for f, _, _ in config_lib.field_help()]


def test_config_spec_and_argument():
  assert config_lib.split_config_spec("configs/table.py:cifar10,poly,iw") == (
      "configs/table.py", "cifar10,poly,iw")
  assert config_lib.split_config_spec("configs/digits_poly.py") == ("configs/digits_poly.py", None)
  assert config_lib.split_config_spec("t.py:") == ("t.py", "")
  valid = {"dataset": ("cifar10", "celeba"), "loss": ("ce", "poly")}
  assert config_lib.parse_config_arg("celeba, poly", **valid) == ("celeba", "poly")
  for arg, message in [
      ("celeba", "must be 2 comma-separated values (dataset: cifar10, celeba; loss: ce, poly), "
                 "got 'celeba'"),
      ("", "got ''"),
      (None, "got none"),
      ("celeba,poly,iw", "got 'celeba,poly,iw'"),
      ("mnist,poly", "config argument dataset 'mnist' is not known; valid: cifar10, celeba"),
      ("celeba,focal", "config argument loss 'focal' is not known; valid: ce, poly")]:
    with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
      config_lib.parse_config_arg(arg, **valid)


def test_unknown_names_list_the_valid_ones():
  c = digits_poly.get_config()
  c.loss.name = "polyloss"
  with pytest.raises(config_lib.ConfigError, match=r"valid: .*\bce\b.*\bpoly\b"):
    config_lib.validate(c, device_count=1)


def test_model_fields_of_another_model_are_refused():
  c = digits_poly.get_config()
  c.model.name, c.model.hidden = "linear", 10
  with pytest.raises(config_lib.ConfigError, match="config.model.hidden=10 has no effect "
                     "with model.name='linear' .it is read only by model.name 'mlp'"):
    config_lib.validate(c, device_count=1)
  c.model.name = "mlp"  # Its own field.
  config_lib.validate(c, device_count=1)


def test_dataset_and_model_field_tables_match_the_builders():
  """DATA_FIELDS / MODEL_FIELDS name exactly the keyword arguments each builder reads."""
  import importlib
  import inspect
  from polyjax import models
  builders = {"digits": "polyjax.data.digits", "gaussians": "polyjax.data.synthetic",
              "cifar10": "polyjax.data.cifar", "cifar100": "polyjax.data.cifar",
              "celeba": "polyjax.data.celeba",
              "waterbirds": "polyjax.data.waterbirds"}
  generic = {"name", "order_seed", "pipeline"}  # Read by polyjax.data.load or the loop.
  for name, module in builders.items():
    builder = getattr(importlib.import_module(module), "gaussians" if name == "gaussians"
                      else name)
    reads = {f"data.{p}" for p in inspect.signature(builder).parameters if p != "_"}
    table = {f for f, users in config_lib.DATA_FIELDS.items() if name in users}
    assert table == reads - {f"data.{g}" for g in generic}, name
  assert set(config_lib.DATA_FIELDS) == {
      f"data.{k}" for k in config_lib.base_config().data} - {f"data.{g}" for g in generic}
  for name, builder in models.MODELS.items():
    reads = {f"model.{p}" for p in inspect.signature(builder).parameters
             if p not in ("in_shape", "num_classes", "rngs", "_")}
    table = {f for f, users in config_lib.MODEL_FIELDS.items() if name in users}
    assert table == reads, name


def test_importance_weights_stay_finite_for_any_finite_exponent():
  from polyjax import weighting
  counts = np.array([400, 40, 0, 4])
  for exponent in (0.0, 1.0, 3.0, 1000.0, 1e300):
    w = weighting.importance_weights(counts, exponent=exponent)
    assert np.all(np.isfinite(w)) and w[2] == 0
    np.testing.assert_allclose(np.sum(counts * w) / np.sum(counts), 1.0, rtol=1e-12)
  # Against the direct formula (float64 reference) where it does not underflow.
  raw = np.array([1 / 400, 1 / 40, 0, 1 / 4]) ** 2
  raw[2] = 0
  np.testing.assert_allclose(weighting.importance_weights(counts, exponent=2.0),
                             raw * counts.sum() / np.sum(counts * raw), rtol=1e-12)
  np.testing.assert_allclose(weighting.importance_weights(counts, exponent=1000.0),
                             [0, 0, 0, counts.sum() / 4], atol=1e-300)


def test_linear_kind_needs_alpha_above_one():
  c = digits_poly.get_config()
  c.loss.kind, c.loss.alpha = "linear", 1.0
  with pytest.raises(config_lib.ConfigError, match="config.loss.alpha"):
    config_lib.validate(c, device_count=1)


def test_shipped_configs_are_valid():
  for module in (digits_poly, gaussians_poly):
    config_lib.validate(module.get_config(), device_count=1)


def _cli(tmp_path, *overrides):
  workdir = tmp_path / "run"
  env = subprocess_env.env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.run(
      [sys.executable, "-m", "polyjax.main", "--config=configs/digits_poly.py",
       f"--workdir={workdir}", *overrides],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  return proc, workdir


@pytest.mark.parametrize("override,expected", [
    ("--config.lr=-1", "config.lr must be > 0"),
    ("--config.batch_size=63", "divisible by the device count (2)"),
    ("--config.loss.name=polyloss", "is not known; valid: cdt, ce, focal, la"),
    ("--config.lrr=0.1", "--config.lrr: the config has no field 'lrr' (did you mean 'lr'?)"),
    ("--config.num_epochs=ten", "--config.num_epochs"),
    ("--config.batch_size=100000", "larger than the training split"),
    ("--config.lr=inf", "config.lr must be > 0 and finite"),
    ("--config.seed=-1", "config.seed must be in [0, 2**32)"),
    ("--config.data.val_frac=0", "config.data.val_frac must be in (0, 1)"),
    ("--config.data.target=Male", "config.data.target='Male' has no effect"),
])
def test_cli_bad_input_is_one_line_exit_2_and_no_run_directory(tmp_path, override, expected):
  proc, workdir = _cli(tmp_path, override)
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("polyjax: error:"), proc.stderr
  assert expected in lines[0]
  assert not workdir.exists()


CONFIG_FILES = {
    "missing.py": (None, "config file {path} does not exist"),
    "syntax.py": ("def get_config(:\n", "config file {path}: syntax error at line 1: "),
    "raises.py": ("def get_config():\n  raise ValueError('no such table cell')\n",
                  "config file {path}: get_config() raised ValueError: no such table cell"),
    "imports.py": ("import polyjax_no_such_module\n",
                   "config file {path} failed to load: ModuleNotFoundError: No module named "
                   "'polyjax_no_such_module'"),
    "no_get_config.py": ("lr = 0.1\n", "config file {path} defines no get_config() function"),
    "returns_int.py": ("def get_config():\n  return 5\n",
                       "config file {path}: get_config() returned a value of type int, not "
                       "an ml_collections.ConfigDict"),
}


@pytest.mark.parametrize("command", ["polyjax.main", "polyjax.sweep"])
@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_a_config_file_that_cannot_load_is_one_line_exit_2(tmp_path, name, command):
  source, expected = CONFIG_FILES[name]
  path = tmp_path / name
  if source is not None:
    path.write_text(source)
  workdir = tmp_path / "run"
  proc = subprocess.run([sys.executable, "-m", command, f"--config={path}",
                         f"--workdir={workdir}"], cwd=REPO, env=subprocess_env.env(),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr
  prog = command.replace(".main", "")
  assert proc.stderr.splitlines() == [f"{prog}: error: " + expected.format(path=path)
                                      ] or (name == "syntax.py" and proc.stderr.startswith(
                                          f"{prog}: error: " + expected.format(path=path))
                                      and len(proc.stderr.splitlines()) == 1), proc.stderr
  assert not workdir.exists()


def test_print_config_prints_the_config_and_its_data_and_writes_nothing(tmp_path):
  proc, workdir = _cli(tmp_path, "--print_config", "--config.weighting.exponent=2")
  assert proc.returncode == 0, proc.stderr
  assert f"lr: {digits_poly.get_config().lr}" in proc.stdout and "exponent: 2.0" in proc.stdout
  # Digits 0-4 vs 5-9, class 1 subsampled 10x (docs/DATASETS.md): the weights follow.
  counts = [int(n) for n in re.search(r"group counts: \[(\d+), (\d+)\]", proc.stdout).groups()]
  weights = [float(w) for w in re.search(r"importance weights per group .*?: \[([\d.]+), "
                                         r"([\d.]+)\]", proc.stdout).groups()]
  raw = np.array([1 / counts[0] ** 2, 1 / counts[1] ** 2])
  np.testing.assert_allclose(weights, raw * sum(counts) / np.dot(counts, raw), atol=1e-4)
  assert not workdir.exists()


def test_print_config_and_only_check_args_refuse_a_bad_field(tmp_path):
  for flag in ("--print_config", "--only_check_args"):
    proc, workdir = _cli(tmp_path, flag, "--config.lr=-1")
    assert proc.returncode == 2, (flag, proc.stderr)
    assert proc.stderr.splitlines() == ["polyjax: error: config.lr must be > 0 and finite, "
                                        "got -1.0"]
    assert not workdir.exists()
  proc, _ = _cli(tmp_path, "--only_check_args")
  assert proc.returncode == 0, proc.stderr


def test_a_config_file_argument_checks_prints_and_refuses(tmp_path):
  table = "--config=configs/table.py:cifar10,poly,iwexp"
  proc = _run("polyjax.main", table, "--print_config", f"--workdir={tmp_path / 'run'}")
  assert proc.returncode == 0, proc.stderr
  assert "exponent: 2.0" in proc.stdout and "name: cifar10" in proc.stdout
  assert _run("polyjax.main", table, "--only_check_args").returncode == 0
  for spec, message in [
      ("configs/table.py:mnist,poly,iw", "config file configs/table.py: config argument dataset "
                                         "'mnist' is not known; valid: cifar10, celeba, "
                                         "waterbirds"),
      ("configs/table.py", "config file configs/table.py: the config argument "
                           "(--config=FILE:DATASET,LOSS,WEIGHTING) must be 3 comma-separated"),
      ("configs/nowhere.py:cifar10", "config file configs/nowhere.py does not exist")]:
    proc = _run("polyjax.main", f"--config={spec}", "--only_check_args")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"polyjax: error: {message}"), proc.stderr
  assert not (tmp_path / "run").exists()


def test_config_help_with_a_config_marks_its_values():
  proc = _run("polyjax.main", "--config=configs/table.py:cifar10,poly,iwexp", "--config_help")
  assert proc.returncode == 0, proc.stderr
  line = next(l for l in proc.stdout.splitlines() if l.split()[:1] == ["weighting.exponent"])
  assert line.endswith("[default: 1.0] [config: 2.0]")
  line = next(l for l in proc.stdout.splitlines() if l.split()[:1] == ["seed"])
  assert "[config:" not in line  # Its default.


def _run(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                        env=subprocess_env.env(), capture_output=True, text=True, timeout=120)


def test_config_help_lists_every_field_with_its_meaning_and_default():
  proc = subprocess.run([sys.executable, "-m", "polyjax.main", "--config_help"], cwd=REPO,
                        env=subprocess_env.env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  for field, default, meaning in config_lib.field_help():
    assert meaning, f"config.{field} has no one-line comment in base_config()"
    line = next(l for l in proc.stdout.splitlines() if l.split()[:1] == [field])
    assert meaning in line and f"[default: {default!r}]" in line
  assert "--[no]config_help: List every config field" in subprocess.run(
      [sys.executable, "-m", "polyjax.main", "--help"], cwd=REPO, env=subprocess_env.env(),
      capture_output=True, text=True, timeout=120).stdout
