"""The paper's Figure 2: importance weights in a high-dimensional Gaussian mixture.

    python scripts/figure2.py --out figures/

Mixture of docs/figures.md: p dimensions, n = 100 points, means ||mu|| e_1 and ||mu|| e_2
with ||mu|| = p^0.251, exact test error 0.5 (Phi(-<mu_1, w/|w|>) + Phi(-<mu_2, w/|w|>)).
Linear classifiers fitted to the weighted poly-tailed loss (alpha 1) plus |w|^2 as
the paper does, and the max-margin classifier (scikit-learn's LinearSVC). Left:
test error against the imbalance ratio tau for weights 1, tau, tau^3 and max-margin;
right: majority, minority and overall error against rho for weights tau^rho,
tau about 10. Writes figure2.png and figure2.json.

The default is the paper's size (p = 1,000,000, 10 runs): the "reduced" sampler
draws the features in an exactly equivalent (n + 2)-dimensional form (see
polyjax.figures.sample_features), so this takes seconds on a CPU. `--sampler
explicit` draws the n x p matrix itself (a GPU job at the paper's size). Expect,
as in the paper: with w = 1 the error is close to max-margin's and grows with tau;
w = tau and w = tau^3 reduce it, tau^3 the most; on the right the minority error
falls and the majority error rises with rho, overall lowest near rho = 3.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from polyjax import figures, run_dir


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, type=pathlib.Path, help="output directory")
  parser.add_argument("--p", type=int, default=1_000_000, help="dimension")
  parser.add_argument("--runs", type=int, default=10, help="training sets drawn per point")
  parser.add_argument("--seed", type=int, default=0, help="data seed")
  parser.add_argument("--sampler", choices=figures.SAMPLERS, default="reduced",
                      help="how the training features are drawn")
  parser.add_argument("--max-steps", type=int, default=1_000_000,
                      help="cap on gradient steps per fit")
  args = parser.parse_args(argv)
  if args.p < 2:
    parser.error(f"--p must be at least 2, got {args.p}")
  if args.runs < 1:
    parser.error(f"--runs must be at least 1, got {args.runs}")
  if args.max_steps < 1:
    parser.error(f"--max-steps must be at least 1, got {args.max_steps}")
  if args.out.exists() and not args.out.is_dir():
    parser.error(f"--out {args.out} exists and is not a directory")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  start = time.time()
  fig2 = figures.figure2(p=args.p, runs=args.runs, seed=args.seed, sampler=args.sampler,
                         solver=figures.PolySolver(max_steps=args.max_steps))
  fig2["wall_seconds"] = time.time() - start
  args.out.mkdir(parents=True, exist_ok=True)
  run_dir.write_json(args.out / "figure2.json", fig2)
  figures.plot_figure2(fig2, args.out / "figure2.png")
  print("tau     " + "".join(f"{name:>12}" for name in ("1", "tau", "tau^3", "max-margin")))
  for tau in sorted({r["tau"] for r in fig2["left"]}):
    errs = {r["weighting"]: r["error"] for r in fig2["left"] if r["tau"] == tau}
    print(f"{tau:6.2f}  " + "".join(f"{100 * errs[n]:11.3f}%"
                                    for n in ("1", "tau", "tau^3", "max-margin")))
  print("rho    overall   majority   minority")
  for r in fig2["right"]:
    print(f"{r['rho']:4.2f} {100 * r['error']:8.3f}% {100 * r['majority_error']:8.3f}% "
          f"{100 * r['minority_error']:8.3f}%")
  d = fig2["diagnostics"]
  if not d["all_converged"]:
    print(f"WARNING: some fits stopped at --max-steps={args.max_steps} with gradient norm "
          f"up to {d['max_final_grad_norm']:.2e}", file=sys.stderr)
  if d["fits_in_head"]:
    print(f"NOTE: {d['fits_in_head']} of {d['fits']} fits have margins <= 1, where the "
          "poly-tailed loss is logistic rather than the paper's 1/v (p is small)",
          file=sys.stderr)
  print(f"wrote {args.out / 'figure2.png'} and figure2.json in {time.time() - start:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
