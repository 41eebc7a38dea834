"""Command line: `python -m polyjax.main --config=configs/<name>.py [--workdir=DIR]`.

Any config field can be overridden, e.g. `--config.lr=0.01 --config.loss.alpha=2`.
Without `--workdir`, a fresh directory `runs/<config name>-<time>` is made. Bad
input exits with status 2 and one line naming the field, before anything is
written; a diverged run exits with status 1.
"""

from __future__ import annotations

import datetime
import pathlib
import re
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from polyjax import config as config_lib
from polyjax import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory; default: a fresh one under runs/.")
flags.mark_flags_as_required(["config"])


def default_workdir(config_path: str) -> pathlib.Path:
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return pathlib.Path("runs") / f"{pathlib.Path(config_path).stem}-{stamp}"


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  config = _CONFIG.value
  try:
    config_lib.validate(config, device_count=jax.device_count())
  except config_lib.ConfigError as e:
    print(f"polyjax: error: {e}", file=sys.stderr)
    return 2
  workdir = _WORKDIR.value or str(default_workdir(flags.FLAGS["config"].config_filename))
  print(f"polyjax: run directory {workdir}", flush=True)
  try:
    summary = train.train_and_evaluate(config, workdir)
  except config_lib.ConfigError as e:
    print(f"polyjax: error: {e}", file=sys.stderr)
    return 2
  except train.Diverged as e:
    print(f"polyjax: diverged: {e}", file=sys.stderr)
    return 1
  final = summary["final"]
  print(f"polyjax: {summary['status']} {summary['epochs_completed']} epochs in "
        f"{summary['wall_seconds']:.1f}s; test/reweighted_acc "
        f"{final.get('test/reweighted_acc', float('nan')):.4f}; run directory: {workdir}")
  return 0


def _fail(message: str) -> None:
  print(f"polyjax: error: {message}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with bad flags and misspelt config fields as one-line errors."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).splitlines()[0])
  except (AttributeError, KeyError) as e:
    # A locked ConfigDict rejects unknown fields: "'lrr'\nDid you mean "lr" ...".
    text = str(e)
    key = re.search(r"'(\w+)", text)
    key = key.group(1) if key else text
    hint = re.search(r'Did you mean "(\w+)"', text)
    given = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    named = next((a for a in given if a.split(".")[-1] == key), "--config")
    _fail(f"{named}: the config has no field {key!r}"
          + (f" (did you mean {hint.group(1)!r}?)" if hint else ""))
  return []  # Unreachable.


def run() -> None:
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)


if __name__ == "__main__":
  run()
