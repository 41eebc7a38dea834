"""Every experiment file in configs/: loads by path, validates, documents its own command."""

import ast
import importlib.util
import pathlib

import pytest

from polyjax import config as config_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
FILES = sorted(p.name for p in CONFIGS.glob("*.py"))


def load_module(path: pathlib.Path):
  """Loads a config file by its path, as ml_collections' config_flags does."""
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_cell_of_the_papers_table_has_a_config():
  cells = {f"{d}_{loss}_{w}.py" for d in ("cifar", "celeba", "waterbirds")
           for loss in ("ce", "poly") for w in ("erm", "iw", "iwexp")}
  cells = {"cifar_poly.py" if c == "cifar_poly_iw.py" else c for c in cells}
  assert cells <= set(FILES) and {"digits_poly.py", "gaussians_poly.py"} <= set(FILES)


@pytest.mark.parametrize("name", FILES)
def test_config_loads_validates_and_documents_its_command(name, monkeypatch, tmp_path):
  path = CONFIGS / name
  # Imports only from polyjax (never `from configs import ...`, which needs the repo
  # root on sys.path); loading works from any working directory.
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom):
      assert node.module.split(".")[0] in ("polyjax", "ml_collections", "__future__"), node.module
    elif isinstance(node, ast.Import):
      assert all(a.name.split(".")[0] in ("polyjax", "ml_collections") for a in node.names)
  monkeypatch.chdir(tmp_path)
  module = load_module(path)
  assert f"python -m polyjax.main --config=configs/{name}" in module.__doc__
  config = module.get_config()
  # validate does not load data, so it passes for the image datasets too.
  config_lib.validate(config, device_count=1)
  if hasattr(module, "sweep"):
    for field in module.sweep():
      assert field in config_lib._flatten(config.to_dict()), field


TABLE_CONFIGS = [n for n in FILES if n.split("_")[0] in ("cifar", "celeba", "waterbirds")]


@pytest.mark.parametrize("name", TABLE_CONFIGS)
def test_table_configs_sweep_is_the_papers_tuning_stage(name):
  from polyjax import sweep
  module = load_module(CONFIGS / name)
  assert f"python -m polyjax.sweep --config=configs/{name}" in module.__doc__
  config = module.get_config()
  lrs = sorted(config_lib.TUNING_LRS[config.data.name])  # Presets are named by dataset.
  assert config.lr in lrs  # The paper's chosen lr lies inside the tuning grid.
  members = sweep.expand(config, sweep.config_sweep(str(CONFIGS / name)))
  # Batch size changes the program: one group per batch size, its lrs stacked.
  by_batch = {g[0][1].batch_size: g for g in sweep.groups(members)}
  assert sorted(by_batch) == [64, 512]
  base = config_lib._flatten(config.to_dict())
  for group in by_batch.values():
    assert sorted(c.lr for _, c in group) == lrs
    for _, c in group:
      config_lib.validate(c, device_count=1)
      changed = {k for k, v in config_lib._flatten(c.to_dict()).items() if base[k] != v}
      assert changed <= {"lr", "batch_size"}


def test_tuning_grid_names_an_unknown_preset():
  with pytest.raises(config_lib.ConfigError, match="no tuning grid for dataset preset 'mnist'"):
    config_lib.tuning_grid("mnist")


@pytest.mark.parametrize("name", sorted(config_lib.DATASET_PRESETS))
def test_dataset_preset_sets_existing_fields(name):
  base = config_lib._flatten(config_lib.base_config().to_dict())
  c = config_lib.dataset_preset(config_lib.base_config(), name)
  flat = config_lib._flatten(c.to_dict())
  assert set(flat) == set(base)  # No new keys.
  for field, value in config_lib.DATASET_PRESETS[name].items():
    assert flat[field] == value
  assert c.data.name == name
  config_lib.validate(c, device_count=1)


def test_dataset_preset_rejects_unknown_names():
  with pytest.raises(config_lib.ConfigError, match="dataset preset 'imagenet' is not known"):
    config_lib.dataset_preset(config_lib.base_config(), "imagenet")


def test_dataset_preset_rejects_a_field_base_config_lacks(monkeypatch):
  monkeypatch.setitem(config_lib.DATASET_PRESETS, "typo", {"data.resolutoin": 224})
  with pytest.raises(config_lib.ConfigError, match="config.data.resolutoin is not a field"):
    config_lib.dataset_preset(config_lib.base_config(), "typo")
