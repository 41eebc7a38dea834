"""The paper's synthetic Figures 1 and 2, computed from polyjax's losses and weights.

Figure 1: a linear classifier trained by full-batch gradient descent on two
truncated Gaussians (docs/figures.md), with cross-entropy and the poly-tailed loss, each
without and with importance weights. Figure 2: the high-dimensional Gaussian
mixture with its exact test error, for weighted poly-tailed classifiers and the
max-margin classifier, computed in `polyjax.gaussian_mixture` and re-exported here.
`scripts/figure1.py`, `scripts/figure2.py` and the notebooks call the functions
here; plotting lives with them at the end.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from polyjax import losses, weighting
from polyjax.data import synthetic
from polyjax.gaussian_mixture import (FIG2_LEFT_EXPONENTS, FIG2_N, SAMPLERS, PolySolver,
                                      class_sizes, exact_class_errors, exact_test_error,
                                      fig2_example_weights, fig2_mu_norm, figure2,
                                      max_margin_direction, sample_features)

__all__ = [
    # Figure 1.
    "FIG1_SETTINGS", "FIG1_TITLES", "TRUE_NORMAL", "angle_deg", "balanced_accuracy",
    "boundary_normal", "figure1", "figure1_weights", "max_margin_separator", "train_linear_gd",
    # Figure 2 (polyjax.gaussian_mixture).
    "FIG2_LEFT_EXPONENTS", "FIG2_N", "SAMPLERS", "PolySolver", "class_sizes",
    "exact_class_errors", "exact_test_error", "fig2_example_weights", "fig2_mu_norm",
    "figure2", "max_margin_direction", "sample_features",
    # Plots.
    "plot_figure1", "plot_figure2",
]

# --------------------------------------------------------------------------
# Figure 1: two truncated Gaussians, linear model, full-batch gradient descent.
# --------------------------------------------------------------------------

FIG1_SETTINGS: tuple[tuple[str, bool], ...] = (
    ("ce", False), ("ce", True), ("poly", False), ("poly", True))
FIG1_TITLES = {"ce": "Cross Entropy", "poly": "Poly-tailed Loss"}


def figure1_weights(train_group_counts: np.ndarray) -> np.ndarray:
  """Per-group importance weights of Figure 1: `n_majority / n_g` (majority 1, minority 10).

  These are `weighting.group_weights` rescaled so that the majority weight is 1
  instead of the mean weight: the paper's figure used the raw ratio 200/20 with
  a mean over examples. The direction of the weights is the same, but the scale
  multiplies the gradient, so with polyjax's mean-1 normalisation (weights 5.5
  and 0.55) the same learning rate would take different steps.
  """
  w_G = weighting.group_weights(train_group_counts, mode="reweighted")
  return (w_G / w_G[w_G > 0].min()).astype(np.float32)


def _loss_fns(alpha: float) -> dict[str, losses.LossFn]:
  return {"ce": losses.get_loss("ce"),
          "poly": losses.get_loss("poly", alpha=alpha, beta=1.0, kind="logit")}


def train_linear_gd(x_NxD: np.ndarray, y_N: np.ndarray, weight_SxN: np.ndarray,
                    loss_names: Sequence[str], *, lr: float, steps: int,
                    alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Full-batch gradient descent on `mean_i(w_i * loss_i)` for S linear classifiers at once.

  Setting s uses loss `loss_names[s]` and example weights `weight_SxN[s]`. All S
  models step together inside one `lax.fori_loop` in one jit (settings sharing
  a loss are vmapped). Parameters start at zero: the paper's PyTorch run started
  from its random default init, and the direction gradient descent converges to
  does not depend on it.

  Returns:
    weight_SxDxC (logits are `x @ W + b`), bias_SxC, final objective_S.
  """
  num_classes = int(y_N.max()) + 1
  fns = _loss_fns(alpha)
  names = sorted(set(loss_names))
  index = {name: np.flatnonzero(np.asarray(loss_names) == name) for name in names}
  x = jnp.asarray(x_NxD, jnp.float32)
  y = jnp.asarray(y_N, jnp.int32)
  dim = x.shape[1]

  def logits_of(params):
    W_DxC, b_C = params
    # A matmul, not a sum of D broadcast products: the latter was faster on CPU
    # but gave wrong gradients inside the vmapped loop (XLA CPU, jax 0.10.2);
    # tests/test_figures.py checks the steps against NumPy.
    return x @ W_DxC + b_C[None, :]

  def objective(params, loss_fn, w_N):
    return weighting.weighted_mean(loss_fn(logits_of(params), y, y), w_N)

  @jax.jit
  def run(w_by_loss):
    init = {name: (jnp.zeros((len(index[name]), dim, num_classes)),
                   jnp.zeros((len(index[name]), num_classes))) for name in names}

    def body(_, params):
      new = {}
      for name in names:
        g = jax.vmap(jax.grad(objective), in_axes=(0, None, 0))(
            params[name], fns[name], w_by_loss[name])
        new[name] = jax.tree.map(lambda p, d: p - lr * d, params[name], g)
      return new

    final = jax.lax.fori_loop(0, steps, body, init)
    values = {name: jax.vmap(objective, in_axes=(0, None, 0))(
        final[name], fns[name], w_by_loss[name]) for name in names}
    return final, values

  # Full float32 products on every platform: the boundary's direction converges
  # slowly over 10^6 steps, and TF32 (a GPU's default) would round the logits to
  # about 1e-3 relative, far coarser than the changes being followed.
  with jax.default_matmul_precision("float32"):
    final, values = run({name: jnp.asarray(weight_SxN[index[name]], jnp.float32)
                         for name in names})
  W = np.zeros((len(loss_names), dim, num_classes), np.float32)
  b = np.zeros((len(loss_names), num_classes), np.float32)
  value = np.zeros(len(loss_names), np.float32)
  for name in names:
    W[index[name]], b[index[name]] = np.asarray(final[name][0]), np.asarray(final[name][1])
    value[index[name]] = np.asarray(values[name])
  return W, b, value


