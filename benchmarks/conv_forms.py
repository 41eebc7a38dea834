"""Whole training epochs per convolution form, each form in its own process, alternating.

    PYTHONPATH=$PWD python benchmarks/conv_forms.py [--rounds 3] [--reps 3]
        [--cases convnet:im2col,convnet:cpu,resnet18:xla,resnet18:cpu]
    PYTHONPATH=$PWD python benchmarks/conv_forms.py --case convnet:cpu --steps 16

A case is MODEL:FORM. The models, at batch `--batch-size` (64) on 32x32x3 inputs
with 2 classes: `convnet` (`models.ConvNet`, `--convnet-steps` steps per epoch)
and `resnet18` (the CIFAR ResNet-18, init_channels 64, `--resnet-steps`). The forms:
  xla     the model built for a GPU (`backend='gpu'`): XLA's convolution, run here
  im2col  built for the CPU with Winograd off: every convolution `conv.im2col`
  cpu     built for the CPU: the forms `conv.cpu_form` picks (Winograd where it applies)
Each child process builds the model (weights from seed 0), the step with
`steps.make_train_step` (cross-entropy, SGD with momentum) and times
`steps.make_train_epoch`'s compiled call (a `lax.scan` over the steps, as a run's
epoch loop): one call to compile, then the median of `--reps` calls, wall and
process CPU time. The parent runs every case once per round, in alternating
order, and prints a table of the medians over rounds with each form's ratio to
the model's first case (> 1: faster). `--case` runs one child and prints its JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = ("convnet", "resnet18")
FORMS = ("xla", "im2col", "cpu")


def run_case(case: str, *, batch_size: int, num_steps: int, reps: int) -> dict:
  """Times one case's epoch in this process."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from polyjax import conv, losses, models, placement, resnet, steps, train_state

  model, form = case.split(":")
  if form == "im2col":
    conv.WINOGRAD_MIN_CHANNELS = sys.maxsize
  backend = "gpu" if form == "xla" else "cpu"
  in_shape = (32, 32, 3)
  rngs = nnx.Rngs(0)
  net = (models.ConvNet(in_shape=in_shape, num_classes=2, backend=backend, rngs=rngs)
         if model == "convnet" else
         resnet.ResNet(depth=18, in_channels=3, num_classes=2, backend=backend, rngs=rngs))
  train_def, params, model_state = nnx.split(net, nnx.Param, ...)
  eval_def = nnx.graphdef(nnx.view(net, use_running_average=True, deterministic=True,
                                   raise_if_not_found=False))
  model_def = train_state.ModelDef(train=train_def, eval=eval_def)
  tx = train_state.make_optimizer(lr=1e-3, momentum=0.9, weight_decay=0.0)
  state = train_state.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
      opt_state=tx.init(params), rng=jax.random.key(1), adv_probs=jnp.full((2,), 0.5))
  rng = np.random.default_rng(0)
  n = 4 * batch_size
  train = {"x": rng.standard_normal((n,) + in_shape, dtype=np.float32),
           "y": rng.integers(0, 2, n).astype(np.int32),
           "group": rng.integers(0, 2, n).astype(np.int32),
           "weight": rng.random(n, dtype=np.float32)}
  idx_SxB = np.concatenate([steps.epoch_indices(n, batch_size, seed=0, epoch=e)
                            for e in range(-(-num_steps // 4))])[:num_steps]
  sh = placement.Shardings(placement.make_mesh(jax.devices()[:1]))
  train_epoch = steps.make_train_epoch(
      steps.make_train_step(model_def=model_def, loss_fn=losses.get_loss("ce"), tx=tx), sh)
  state, train = jax.device_put(state, sh.replicated), jax.device_put(train, sh.replicated)
  idx = jax.device_put(idx_SxB, sh.stacked_batches)

  t0 = time.perf_counter()
  state, obj = jax.block_until_ready(train_epoch(state, train, idx))
  first = time.perf_counter() - t0
  wall, cpu = [], []
  for _ in range(reps):
    t0, c0 = time.perf_counter(), time.process_time()
    state, obj = jax.block_until_ready(train_epoch(state, train, idx))
    wall.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  if not np.all(np.isfinite(np.asarray(obj))):
    raise RuntimeError(f"{case}: the training objective is not finite")
  return {"case": case, "steps": num_steps, "batch_size": batch_size,
          "epoch_s": statistics.median(wall), "epoch_cpu_s": statistics.median(cpu),
          "first_call_s": first, "device": jax.devices()[0].device_kind}


def compare(cases: list[str], *, rounds: int, reps: int, batch_size: int,
            steps_of: dict[str, int]) -> list[dict]:
  """Every case once per round, each in a fresh process, in alternating order."""
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])}
  results = {c: [] for c in cases}
  for r in range(rounds):
    for case in (cases if r % 2 == 0 else cases[::-1]):
      cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--case", case,
             "--batch-size", str(batch_size), "--steps", str(steps_of[case.split(":")[0]]),
             "--reps", str(reps)]
      out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
      if out.returncode != 0:
        raise RuntimeError(f"{case} failed ({out.returncode}):\n{out.stderr[-2000:]}")
      results[case].append(json.loads(out.stdout.strip().splitlines()[-1]))
      print(f"round {r + 1}/{rounds} {case}: {results[case][-1]['epoch_s']:.3f} s",
            file=sys.stderr, flush=True)
  rows, base = [], {}
  for case in cases:
    runs = results[case]
    row = {"case": case, "steps": runs[0]["steps"],
           **{k: statistics.median(r[k] for r in runs)
              for k in ("epoch_s", "epoch_cpu_s", "first_call_s")},
           "epoch_s_range": (min(r["epoch_s"] for r in runs), max(r["epoch_s"] for r in runs))}
    ref = base.setdefault(case.split(":")[0], row)
    row["ratio"] = ref["epoch_s"] / row["epoch_s"]
    row["cpu_ratio"] = ref["epoch_cpu_s"] / row["epoch_cpu_s"]
    rows.append(row)
  return rows


