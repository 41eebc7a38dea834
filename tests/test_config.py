"""Config checking: every bad input fails with one line naming the field, before any write."""

import os
import subprocess
import sys

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
]


def _set(config, field, value):
  node = config
  *path, last = field.split(".")
  for p in path:
    node = node[p]
  node[last] = value


@pytest.mark.parametrize("field,value,message", BAD)
def test_validate_rejects_bad_values(field, value, message):
  c = digits_poly.get_config()
  _set(c, field, value)
  with pytest.raises(config_lib.ConfigError, match=message.replace(".", r"\.")) as e:
    config_lib.validate(c, device_count=8)
  assert "\n" not in str(e.value)


def test_unknown_names_list_the_valid_ones():
  c = digits_poly.get_config()
  c.loss.name = "polyloss"
  with pytest.raises(config_lib.ConfigError, match=r"valid: .*\bce\b.*\bpoly\b"):
    config_lib.validate(c, device_count=1)


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
    ("--config.loss.name=polyloss", "is not known; valid: cdt, ce, la"),
    ("--config.lrr=0.1", "--config.lrr: the config has no field 'lrr' (did you mean 'lr'?)"),
    ("--config.num_epochs=ten", "--config.num_epochs"),
    ("--config.batch_size=100000", "larger than the training split"),
])
def test_cli_bad_input_is_one_line_exit_2_and_no_run_directory(tmp_path, override, expected):
  proc, workdir = _cli(tmp_path, override)
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("polyjax: error:"), proc.stderr
  assert expected in lines[0]
  assert not workdir.exists()
