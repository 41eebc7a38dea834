"""Every experiment in configs/: loads by path, validates, documents its own command;
cifar_lt.py's cells carry LDAM-DRW's setup and numbers; the parameterised files
(table.py, fig5.py) resolve every argument as the files they
replaced did (tests/data/config_files.json)."""

import ast
import itertools
import json
import pathlib

import pytest

from polyjax import config as config_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
FILES = sorted(p.name for p in CONFIGS.glob("*.py"))
# Each file of configs/replaced by an argument of table.py or fig5.py: its `spec` and
# the fields where its get_config() differed from base_config(), as JSON writes them.
REPLACED = json.loads((pathlib.Path(__file__).parent / "data" / "config_files.json").read_text())


def load_module(path: pathlib.Path):
  """Loads a config file by its path, as ml_collections' config_flags does."""
  return config_lib.load_config_module(path, path.stem)


TABLE = load_module(CONFIGS / "table.py")
FIG5 = load_module(CONFIGS / "fig5.py")
TABLE_ARGS = [",".join(cell) for cell in itertools.product(
    TABLE.DATASETS, TABLE.LOSSES, TABLE.WEIGHTINGS)]
FIG5_ARGS = [f"{d},{m}" for d, m in FIG5.METHODS]
LT = load_module(CONFIGS / "cifar_lt.py")
LT_ARGS = [",".join(cell) for cell in itertools.product(LT.DATASETS, LT.PROFILES, LT.METHODS)]
PARAMETERISED = ("table.py", "fig5.py", "cifar_lt.py")
# Every experiment: (file, argument or None).
EXPERIMENTS = ([(n, None) for n in FILES if n not in PARAMETERISED]
               + [("table.py", a) for a in TABLE_ARGS] + [("fig5.py", a) for a in FIG5_ARGS]
               + [("cifar_lt.py", a) for a in LT_ARGS])


def get_config(name: str, arg: str | None):
  module = load_module(CONFIGS / name)
  return module.get_config() if arg is None else module.get_config(arg)


def as_json(config) -> dict:
  return config_lib.flatten(json.loads(json.dumps(config.to_dict())))


def test_the_configs_are_the_table_figure_5_and_the_examples():
  assert FILES == ["cifar_lt.py", "cifar_poly.py", "digits_poly.py", "fig5.py",
                   "gaussians_poly.py", "table.py"]
  assert len(TABLE_ARGS) == 18 and len(FIG5_ARGS) == 12


@pytest.mark.parametrize("old", sorted(REPLACED))
def test_an_argument_resolves_as_the_file_it_replaced(old):
  spec = REPLACED[old]["spec"]
  name, arg = config_lib.split_config_spec(spec)
  expected = as_json(config_lib.base_config())
  expected.update(REPLACED[old]["fields"])
  # As JSON writes them: 2 and 2.0 differ.
  assert json.dumps(as_json(get_config(name, arg)), sort_keys=True) == json.dumps(
      expected, sort_keys=True)


def test_every_argument_replaces_a_file():
  specs = sorted(e["spec"] for e in REPLACED.values())
  assert specs == sorted([f"table.py:{a}" for a in TABLE_ARGS]
                         + [f"fig5.py:{a}" for a in FIG5_ARGS])


def test_cifar_poly_is_the_tables_poly_iw_cell():
  module = load_module(CONFIGS / "cifar_poly.py")
  assert module.get_config() == TABLE.get_config("cifar10,poly,iw")
  assert module.sweep() == TABLE.sweep("cifar10,poly,iw")


def test_paper_numbers_name_cells_that_exist():
  assert set(TABLE.PAPER) <= set(TABLE_ARGS)
  assert {a for a in TABLE_ARGS if not a.startswith("waterbirds")} == set(TABLE.PAPER)
  for cell, result in TABLE.PAPER.items():
    assert set(result) == ({"final", "best"} if cell.endswith(("iw", "iwexp")) else {"final"})
  assert set(FIG5.PAPER) == set(FIG5_ARGS)


def test_cifar_lt_cells_are_ldam_drws_setup_with_its_numbers():
  assert len(LT_ARGS) == 24
  assert set(LT.PAPER) == {f"{d},{p}" for d in LT.DATASETS for p in LT.PROFILES}
  for cell, errors in LT.PAPER.items():
    assert set(errors) == set(LT.METHODS), cell
    assert errors["ldam_drw"] < errors["ldam"] < errors["erm"] < 100, cell  # The paper's order.
  c = LT.get_config("cifar10,exp100,ldam")
  assert (c.model.name, c.model.head, c.loss.name, c.loss.inv_temperature) == (
      "resnet32", "normed", "ldam", 30.0)  # LDAM-DRW's use_norm with LDAM, s = 30.
  assert (c.data.imb_over, c.data.imb_type, c.data.imb_factor, tuple(c.data.class_subset)) == (
      "all", "exp", 100.0, ())
  assert (c.lr, c.weight_decay, c.batch_size, c.num_epochs, tuple(c.lr_step_epochs)) == (
      0.1, 2e-4, 128, 200, (160, 180))
  c = LT.get_config("cifar10,exp100,ldam_drw")
  assert (c.weighting.mode, c.weighting.cb_beta, c.weighting.drw_epoch, c.model.head) == (
      "reweighted", 0.9999, 160, "normed")  # class-balanced weights from epoch 160 on
  c = LT.get_config("cifar100,step10,erm")
  assert (c.data.name, c.data.imb_type, c.data.imb_factor, c.model.head, c.loss.name) == (
      "cifar100", "step", 10.0, "linear", "ce")


