"""Check: runs on this machine's default platform against the same run on its CPU.

    PYTHONPATH=$PWD python benchmarks/precision.py [--epochs=2] [--lr=0.005]
        [--precisions=default,float32] [--config=configs/cifar_poly.py]
        [--data=cifar_shaped] [--out=FILE.json]

Trains the config (wandb disabled) once per `config.matmul_precision` in
--precisions on the default platform (a GPU where there is one), and once on the
CPU (`JAX_PLATFORMS=cpu`), which computes float32 products whatever the setting:
the reference. For each run it prints the largest |difference| from the reference
over every metric of every split, per epoch, and where it is, plus each run's
status and wall time. On a GPU, 'default' lets XLA use TF32; 'float32' should stay
near the reference (only summation order and algorithms differ). --data
cifar_shaped is benchmarks/cifar_shaped.py's random CIFAR-shaped images. Prints
one JSON object.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from sweep import PY, _difference, repo_env, summary, timed, write_json  # noqa: E402

from polyjax import run_dir  # noqa: E402


def rows(run: pathlib.Path) -> dict[tuple[int, str], dict]:
  """metrics.jsonl as {(epoch, split): row}."""
  return {(row["epoch"], row["split"]): row for row in run_dir.RunDir(run).read_metrics()}


def largest_differences(run: pathlib.Path, reference: pathlib.Path) -> list[dict]:
  """Per epoch of the reference: the largest |difference| of any metric of any
  split between the two runs, and the split/metric it is in."""
  a, ref = rows(run), rows(reference)
  out = []
  for epoch in sorted({e for e, _ in ref}):
    worst, at = 0.0, None
    for (e, split), r in ref.items():
      if e != epoch or (e, split) not in a:
        continue
      for key, value in r.items():
        other = a[e, split].get(key)
        if key in ("epoch", "step", "split") or not isinstance(value, (int, float, str)):
          continue
        try:
          diff = _difference(other, value)
        except (TypeError, ValueError):
          continue
        if diff > worst or at is None:
          worst, at = diff, f"{split}/{key}"
    out.append({"epoch": epoch, "max_abs_diff": worst, "at": at})
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/cifar_poly.py")
  parser.add_argument("--data", default="cifar_shaped",
                      help="config.data.name; cifar_shaped: random CIFAR-shaped images")
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--lr", type=float, default=0.005)
  parser.add_argument("--precisions", default="default,float32")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  env = repo_env()
  common = [f"--config={args.config}", f"--config.data.name={args.data}",
            f"--config.num_epochs={args.epochs}", f"--config.lr={args.lr}",
            "--config.wandb.mode=disabled"]
  out: dict = {"config": args.config, "data": args.data, "epochs": args.epochs,
               "lr": args.lr, "runs": {}}
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)

    def train(name: str, extra: list[str], run_env: dict[str, str]) -> pathlib.Path:
      workdir = root / name
      wall, _ = timed([PY, "benchmarks/cifar_shaped.py", "main", *common, *extra,
                       f"--workdir={workdir}"], run_env)
      status = summary(workdir)["status"]
      kind = run_dir.RunDir(workdir).read_config()["device_kind"]
      out["runs"][name] = {"device_kind": kind, "wall_s": round(wall, 1), "status": status}
      return workdir

    # This process never starts JAX: on a GPU it would hold the runs' memory.
    reference = train("cpu", [], {**env, "JAX_PLATFORMS": "cpu"})
    for precision in args.precisions.split(","):
      name = f"default_platform_{precision}"
      run = train(name, [f"--config.matmul_precision={precision}"], env)
      out["runs"][name]["against_cpu"] = largest_differences(run, reference)
  write_json(out, args.out)


if __name__ == "__main__":
  main()
