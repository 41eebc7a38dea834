"""Benchmark: how long a digits run takes to start, and which libraries it imports.

    python benchmarks/startup.py [--reps=5] [--root=CHECKOUT] [--epochs=1] [--json]

Each measurement runs in a fresh Python process (nothing cached in memory, as for a
user's command), `--reps` times, against the polyjax of `--root` (default: the
checkout this script is in; PYTHONPATH puts it first, ahead of an installed copy):

  import        `import polyjax.main`, timed inside the process (the interpreter's
                own start-up excluded)
  import_proc   the whole `python -c "import polyjax.main"` process
  check_args    `python -m polyjax.main --config=configs/digits_poly.py --only_check_args`
                (imports, flag parsing, loading and validating the config)
  run           the same command training `--epochs` epochs into a fresh workdir
                (imports, data, compilation, training, evaluation, checkpoints)

Prints a table of the median, min and max seconds of each, and the optional
libraries (tensorflow_datasets, tensorflow, grain, PIL, pandas, scikit-learn) that
`import polyjax.main` plus loading the digits data brings in. `--json`: one JSON
object instead.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
OPTIONAL = ("tensorflow_datasets", "tensorflow", "grain", "PIL", "pandas", "sklearn")

_TIMED_IMPORT = """
import time
t = time.perf_counter()
import polyjax.main
print(time.perf_counter() - t)
"""

_IMPORTED = f"""
import sys
import polyjax.main
from polyjax import data
data.load("digits", weighting_mode="none", exponent=1.0)
print(" ".join(m for m in {OPTIONAL!r} if m in sys.modules))
"""


def _env(root: pathlib.Path) -> dict[str, str]:
  rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
  return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *rest])}


def _run(args: list[str], root: pathlib.Path) -> tuple[float, str]:
  """(wall seconds, stdout) of `python *args` in `root`; raises on a non-zero exit."""
  t = time.perf_counter()
  out = subprocess.run([sys.executable, *args], cwd=root, env=_env(root),
                       capture_output=True, text=True)
  wall = time.perf_counter() - t
  if out.returncode != 0:
    raise RuntimeError(f"{' '.join(args)} exited {out.returncode}: {out.stderr[-2000:]}")
  return wall, out.stdout


def measure(root: pathlib.Path, reps: int, epochs: int) -> dict:
  """Seconds of each measurement, `reps` fresh processes each, plus the optional
  libraries a digits run imports."""
  config = str(root / "configs" / "digits_poly.py")
  times: dict[str, list[float]] = {"import": [], "import_proc": [], "check_args": [],
                                   "run": []}
  for _ in range(reps):
    times["import"].append(float(_run(["-c", _TIMED_IMPORT], root)[1].split()[-1]))
    times["import_proc"].append(_run(["-c", "import polyjax.main"], root)[0])
    times["check_args"].append(
        _run(["-m", "polyjax.main", f"--config={config}", "--only_check_args"], root)[0])
    with tempfile.TemporaryDirectory() as tmp:
      times["run"].append(_run(
          ["-m", "polyjax.main", f"--config={config}", f"--workdir={tmp}/run",
           f"--config.num_epochs={epochs}"], root)[0])
  where = _run(["-c", "import polyjax; print(polyjax.__file__)"], root)[1].strip()
  imported = _run(["-c", _IMPORTED], root)[1].split()
  return {"root": str(root), "polyjax": where, "reps": reps, "epochs": epochs,
          "seconds": times, "optional_imported": imported}


def table(result: dict) -> str:
  lines = [f"polyjax from {result['polyjax']}; {result['reps']} fresh processes each; "
           f"run = {result['epochs']} epoch(s) of configs/digits_poly.py",
           f"{'measure':<12} {'median_s':>9} {'min_s':>7} {'max_s':>7}"]
  for name, values in result["seconds"].items():
    lines.append(f"{name:<12} {statistics.median(values):>9.3f} {min(values):>7.3f} "
                 f"{max(values):>7.3f}")
  lines.append("optional libraries imported by a digits run: "
               f"{', '.join(result['optional_imported']) or 'none'}")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--root", type=pathlib.Path, default=ROOT,
                      help="checkout whose polyjax is measured")
  parser.add_argument("--epochs", type=int, default=1)
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()
  result = measure(args.root.resolve(), args.reps, args.epochs)
  print(json.dumps(result) if args.json else table(result))


if __name__ == "__main__":
  main()