def balanced_accuracy(W_DxC: np.ndarray, b_C: np.ndarray, x_NxD: np.ndarray,
                      y_N: np.ndarray) -> float:
  """Mean over classes of the per-class accuracy (the paper's balanced test accuracy)."""
  pred_N = np.argmax(x_NxD @ W_DxC + b_C, axis=1)
  return float(np.mean([np.mean(pred_N[y_N == c] == c) for c in np.unique(y_N)]))


def angle_deg(normal_a: np.ndarray, normal_b: np.ndarray) -> float:
  """Angle in degrees between two boundaries given by their normals, ignoring sign."""
  cos = abs(normal_a @ normal_b) / (np.linalg.norm(normal_a) * np.linalg.norm(normal_b))
  return float(np.degrees(np.arccos(np.clip(cos, 0.0, 1.0))))


def boundary_normal(W_DxC: np.ndarray) -> np.ndarray:
  """Normal of a two-class linear boundary `(W[:,1] - W[:,0]) . x + (b1 - b0) = 0`."""
  return W_DxC[:, 1] - W_DxC[:, 0]


TRUE_NORMAL = np.array([1.0, -1.0])  # the true boundary x0 = x1


def max_margin_separator(x_NxD: np.ndarray, y_N: np.ndarray) -> tuple[np.ndarray, float]:
  """The hard-margin linear SVM with intercept: `(normal, intercept)`, the separator
  `normal . x + intercept = 0` with `s_i (normal . x_i + intercept) >= 1` (s = 2y - 1),
  equality on the support vectors. Raises ValueError if the classes are not separable.

  scikit-learn's SVC (C = 1e6) finds the support vectors; its kernel cache holds float32
  products, which leaves the margins about 1e-7 from 1. The separator is then solved
  exactly in float64 from them: the KKT system of `min |normal|^2` subject to margin 1
  on every support vector.
  """
  from scipy import optimize
  from sklearn import svm
  x = np.asarray(x_NxD, np.float64)
  s = 2.0 * np.asarray(y_N) - 1.0
  # Separable iff some (normal, intercept) has every margin >= 1: a feasibility LP,
  # checked first because libsvm with this C runs without end on inseparable data.
  signed_NxP = s[:, None] * np.c_[x, np.ones(len(x))]
  if optimize.linprog(np.zeros(x.shape[1] + 1), A_ub=-signed_NxP, b_ub=-np.ones(len(x)),
                      bounds=(None, None)).status == 2:
    raise ValueError("the classes are not linearly separable")
  sv = svm.SVC(kernel="linear", C=1e6, tol=1e-8).fit(x, y_N).support_
  dim, k = x.shape[1], len(sv)
  # Unknowns (normal, intercept, multipliers): d/dnormal, d/dintercept, then the margins.
  A_KxP = np.c_[s[sv, None] * x[sv], s[sv]]
  kkt = np.zeros((dim + 1 + k, dim + 1 + k))
  kkt[:dim, :dim] = np.eye(dim)
  kkt[:dim + 1, dim + 1:] = -A_KxP.T
  kkt[dim + 1:, :dim + 1] = A_KxP
  sol = np.linalg.lstsq(kkt, np.r_[np.zeros(dim + 1), np.ones(k)], rcond=None)[0]
  normal, intercept = sol[:dim], float(sol[dim])
  return normal, intercept


