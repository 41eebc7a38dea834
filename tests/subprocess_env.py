"""The environment of the tests' subprocesses: the repository first on PYTHONPATH,
then the caller's own entries, which may be where the packages are installed."""

import os
import pathlib

REPO = str(pathlib.Path(__file__).resolve().parents[1])


def pythonpath(first: str | os.PathLike = REPO) -> str:
  rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
  return os.pathsep.join([str(first), *rest])


def env(**overrides: str) -> dict[str, str]:
  """This process's environment with `pythonpath()` and `overrides`."""
  return {**os.environ, "PYTHONPATH": pythonpath(), **overrides}
