"""Bad datasets on disk, through the real command lines: exit status 2 and one line on
stderr naming the file (and metadata.csv's line and column), before the run directory
is written; no traceback and no tensorflow-datasets warnings first.

The folders are the small ones of test_data_waterbirds; the tfds folders hold junk
and are read by the real tensorflow-datasets (no mock: what is on disk is the test).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

import subprocess_env
import test_data_waterbirds
from polyjax import data
from polyjax.data import sources, waterbirds

ROOT = subprocess_env.REPO
# Flags that keep a run small should the data unexpectedly load.
SMALL = ["--config.num_epochs=1", "--config.batch_size=4", "--config.eval_batch_size=4",
         "--config.model.name=linear"]
ROW = 2  # The metadata row the cases break: the image below, line 4 of metadata.csv.
IMAGE = "002.Bird_0/img_2.jpg"


def run(args: list[str], *, module: str = "polyjax.main", prelude: str = ""
        ) -> subprocess.CompletedProcess:
  """`python -m module args` in a fresh process on one CPU device; `prelude` runs first."""
  script = (f"import runpy, sys\n{prelude}\nsys.argv = [{module!r}] + {args!r}\n"
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n")
  return subprocess.run(
      [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=subprocess_env.env(JAX_PLATFORMS="cpu",
                             XLA_FLAGS="--xla_force_host_platform_device_count=1"))


def assert_one_line_error(proc, *names: str, prog: str = "polyjax") -> str:
  """Exit status 2 and exactly one line on stderr, `<prog>: error: ...`, naming `names`."""
  lines = proc.stderr.splitlines()
  assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr[-3000:])
  assert lines[0].startswith(f"{prog}: error: "), lines[0]
  for name in names:
    assert name in lines[0], (name, lines[0])
  return lines[0]


def run_waterbirds(root, workdir, *extra: str) -> subprocess.CompletedProcess:
  return run(["--config=configs/table.py:waterbirds,poly,iw", f"--config.data.data_dir={root}",
              f"--workdir={workdir}", *SMALL, "--config.data.resolution=32", *extra])


def edit_metadata(folder: str, edit) -> str:
  """Rewrites metadata.csv's lines with `edit(lines)`; returns its path."""
  path = os.path.join(folder, "metadata.csv")
  with open(path) as f:
    lines = f.read().splitlines()
  with open(path, "w") as f:
    f.write("\n".join(edit(lines)) + "\n")
  return path


def set_value(column: str, value: str):
  """An edit of metadata.csv setting `column` of row ROW to `value`."""
  def edit(lines):
    header = lines[0].split(",")
    cells = lines[1 + ROW].split(",")
    cells[header.index(column)] = value
    return lines[:1 + ROW] + [",".join(cells)] + lines[2 + ROW:]
  return edit


def drop_column(column: str):
  def edit(lines):
    j = lines[0].split(",").index(column)
    return [",".join(c for i, c in enumerate(line.split(",")) if i != j) for line in lines]
  return edit