@pytest.mark.parametrize("name", FILES)
def test_config_file_imports_only_polyjax_and_documents_its_command(name):
  path = CONFIGS / name
  # Imports only from polyjax (never `from configs import ...`, which needs the repo
  # root on sys.path) and the standard library.
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom):
      assert node.module.split(".")[0] in ("polyjax", "ml_collections", "__future__"), node.module
    elif isinstance(node, ast.Import):
      assert all(a.name in ("pathlib",) for a in node.names)
  doc = load_module(path).__doc__
  command = f"python -m polyjax.main --config=configs/{name}"
  assert command + (":" if name in PARAMETERISED else "") in doc


@pytest.mark.parametrize("name,arg", EXPERIMENTS)
def test_config_loads_from_anywhere_and_validates(name, arg, monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  config = get_config(name, arg)
  # validate does not load data, so it passes for the image datasets too.
  config_lib.validate(config, device_count=1)
  module = load_module(CONFIGS / name)
  if hasattr(module, "sweep"):
    for field in (module.sweep() if arg is None else module.sweep(arg)):
      config_lib.get_field(config, field)


@pytest.mark.parametrize("arg", TABLE_ARGS)
def test_table_sweep_is_the_papers_tuning_stage(arg):
  assert "python -m polyjax.sweep --config=configs/table.py:" in TABLE.__doc__
  config = TABLE.get_config(arg)
  lrs = list(config_lib.TUNING_LRS[config.data.name])  # Presets are named by dataset.
  assert config.lr in lrs  # The paper's chosen lr lies inside the tuning grid.
  # Every lr at the regular and the large batch size; nothing else changes.
  assert TABLE.sweep(arg) == {"batch_size": [64, 512], "lr": lrs}
  for batch_size, lr in itertools.product([64, 512], lrs):
    c = TABLE.get_config(arg)
    config_lib.set_field(c, "batch_size", batch_size)
    config_lib.set_field(c, "lr", lr)
    config_lib.validate(c, device_count=1)


@pytest.mark.parametrize("module,arg,message", [
    (TABLE, "mnist,poly,iw", "config argument dataset 'mnist' is not known; valid: cifar10, "
                             "celeba, waterbirds"),
    (TABLE, "cifar10,focal,iw", "config argument loss 'focal' is not known; valid: ce, poly"),
    (TABLE, "cifar10,poly,dro", "config argument weighting 'dro' is not known; valid: erm, "
                                "iw, iwexp"),
    (TABLE, "cifar10,poly", "the config argument (--config=FILE:DATASET,LOSS,WEIGHTING) must "
                            "be 3 comma-separated values (dataset: cifar10, celeba, "
                            "waterbirds; loss: ce, poly; weighting: erm, iw, iwexp), got "
                            "'cifar10,poly'"),
    (TABLE, None, "must be 3 comma-separated values (dataset: cifar10, celeba, waterbirds; "
                  "loss: ce, poly; weighting: erm, iw, iwexp), got none"),
    (FIG5, "cifar10,vs,iw", "(--config=FILE:DATASET,METHOD) must be 2 comma-separated values"),
    (FIG5, "waterbirds,vs", "config argument dataset 'waterbirds' is not known; valid: cifar10, "
                            "celeba"),
    (FIG5, "cifar10,dro", "config argument method 'dro' is not known; valid: poly_iw, ce_us, "
                          "ldam, cdt, la, vs, poly_dro, ce_dro, vs_dro"),
    (FIG5, "cifar10,vs_dro", "config argument method 'vs_dro' is not in Figure 5 for cifar10; "
                             "valid: poly_iw, ce_us, ldam, cdt, la, vs"),
])
def test_a_bad_argument_is_one_line_naming_it_and_the_valid_values(module, arg, message):
  with pytest.raises(config_lib.ConfigError) as e:
    module.get_config(arg)
  assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
  if hasattr(module, "sweep"):
    with pytest.raises(config_lib.ConfigError, match="config argument"):
      module.sweep(arg)


def test_tuning_grid_names_an_unknown_preset():
  with pytest.raises(config_lib.ConfigError, match="no tuning grid for dataset preset 'mnist'"):
    config_lib.tuning_grid("mnist")


@pytest.mark.parametrize("name", sorted(config_lib.DATASET_PRESETS))
def test_dataset_preset_sets_existing_fields(name):
  base = config_lib.flatten(config_lib.base_config())
  c = config_lib.dataset_preset(config_lib.base_config(), name)
  flat = config_lib.flatten(c)
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
