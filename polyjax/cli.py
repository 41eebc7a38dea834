"""What the command lines (`polyjax.main`, `polyjax.sweep`, `polyjax.data`) share.

- `parse_flags`: flag parsing with bad input as one line and exit status 2, before
  any work starts. absl and ml_collections report a config file that cannot be
  loaded (missing, a syntax or import error, an exception in `get_config`, no
  `get_config`) as a traceback or as a misleading "no field 'config_config'";
  `check_config_file` loads the file first and names the file and the cause.
  `--config=path.py:arg` passes `arg` to the file's `get_config(arg)`, as
  ml_collections does. `--config_help` lists every config field (and, with
  `--config`, the config's values that differ from the defaults);
  `--only_check_args` also validates the config's values.
- `quiet_logs`: library log lines about failures that polyjax reports itself stay
  off the terminal.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import NoReturn, Sequence

import ml_collections
from absl import flags
from absl import logging as absl_logging

from polyjax import config as config_lib


def fail(prog: str, message: str) -> NoReturn:
  """Prints `<prog>: error: <message>` (one line) and exits with status 2."""
  print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def config_file_arg(argv: Sequence[str]) -> str | None:
  """The value of `--config` in `argv` (`--config=X` or `--config X`), if given."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg[len("--config="):]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def check_config_file(value: str) -> ml_collections.ConfigDict:
  """The config of a `--config` value (`path`, or `path:arg` for a file whose
  `get_config(arg)` takes an argument); ValueError (one line naming the file and
  the cause) unless the file loads and `get_config` returns a ConfigDict."""
  path, arg = config_lib.split_config_spec(value)  # As ml_collections splits it.
  if not os.path.isfile(path):
    raise ValueError(f"config file {path} does not exist")
  try:
    with open(path) as f:
      source = f.read()
    compile(source, path, "exec")
  except SyntaxError as e:
    raise ValueError(f"config file {path}: syntax error at line {e.lineno}: {e.msg}") from e
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"config file {path} cannot be read: {e}") from e
  try:
    module = config_lib.load_config_module(path, "_polyjax_config_check")
  except Exception as e:  # noqa: BLE001  (any error in the user's file is reported)
    raise ValueError(f"config file {path} failed to load: {_cause(e)}") from e
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ValueError(f"config file {path} defines no get_config() function")
  try:
    config = get_config() if arg is None else get_config(arg)
  except config_lib.ConfigError as e:  # A bad argument: the message names it.
    raise ValueError(f"config file {path}: {e}") from e
  except Exception as e:  # noqa: BLE001
    raise ValueError(f"config file {path}: get_config() raised {_cause(e)}") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise ValueError(f"config file {path}: get_config() returned a value of type "
                     f"{type(config).__name__}, not an ml_collections.ConfigDict")
  return config


def _cause(e: BaseException) -> str:
  text = str(e).splitlines()[0] if str(e) else ""
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def config_help(config: ml_collections.ConfigDict | None = None, spec: str = "") -> str:
  """Every config field with its default and one-line meaning (`--config_help`);
  with the config of `--config=spec`, also its value where it differs."""
  rows = config_lib.field_help()
  width = max(len(f) for f, _, _ in rows)
  lines = ["Config fields (override any with --config.<field>=<value>)"
           + (f"; [config: value] where --config={spec} differs from the default:"
              if config is not None else ":")]
  for field, default, meaning in rows:
    line = f"  {field:<{width}}  {meaning} [default: {default!r}]"
    if config is not None and config_lib.get_field(config, field) != default:
      line += f" [config: {config_lib.get_field(config, field)!r}]"
    lines.append(line)
  return "\n".join(lines)


def parse_flags(argv: list[str], prog: str) -> list[str]:
  """absl flag parsing with a bad config file, bad flags and misspelt config fields
  as one-line errors (exit status 2). `--config_help` prints every config field
  and exits; `--only_check_args` also validates the config's values."""
  config_arg = config_file_arg(argv[1:])
  config = None
  if config_arg is not None:
    try:
      config = check_config_file(config_arg)
    except ValueError as e:
      fail(prog, str(e))
  if "--config_help" in argv[1:]:
    print(config_help(config, config_arg or ""))
    sys.exit(0)
  try:
    rest = flags.FLAGS(argv)
    if flags.FLAGS["only_check_args"].value and "config" in flags.FLAGS:
      _validate_only(prog)
    return rest
  except flags.Error as e:
    fail(prog, str(e).splitlines()[0])
  except (AttributeError, KeyError) as e:
    # A locked ConfigDict rejects unknown fields: "'lrr'\nDid you mean "lr" ...".
    text = str(e)
    key = re.search(r"'(\w+)", text)
    key = key.group(1) if key else text
    hint = re.search(r'Did you mean "(\w+)"', text)
    given = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    named = next((a for a in given if a.split(".")[-1] == key), "--config")
    fail(prog, f"{named}: the config has no field {key!r}"
         + (f" (did you mean {hint.group(1)!r}?)" if hint else ""))


def quiet_logs() -> None:
  """Keeps library log lines that polyjax reports itself off the terminal.

  Orbax logs every save at INFO and, when a save or restore fails (a full disk, a
  damaged checkpoint), logs the error from its threads before raising it to the
  caller, which reports it in one line. A logging handler that fails (wandb's, when
  the disk is full) is ignored instead of printing a traceback.
  """
  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
    absl_logging.get_absl_handler().addFilter(
        lambda record: f"{os.sep}orbax{os.sep}" not in record.pathname)
  logging.raiseExceptions = False
  sys.unraisablehook = _without_closed_loop_callbacks(sys.unraisablehook)


def _without_closed_loop_callbacks(hook):
  """`sys.unraisablehook` that drops the "Event loop is closed" errors of TensorStore
  callbacks: when a save or restore fails (a full disk, a damaged checkpoint), Orbax
  closes its asyncio loop while TensorStore still completes the outstanding reads or
  writes, and each completion reports this error; the failure itself is raised to
  polyjax, which reports it in one line."""
  def unraisablehook(unraisable):
    if is_closed_loop_callback(unraisable.exc_value):
      return
    hook(unraisable)
  return unraisablehook


def is_closed_loop_callback(error: BaseException | None) -> bool:
  """Whether `error` is asyncio's "Event loop is closed" from `call_soon_threadsafe`."""
  if not isinstance(error, RuntimeError) or str(error) != "Event loop is closed":
    return False
  tb = error.__traceback__
  while tb is not None:
    if tb.tb_frame.f_code.co_name == "call_soon_threadsafe":
      return True
    tb = tb.tb_next
  return False


def _validate_only(prog: str) -> None:
  """`--only_check_args`: absl exits 0 once the flags parse; the config's values are
  checked too (as for one device: the device count is a property of the machine)."""
  try:
    config_lib.validate(flags.FLAGS["config"].value, device_count=1)
  except config_lib.ConfigError as e:
    fail(prog, str(e))