def truncate_image(path: str) -> None:
  """A JPEG cut short after its header: it opens, and fails only when decoded."""
  noise = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
  Image.fromarray(noise).save(path, quality=95)  # Mostly scan data, after the header.
  with open(path, "rb") as f:
    content = f.read()
  with open(path, "wb") as f:
    f.write(content[:len(content) * 2 // 3])
  with Image.open(path) as img:
    assert img.size == (80, 60)  # The header is whole.


def corrupt(folder):
  path = os.path.join(folder, IMAGE)
  with open(path, "wb") as f:
    f.write(b"<html>not an image</html>")
  return path, ["cannot be decoded"]


def truncated(folder):
  path = os.path.join(folder, IMAGE)
  truncate_image(path)
  return path, ["cannot be decoded", "truncated"]


def missing_image(folder):
  path = os.path.join(folder, IMAGE)
  os.remove(path)
  return path, ["no such image file", "metadata.csv line 4"]


def missing_column(folder):
  return edit_metadata(folder, drop_column("place")), ["lacks column(s) place"]


def out_of_range(column, value, expected):
  def make(folder):
    path = edit_metadata(folder, set_value(column, value))
    return path, [", line 4:", f"column {column!r} is '{value}', expected {expected}"]
  return make


def empty_file(folder):
  path = os.path.join(folder, "metadata.csv")
  open(path, "w").close()
  return path, ["is empty"]


def header_only(folder):
  return edit_metadata(folder, lambda lines: lines[:1]), ["has a header but no rows"]


WATERBIRDS_CASES = {
    "corrupt_image": corrupt,
    "truncated_image": truncated,
    "image_missing": missing_image,
    "missing_column": missing_column,
    "y_out_of_range": out_of_range("y", "2", "0 or 1"),
    "place_out_of_range": out_of_range("place", "-1", "0 or 1"),
    "split_out_of_range": out_of_range("split", "3", "0, 1 or 2"),
    "y_not_a_number": out_of_range("y", "bird", "0 or 1"),
    "empty_metadata": empty_file,
    "header_only_metadata": header_only,
}


@pytest.mark.parametrize("case", list(WATERBIRDS_CASES))
def test_bad_waterbirds_folder_is_one_line_before_the_run_directory(tmp_path, case):
  folder = test_data_waterbirds.write_folder(tmp_path / "data")
  path, words = WATERBIRDS_CASES[case](folder)
  workdir = tmp_path / "run"
  proc = run_waterbirds(tmp_path / "data", workdir)
  assert_one_line_error(proc, path, *words)
  assert not workdir.exists()


def test_stream_finds_a_file_that_is_no_image_before_the_run_directory(tmp_path):
  folder = test_data_waterbirds.write_folder(tmp_path / "data")
  path, _ = corrupt(folder)
  workdir = tmp_path / "run"
  proc = run_waterbirds(tmp_path / "data", workdir, "--config.data.pipeline=stream")
  assert_one_line_error(proc, path, "not a readable image")
  assert not workdir.exists()


def test_stream_names_an_image_that_fails_to_decode_mid_run(tmp_path):
  # The header opens, so only the batch that decodes it finds it (the run has started).
  folder = test_data_waterbirds.write_folder(tmp_path / "data")
  path, words = truncated(folder)
  proc = run_waterbirds(tmp_path / "data", tmp_path / "run", "--config.data.pipeline=stream")
  assert_one_line_error(proc, path, *words)


def tfds_folder(root, name: str) -> str:
  """Where tensorflow-datasets keeps prepared `name` under `root`: root/name/version."""
  import tensorflow_datasets as tfds
  return os.path.join(root, name, str(tfds.builder_cls(name).VERSION))


def unrelated_files(root) -> None:
  """A data_dir of other things, and a cifar10/ folder with junk in it."""
  for rel, content in (("notes.txt", b"hello"), ("images/a.png", b"\x89PNG junk"),
                       ("cifar10/README", b"junk"), ("cifar10/3.0.2-old/x.bin", b"\0" * 64)):
    os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
    with open(os.path.join(root, rel), "wb") as f:
      f.write(content)


def test_cifar_data_dir_of_unrelated_files_says_what_to_run(tmp_path):
  root = tmp_path / "data"
  unrelated_files(root)
  workdir = tmp_path / "run"
  proc = run(["--config=configs/cifar_poly.py", f"--config.data.data_dir={root}",
              f"--workdir={workdir}", *SMALL])
  # One line: tfds' "Variant folder ... has no dataset_info.json" warnings are not shown.
  assert_one_line_error(proc, "data.name='cifar10'", tfds_folder(root, "cifar10"),
                        f"python -m polyjax.data prepare cifar10 --data_dir={root}")
  assert not workdir.exists()


def test_cifar_unreadable_dataset_info_is_named(tmp_path):
  root = tmp_path / "data"
  folder = tfds_folder(root, "cifar10")
  os.makedirs(folder)
  with open(os.path.join(folder, "dataset_info.json"), "wb") as f:
    f.write(b"\xda\x00 not json")
  workdir = tmp_path / "run"
  proc = run(["--config=configs/cifar_poly.py", f"--config.data.data_dir={root}",
              f"--workdir={workdir}", *SMALL])
  assert_one_line_error(proc, "data.name='cifar10'", f"{folder} is not a readable prepared",
                        f"python -m polyjax.data prepare cifar10 --data_dir={root}")
  assert not workdir.exists()


def test_verify_celeba_on_a_folder_that_does_not_exist(tmp_path):
  root = tmp_path / "nowhere"
  proc = run(["verify", "--config=configs/table.py:celeba,poly,iw",
              f"--config.data.data_dir={root}"], module="polyjax.data")
  assert_one_line_error(proc, "data.name='celeba'", tfds_folder(root, "celeb_a"),
                        f"python -m polyjax.data prepare celeba --data_dir={root}",
                        prog="polyjax.data")


def test_prepare_without_tensorflow_names_the_extra(tmp_path):
  # `import tensorflow` fails as where it is not installed (None in sys.modules).
  proc = run(["prepare", "cifar10", f"--data_dir={tmp_path}"], module="polyjax.data",
             prelude="sys.modules['tensorflow'] = None")
  assert_one_line_error(proc, "prepare cifar10 needs tensorflow", 'pip install -e ".[prepare]"',
                        "polyjax[prepare]", prog="polyjax.data")
  assert os.listdir(tmp_path) == []


# In-process checks of the pieces above.

def test_prepare_waterbirds_checks_every_image_opens(tmp_path):
  from polyjax.data import __main__ as cli
  folder = test_data_waterbirds.write_folder(tmp_path)
  assert cli.prepare("waterbirds", str(tmp_path)) == 0
  path, _ = corrupt(folder)
  with pytest.raises(data.DataInvalid, match=re.escape(f"{path}: not a readable image")):
    cli.prepare("waterbirds", str(tmp_path))


def test_prepare_names_any_missing_library(monkeypatch):
  from polyjax.data import __main__ as cli
  monkeypatch.setattr(cli, "PREPARE_NEEDS", {"no_such_module_here": "pip install it"})
  with pytest.raises(cli.MissingLibrary, match="needs no_such_module_here.*; install pip install it"):
    cli.check_prepare_needs("celeba")
  flag = types.SimpleNamespace(value=None)
  assert cli.main(["polyjax.data", "prepare", "celeba"], flag, flag) == 2


def test_metadata_lines_count_blank_lines_and_say_how_many_are_bad(tmp_path):
  folder = test_data_waterbirds.write_folder(tmp_path)
  edit_metadata(folder, lambda lines: lines[:2] + [""] + [
      line.replace(",0,0,0,", ",0,0,7,") for line in lines[2:]])
  # The first bad row is the second image, after the blank line 3: line 4.
  with pytest.raises(data.DataInvalid, match=r"metadata.csv, line 4: column 'place' is '7', "
                                             r"expected 0 or 1 \(and 7 more lines\)"):
    waterbirds.read_metadata(folder)
  edit_metadata(folder, lambda lines: [line.replace(",7,", ",0,") for line in lines])
  meta = waterbirds.read_metadata(folder)  # Blank lines are no rows.
  assert len(meta) == sum(test_data_waterbirds.LAYOUT.values()) and meta["y"].dtype == np.int64


def test_a_record_that_cannot_be_read_names_the_folder():
  class Broken:
    def __len__(self):
      return 3

    def __getitem__(self, i):
      if i >= 3:
        raise IndexError(i)
      raise RuntimeError("open() failed: No such file or directory; opening /d/x-00000\nmore")

  records = sources.Records(Broken(), dataset="cifar10", split="train",
                            folder="/d/cifar10/3.0.2", data_dir="/d")
  with pytest.raises(data.DataInvalid) as e:
    records[1]
  assert str(e.value) == (
      "data.name='cifar10': record 1 of split 'train' in /d/cifar10/3.0.2 cannot be read "
      "(RuntimeError: open() failed: No such file or directory; opening /d/x-00000); remove "
      "/d/cifar10/3.0.2 and prepare it again with: python -m polyjax.data prepare cifar10 "
      "--data_dir=/d")
  with pytest.raises(IndexError):  # Iteration still ends.
    records[3]


def test_tfds_logs_are_replayed_unless_dropped(caplog):
  logger = logging.getLogger("absl")
  with caplog.at_level(logging.WARNING):
    with sources._tfds_logs_held():
      logger.warning("kept")
      assert "kept" not in caplog.text  # Held back while tfds looks.
    with sources._tfds_logs_held() as drop:
      logger.warning("dropped")
      drop()
  assert "kept" in caplog.text and "dropped" not in caplog.text
  assert logger.propagate and not any(type(h).__name__ == "Hold" for h in logger.handlers)
