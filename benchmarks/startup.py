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

Each is measured as wall-clock seconds and as CPU seconds (user + system, of the
process and what it waited for; for `import`, of the import alone). On a machine
shared with other jobs the wall clock follows their load; the CPU seconds vary much
less and are the figure to compare between checkouts.

Prints a table of the median, min and max of each, and the optional libraries
(tensorflow_datasets, tensorflow, grain, PIL, pandas, scikit-learn) that
`import polyjax.main` plus loading the digits data brings in. `--json`: one JSON
object instead.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
OPTIONAL = ("tensorflow_datasets", "tensorflow", "grain", "PIL", "pandas", "sklearn")

_TIMED_IMPORT = """
import time
t, c = time.perf_counter(), time.process_time()
import polyjax.main
print(time.perf_counter() - t, time.process_time() - c)
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


def _children_cpu() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _run(args: list[str], root: pathlib.Path) -> tuple[float, float, str]:
  """(wall seconds, CPU seconds, stdout) of `python *args` in `root`; raises on a
  non-zero exit."""
  t, c = time.perf_counter(), _children_cpu()
  out = subprocess.run([sys.executable, *args], cwd=root, env=_env(root),
                       capture_output=True, text=True)
  wall, cpu = time.perf_counter() - t, _children_cpu() - c
  if out.returncode != 0:
    raise RuntimeError(f"{' '.join(args)} exited {out.returncode}: {out.stderr[-2000:]}")
  return wall, cpu, out.stdout


def measure(root: pathlib.Path, reps: int, epochs: int) -> dict:
  """Wall and CPU seconds of each measurement, `reps` fresh processes each, plus the
  optional libraries a digits run imports."""
  config = str(root / "configs" / "digits_poly.py")
  commands = {
      "import_proc": ["-c", "import polyjax.main"],
      "check_args": ["-m", "polyjax.main", f"--config={config}", "--only_check_args"],
      "run": ["-m", "polyjax.main", f"--config={config}", f"--config.num_epochs={epochs}"],
  }
  names = ["import", *commands]
  wall: dict[str, list[float]] = {name: [] for name in names}
  cpu: dict[str, list[float]] = {name: [] for name in names}
  for _ in range(reps):
    w, c = map(float, _run(["-c", _TIMED_IMPORT], root)[2].split()[-2:])
    wall["import"].append(w)
    cpu["import"].append(c)
    for name, args in commands.items():
      with tempfile.TemporaryDirectory() as tmp:
        w, c, _ = _run(args + ([f"--workdir={tmp}/run"] if name == "run" else []), root)
      wall[name].append(w)
      cpu[name].append(c)
  where = _run(["-c", "import polyjax; print(polyjax.__file__)"], root)[2].strip()
  imported = _run(["-c", _IMPORTED], root)[2].split()
  return {"root": str(root), "polyjax": where, "reps": reps, "epochs": epochs,
          "wall_s": wall, "cpu_s": cpu, "optional_imported": imported,
          "load_average": os.getloadavg()}


def table(result: dict) -> str:
  lines = [f"polyjax from {result['polyjax']}; {result['reps']} fresh processes each; "
           f"run = {result['epochs']} epoch(s) of configs/digits_poly.py; load average "
           f"{', '.join(f'{x:.1f}' for x in result['load_average'])} at the end",
           f"{'':<12} {'wall_s':^23}   {'cpu_s':^23}",
           f"{'measure':<12} " + "   ".join([f"{'median':>7} {'min':>7} {'max':>7}"] * 2)]
  for name in result["wall_s"]:
    cells = [f"{statistics.median(v):>7.3f} {min(v):>7.3f} {max(v):>7.3f}"
             for v in (result["wall_s"][name], result["cpu_s"][name])]
    lines.append(f"{name:<12} " + "   ".join(cells))
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