def figure1(*, seed: int = 0, steps: int = 1_000_000, lr: float = 0.1,
            alpha: float = 1.0, n_test_per_class: int = 1000) -> dict[str, Any]:
  """Trains the four settings of Figure 1 and measures them on fresh balanced samples.

  Returns:
    A JSON-ready dict: the training data, the settings used, and `results`, one
    entry per (loss, iw) with the learned `weight` (D x C) and `bias`, the final
    training objective, the balanced test accuracy and the boundary's angle to
    the true boundary and to the max-margin (hard-margin SVM) boundary.
  """
  ds = synthetic.gaussians(seed=seed, n_test_per_class=n_test_per_class)
  train, test = ds.train, ds.test
  w_G = figure1_weights(ds.train_group_counts)
  weight_SxN = np.stack([w_G[train.group] if iw else np.ones(len(train), np.float32)
                         for _, iw in FIG1_SETTINGS])
  W, b, values = train_linear_gd(train.x, train.y, weight_SxN,
                                 [name for name, _ in FIG1_SETTINGS],
                                 lr=lr, steps=steps, alpha=alpha)
  mm_normal, mm_intercept = max_margin_separator(train.x, train.y)
  results = []
  for s, (name, iw) in enumerate(FIG1_SETTINGS):
    results.append({
        "loss": name, "iw": iw, "weight": W[s].tolist(), "bias": b[s].tolist(),
        "train_objective": float(values[s]),
        "train_acc": float(np.mean(np.argmax(train.x @ W[s] + b[s], 1) == train.y)),
        "balanced_test_acc": balanced_accuracy(W[s], b[s], test.x, test.y),
        "angle_to_true_boundary_deg": angle_deg(boundary_normal(W[s]), TRUE_NORMAL),
        "angle_to_max_margin_deg": angle_deg(boundary_normal(W[s]), mm_normal),
    })
  return {
      "settings": {"seed": seed, "steps": steps, "lr": lr, "alpha": alpha,
                   "optimizer": "full-batch gradient descent, zero init",
                   "group_weights": w_G.tolist(),
                   "train_group_counts": ds.train_group_counts.tolist(),
                   "n_test_per_class": n_test_per_class},
      "max_margin": {"normal": mm_normal.tolist(), "intercept": mm_intercept,
                     "angle_to_true_boundary_deg": angle_deg(mm_normal, TRUE_NORMAL)},
      "train": {"x": train.x.tolist(), "y": train.y.tolist()},
      "results": results,
  }


# --------------------------------------------------------------------------
# Plots of both figures.
# --------------------------------------------------------------------------


