"""polyjax vs the PyTorch reference, alternately, several rounds; writes docs/BENCHMARKS.md.

    PYTHONPATH=$PWD python benchmarks/compare.py \
        --torch-python=/work/torchvenv/bin/python \
        --reference=../shared/bench/torch_reference.py --rounds=5

Each round runs every case once with polyjax (`benchmarks/run.py`) and once with
the reference, in alternating order, each in a fresh process. The table holds the
medians over rounds, the spread (min-max) and the ratio of the medians. The
section "## polyjax vs PyTorch reference" of the output file is replaced (or
appended); every other section is left as it is.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The reference runs twice per round: with torch's default thread count and with
# one thread (on a loaded machine torch's two spinning threads can be 10x slower
# than one). Ratios are taken against the faster of the two.
SIDES = ("polyjax", "torch", "torch_1thread")
SECTION = "## polyjax vs PyTorch reference"

# (name, workload, batch size, polyjax steps, reference steps). Throughputs are
# rates, so the two sides may take different numbers of steps (the reference's
# Python loop at 20,000 fig1 steps would take minutes of the shared machine).
CASES = (
    ("fig1", "fig1", None, 20000, 2000),
    ("mlp b64", "mlp", 64, 200, 200),
    ("mlp b512", "mlp", 512, 200, 200),
    ("convnet b64", "convnet", 64, 8, 8),
    ("convnet b512", "convnet", 512, 2, 2),
)


def _run_json(cmd: list[str], env=None) -> dict:
  out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
  if out.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def _rate(result: dict) -> float:
  return result["steps_per_s"] if "steps_per_s" in result else result["examples_per_s"]


def measure(args, on_round=None) -> tuple[list[dict], dict]:
  """Runs every case `args.rounds` times per side; `on_round(results, info, done)` after each round."""
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  cases = [c for c in CASES if not args.only or c[0] in args.only]
  rows = {c[0]: {side: [] for side in SIDES + ("first_call",)} for c in cases}
  info: dict = {}

  def results():
    return [{"name": c[0], "unit": "steps/s" if c[1] == "fig1" else "examples/s",
             "steps": (c[3], c[4]), **rows[c[0]]} for c in cases]

  for r in range(args.rounds):
    for name, workload, batch, jax_steps, ref_steps in cases:
      size = [] if batch is None else ["--batch-size", str(batch)]
      ref = [args.torch_python, args.reference, workload, "--steps", str(ref_steps)] + size
      cmds = {
          "polyjax": [sys.executable, "benchmarks/run.py", workload,
                      "--steps", str(jax_steps)] + size,
          "torch": ref,
          "torch_1thread": ref + ["--threads", "1"],
      }
      order = SIDES if r % 2 == 0 else SIDES[::-1]
      for side in order:
        res = _run_json(cmds[side], env=env)
        rows[name][side].append(_rate(res))
        if side == "polyjax":
          rows[name]["first_call"].append(res["first_call_seconds"])
          info.update(jax=res["jax"], device=res["device"], xla_flags=res["xla_flags"])
        elif side == "torch":
          info.update(torch=res["torch"], torch_threads=res["threads"])
        print(f"round {r + 1} {name} {side}: {_rate(res):.4g}", flush=True)
    if on_round is not None:
      on_round(results(), info, r + 1)
  return results(), info


def _cpu_model() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def render(results: list[dict], info: dict, *, rounds: int, load: tuple[float, float]) -> str:
  date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  lines = [
      SECTION, "",
      f"Measured {date} on `{platform.node()}`: {_cpu_model()}, {os.cpu_count()} cores, "
      f"{info.get('device')}; Python {platform.python_version()}, jax {info.get('jax')}, "
      f"torch {info.get('torch')} ({info.get('torch_threads')} threads). "
      f"XLA_FLAGS: `{info.get('xla_flags') or '(none)'}`.",
      "",
      f"{rounds} rounds, polyjax and the reference alternating, each run a fresh process "
      f"(`benchmarks/compare.py`). The machine was shared with other jobs (load average "
      f"{load[0]:.1f} at the start, {load[1]:.1f} at the end on {os.cpu_count()} cores), "
      "so absolute figures are low and noisy; the ratio (polyjax median over the faster "
      "reference median) is the figure to read, and the ranges show the spread over rounds.",
      "",
      "| workload | unit | polyjax median (range) | reference, default threads | "
      "reference, 1 thread | ratio to the faster reference | polyjax first call s | "
      "steps (polyjax/ref) |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for r in results:
    pj = r["polyjax"]
    best = max(("torch", "torch_1thread"), key=lambda k: statistics.median(r[k]))
    ratio = statistics.median(pj) / statistics.median(r[best])

    def cell(v):
      return f"{statistics.median(v):.4g} ({min(v):.4g}-{max(v):.4g})"

    lines.append(
        f"| {r['name']} | {r['unit']} | {cell(pj)} | {cell(r['torch'])} "
        f"| {cell(r['torch_1thread'])} | **{ratio:.2f}x** "
        f"| {statistics.median(r['first_call']):.1f} | {r['steps'][0]}/{r['steps'][1]} |")
  lines += ["", _NOTES.strip(), ""]
  return "\n".join(lines)


_NOTES = """
What is timed: polyjax runs `steps.make_train_epoch` (the whole epoch inside one
compiled call, as `train.train_and_evaluate` does) over `steps.make_train_step`,
with the model, optimizer and loss built by `train_state.create`,
`make_optimizer` and `losses.get_loss`; after the first (compiling) call, one
more call is timed up to `block_until_ready`. The reference runs its PyTorch
eager loop (3 warm-up steps, then the timed steps). fig1 is the Figure 1 problem
(`configs/gaussians_poly.py`, one full-batch step per epoch) trained the way a run
trains it: `experiment.build`, then calls of up to `train.FUSED_STEPS` epochs, each
call's order from `steps.epochs_indices` and its objectives fetched and checked.
A full batch is used in stored order (reordering it only reorders the gradient's
sum), where the reference draws a permutation every step. Compile time (first
call) is not in the ratios; it is listed separately. The reference is run with
torch's default threads and with one thread, and the ratio taken against the
faster: on a loaded machine torch's two spinning threads can be 10-20x slower.
"""


def write_section(path: pathlib.Path, section: str) -> None:
  """Replaces this script's section of `path` (or appends it); other sections stay."""
  text = path.read_text() if path.exists() else "# Benchmarks\n"
  lines = text.splitlines()
  start = next((i for i, l in enumerate(lines) if l.strip() == SECTION), None)
  if start is None:
    new = text.rstrip("\n") + "\n\n" + section
  else:
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    new = "\n".join(lines[:start] + section.splitlines() + [""] + lines[end:])
  tmp = path.with_suffix(".tmp")
  tmp.write_text(new.rstrip("\n") + "\n")
  os.replace(tmp, path)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--torch-python", required=True,
                      help="python interpreter of a venv with torch (never polyjax's)")
  parser.add_argument("--reference", default=str(ROOT.parent / "shared/bench/torch_reference.py"))
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--only", nargs="*", help="case names to run (default: all)")
  parser.add_argument("--output", default=str(ROOT / "docs/BENCHMARKS.md"))
  args = parser.parse_args(argv)
  if not pathlib.Path(args.torch_python).exists():
    parser.error(f"--torch-python {args.torch_python} does not exist")
  if not pathlib.Path(args.reference).exists():
    parser.error(f"--reference {args.reference} does not exist")
  if args.rounds < 1:
    parser.error("--rounds must be >= 1")
  load0 = os.getloadavg()[0]
  path = pathlib.Path(args.output)
  path.parent.mkdir(parents=True, exist_ok=True)

  def write(results, info, rounds):  # After every round, so a cut-short run still reports.
    section = render(results, info, rounds=rounds, load=(load0, os.getloadavg()[0]))
    write_section(path, section)
    return section

  results, info = measure(args, on_round=write)
  print(write(results, info, args.rounds))


if __name__ == "__main__":
  main()