def table(rows: list[dict]) -> str:
  lines = ["| case | steps | epoch s, median (range) | CPU s | speed-up (wall / CPU) "
           "| first call s |", "|---|---|---|---|---|---|"]
  for r in rows:
    lo, hi = r["epoch_s_range"]
    lines.append(f"| {r['case']} | {r['steps']} | {r['epoch_s']:.3f} ({lo:.3f}-{hi:.3f}) "
                 f"| {r['epoch_cpu_s']:.3f} | **{r['ratio']:.2f}x** / {r['cpu_ratio']:.2f}x "
                 f"| {r['first_call_s']:.1f} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--case", help="MODEL:FORM: time this case in this process")
  parser.add_argument("--cases", default="convnet:im2col,convnet:cpu,resnet18:xla,resnet18:cpu")
  parser.add_argument("--steps", type=int, help="with --case: steps per epoch")
  parser.add_argument("--convnet-steps", type=int, default=16)
  parser.add_argument("--resnet-steps", type=int, default=2)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--reps", type=int, default=3, help="timed epochs per process")
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args(argv)
  cases = [args.case] if args.case else args.cases.split(",")
  for case in cases:
    model, _, form = case.partition(":")
    if model not in MODELS or form not in FORMS:
      parser.error(f"a case is MODEL:FORM with MODEL in {list(MODELS)} and FORM in "
                   f"{list(FORMS)}, got {case!r}")
  if args.case:
    steps = args.steps or {"convnet": args.convnet_steps, "resnet18": args.resnet_steps}[
        args.case.split(":")[0]]
    print(json.dumps(run_case(args.case, batch_size=args.batch_size, num_steps=steps,
                              reps=args.reps)), flush=True)
    return
  rows = compare(cases, rounds=args.rounds, reps=args.reps, batch_size=args.batch_size,
                 steps_of={"convnet": args.convnet_steps, "resnet18": args.resnet_steps})
  print(table(rows), flush=True)


if __name__ == "__main__":
  main()