def plot_figure1(fig1: dict[str, Any], path=None):
  """Four panels like the paper's Figure 1: data, predicted regions, the learned, the true
  and the max-margin boundary."""
  import matplotlib
  if path is not None:
    matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  x_NxD = np.asarray(fig1["train"]["x"])
  y_N = np.asarray(fig1["train"]["y"])
  fig, axes = plt.subplots(1, len(fig1["results"]), figsize=(20, 5.8))
  lim = (-4.0, 10.0)
  x0 = np.linspace(*lim, 200)
  mm_normal = np.asarray(fig1["max_margin"]["normal"])
  mm_intercept = fig1["max_margin"]["intercept"]
  for ax, r in zip(axes, fig1["results"]):
    W, b = np.asarray(r["weight"]), np.asarray(r["bias"])
    # Boundary: (W[0,1]-W[0,0]) x0 + (W[1,1]-W[1,0]) x1 + (b1-b0) = 0.
    x1 = -((W[0, 1] - W[0, 0]) * x0 + (b[1] - b[0])) / (W[1, 1] - W[1, 0])
    ax.fill_between(x0, x1 - 100, x1, color="#E24A33", alpha=0.25,
                    label="Predicted majority")
    ax.fill_between(x0, x1, x1 + 100, color="#348ABD", alpha=0.25,
                    label="Predicted minority")
    ax.plot(x0, x1, color="#777777", lw=2, label="Learned boundary")
    ax.plot(lim, lim, "k--", lw=3, label="True boundary")
    ax.plot(x0, -(mm_normal[0] * x0 + mm_intercept) / mm_normal[1], color="#2CA02C", ls=":",
            lw=2.5, label="Max-margin boundary (hard-margin SVM)")
    ax.scatter(*x_NxD[y_N == 1].T, c="#E24A33", edgecolors="k", marker="o", s=50,
               label="Majority class")
    ax.scatter(*x_NxD[y_N == 0].T, c="#348ABD", edgecolors="k", marker="^", s=70,
               label="Minority class")
    ax.set(xlim=lim, ylim=lim, xlabel="feature $x_0$", ylabel="feature $x_1$")
    ax.set_title(f"{FIG1_TITLES[r['loss']]}: {'IW' if r['iw'] else 'No IW'}\n"
                 f"balanced test acc {r['balanced_test_acc']:.3f}")
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, ncol=4, loc="lower center")
  fig.tight_layout(rect=(0, 0.11, 1, 1))
  if path is not None:
    fig.savefig(path, dpi=100)
    plt.close(fig)
  return fig


def plot_figure2(fig2: dict[str, Any], path=None):
  """The paper's Figure 2: error vs tau (left) and error by class vs rho (right)."""
  import matplotlib
  if path is not None:
    matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6))
  styles = {"1": ("o", "#74c476", r"$w = 1$"), "tau": ("^", "#31a354", r"$w = \tau$"),
            "tau^3": ("p", "#006d2c", r"$w = \tau^3$"),
            "max-margin": ("*", "#777777", "Max-margin")}
  for name, (marker, color, label) in styles.items():
    rows = sorted((r for r in fig2["left"] if r["weighting"] == name), key=lambda r: r["tau"])
    left.plot([r["tau"] for r in rows], [100 * r["error"] for r in rows], marker=marker,
              color=color, lw=2.5, ms=9, label=label, alpha=0.6 if name == "max-margin" else 1)
  left.set(xlabel=r"Imbalance ratio $\tau$", ylabel="Test error (%)",
           title=r"Test error vs. imbalance ratio $\tau$")
  rows = fig2["right"]
  rho = [r["rho"] for r in rows]
  for key, marker, label in (("majority_error", "^", "Majority class"),
                             ("minority_error", "o", "Minority class"),
                             ("error", "*", "Overall")):
    right.plot(rho, [100 * r[key] for r in rows], marker=marker, lw=2.5, ms=9, markevery=2,
               label=label)
  tau = fig2["settings"]["right_tau"]
  right.set(xlabel=r"$\rho$", ylabel="Test error (%)",
            title=rf"Test error vs. importance weight $w = \tau^\rho$ ($\tau$ = {tau:.1f})")
  for ax in (left, right):
    ax.grid(True, lw=0.3)
    ax.legend()
  s = fig2["settings"]
  fig.suptitle(f"p = {s['p']:,}, n = {s['n']}, mean of {s['runs']} runs")
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=100)
    plt.close(fig)
  return fig
