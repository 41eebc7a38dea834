"""The paper's synthetic Figures 1 and 2, computed from polyjax's losses and weights.

Figure 1: a linear classifier trained by full-batch gradient descent on two
truncated Gaussians (docs/figures.md), with cross-entropy and the poly-tailed loss, each
without and with importance weights. Figure 2: the high-dimensional Gaussian
mixture with its exact test error, for weighted poly-tailed classifiers and the
max-margin classifier. `scripts/figure1.py`, `scripts/figure2.py` and the
notebooks call the functions here; plotting lives with them at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

from polyjax import losses, weighting
from polyjax.data import synthetic

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


def max_margin_normal(x_NxD: np.ndarray, y_N: np.ndarray) -> np.ndarray:
  """Normal of the hard-margin linear SVM with intercept (scikit-learn, C = 1e6)."""
  from sklearn import svm
  clf = svm.SVC(kernel="linear", C=1e6).fit(x_NxD, y_N)
  return clf.coef_[0]


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
  mm_normal = max_margin_normal(train.x, train.y)
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
      "max_margin": {"normal": mm_normal.tolist(),
                     "angle_to_true_boundary_deg": angle_deg(mm_normal, TRUE_NORMAL)},
      "train": {"x": train.x.tolist(), "y": train.y.tolist()},
      "results": results,
  }


# --------------------------------------------------------------------------
# Figure 2: high-dimensional Gaussian mixture, exact test error.
# --------------------------------------------------------------------------

FIG2_N = 100
SAMPLERS = ("reduced", "explicit")


def fig2_mu_norm(p: int) -> float:
  """`||mu|| = p ** 0.251` (docs/figures.md)."""
  return float(p) ** 0.251


def class_sizes(approx_tau: float, n: int = FIG2_N) -> tuple[int, int]:
  """(majority, minority) sizes summing to `n` with ratio closest to `approx_tau`."""
  n1 = min(int(np.round(approx_tau * n / (1.0 + approx_tau))), n - 1)
  return max(n1, n - n1), min(n1, n - n1)


def sample_features(rng: np.random.Generator, *, n_major: int, n_minor: int, p: int,
                    sampler: str = "reduced") -> np.ndarray:
  """Signed examples `z_i = s_i x_i` of the mixture, as rows of an N x D matrix.

  Majority rows are N(mu_1, I_p), minority rows N(mu_2, I_p), with
  `mu_k = ||mu|| e_k`: a classifier w is right on example i when `<w, z_i> > 0`,
  and coordinates 0 and 1 carry the means.

  "explicit" draws the N x p matrix. "reduced" draws a matrix with the same joint
  law of everything the classifiers below can see: columns 0 and 1 as above,
  then an N x N lower-triangular Bartlett factor L with `L L^T ~ Wishart_N(p - 2, I)`,
  the law of `G G^T` for the remaining N x (p - 2) Gaussian block G. Gradient
  descent started in span(e_0, e_1) and the SVM keep w in the span of e_0, e_1 and
  the rows, and depend on the data only through inner products among the rows and
  with e_0, e_1; an isometry maps that span of the explicit problem onto the
  reduced one, so the test errors have exactly the same distribution while the
  cost no longer grows with p. When p - 2 <= N the block is drawn explicitly.
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
  if p < 2:
    raise ValueError(f"p must be at least 2 (the means use two coordinates), got {p}")
  n = n_major + n_minor
  mean_Nx2 = np.zeros((n, 2))
  mean_Nx2[:n_major, 0] = mean_Nx2[n_major:, 1] = fig2_mu_norm(p)
  head_Nx2 = mean_Nx2 + rng.standard_normal((n, 2))
  if sampler == "explicit" or p - 2 <= n:
    rest = rng.standard_normal((n, p - 2))
  else:
    df = p - 2
    rest = np.tril(rng.standard_normal((n, n)), k=-1)
    rest[np.diag_indices(n)] = np.sqrt(rng.chisquare(df - np.arange(n)))
  return np.concatenate([head_Nx2, rest], axis=1).astype(np.float32)


def exact_class_errors(w_D: np.ndarray, mu_norm: float) -> tuple[float, float]:
  """(majority, minority) test error of direction w: `Phi(-<mu_k, w / |w|>)`."""
  w = np.asarray(w_D, np.float64)
  unit = w / np.linalg.norm(w)
  return (float(stats.norm.cdf(-mu_norm * unit[0])),
          float(stats.norm.cdf(-mu_norm * unit[1])))


def exact_test_error(w_D: np.ndarray, mu_norm: float) -> float:
  """`0.5 * (Phi(-<mu_1, w/|w|>) + Phi(-<mu_2, w/|w|>))`: the balanced test error."""
  return float(np.mean(exact_class_errors(w_D, mu_norm)))


def fig2_example_weights(n_major: int, n_minor: int, exponent: float) -> np.ndarray:
  """(N,) importance weights: minority/majority ratio `tau ** exponent`, mean 1."""
  w_G = weighting.group_weights(np.array([n_major, n_minor]), mode="reweighted",
                                exponent=exponent)
  return np.concatenate([np.full(n_major, w_G[0]), np.full(n_minor, w_G[1])])


@dataclasses.dataclass(frozen=True)
class PolySolver:
  """The paper's Figure 2 fit: heavy-ball gradient descent on the weighted
  poly-tailed loss plus `reg * |v|^2`, until the gradient norm is below `tol`.

  The paper minimises `sum_i w_i / <v, z_i> / sum_i w_i + |v|^2` (lr 1e-3,
  momentum 0.9, from (mu_1 + mu_2)/|mu_1 + mu_2|, stop at |grad| < 1e-5).
  polyjax's poly-tailed loss (`losses.poly_tailed_of_margin`, alpha 1) is that
  `1/v` for margins v > 1 and logistic below. Because `1/v` is homogeneous, the
  same run carried out on `w = margin_scale * v` with `reg / s^3`, `lr * s^3` and
  `tol / s^2` (s = margin_scale, alpha = 1; general alpha below) has iterates that
  are exactly `s` times the paper's while every margin stays above 1, and
  `s` pushes the margins up into that tail. `fit` reports the smallest final
  margin: above 1, the result is the paper's classifier; at or below 1 (small p,
  extreme weights) the logistic head shaped it, and the fit is of polyjax's loss.
  Computed in float64.
  """
  alpha: float = 1.0
  reg: float = 1.0
  lr: float = 1e-3
  momentum: float = 0.9
  tol: float = 1e-5
  max_steps: int = 1_000_000
  margin_scale: float = 4.0

  def fit(self, F_BxNxD: np.ndarray, weight_BxKxN: np.ndarray) -> dict[str, np.ndarray]:
    """Fits one classifier per (data draw b, weighting k); all in one compiled loop.

    Returns:
      dict with `w` (B, K, D), `steps` (B, K), `grad_norm` (B, K, in the
      paper's unscaled units) and `min_margin` (B, K, scaled units).
    """
    with jax.enable_x64(True):
      F = jnp.asarray(F_BxNxD, jnp.float64)
      wts = jnp.asarray(weight_BxKxN, jnp.float64)
      out = jax.tree.map(np.asarray, _fit_poly(F, wts, self))
    out["grad_norm"] = out["grad_norm"] * self.margin_scale ** (self.alpha + 1)
    return out


def _poly_objective(w_D, F_NxD, weight_N, alpha, reg):
  margins_N = F_NxD @ w_D
  loss_N = losses.poly_tailed_of_margin(margins_N, alpha=alpha, beta=1.0)
  return weighting.weighted_mean(loss_N, weight_N) + reg * jnp.sum(w_D * w_D)


@functools.partial(jax.jit, static_argnames="solver")
def _fit_poly(F_BxNxD, weight_BxKxN, solver: PolySolver):
  B, K, D = F_BxNxD.shape[0], weight_BxKxN.shape[1], F_BxNxD.shape[2]
  s, a = solver.margin_scale, solver.alpha
  reg, lr, tol = solver.reg * s ** (-a - 2), solver.lr * s ** (a + 2), solver.tol * s ** (-a - 1)
  tx = optax.sgd(lr, momentum=solver.momentum)
  # The paper's start (mu_1 + mu_2) / |mu_1 + mu_2|, scaled.
  w0_D = jnp.zeros((D,), F_BxNxD.dtype).at[:2].set(s / math.sqrt(2.0))
  grad_fn = jax.vmap(jax.vmap(jax.grad(_poly_objective), in_axes=(0, None, 0, None, None)),
                     in_axes=(0, 0, 0, None, None))
  w = jnp.broadcast_to(w0_D, (B, K, D))
  opt_state = jax.vmap(jax.vmap(tx.init))(w)
  g = grad_fn(w, F_BxNxD, weight_BxKxN, a, reg)
  gnorm = jnp.linalg.norm(g, axis=-1)
  steps = jnp.zeros((B, K), jnp.int32)

  def cond(carry):
    _, _, _, gnorm, steps = carry
    return jnp.any((gnorm > tol) & (steps < solver.max_steps))

  def body(carry):
    w, opt_state, g, gnorm, steps = carry
    active_BxK = (gnorm > tol) & (steps < solver.max_steps)
    updates, new_opt = jax.vmap(jax.vmap(tx.update))(g, opt_state)
    new_w = optax.apply_updates(w, updates)
    # Each fit stops where its own gradient first drops below tol.
    keep = lambda new, old: jnp.where(
        active_BxK.reshape(active_BxK.shape + (1,) * (new.ndim - 2)), new, old)
    w = keep(new_w, w)
    opt_state = jax.tree.map(keep, new_opt, opt_state)
    g = grad_fn(w, F_BxNxD, weight_BxKxN, a, reg)
    return w, opt_state, g, jnp.linalg.norm(g, axis=-1), steps + active_BxK.astype(jnp.int32)

  w, _, _, gnorm, steps = jax.lax.while_loop(cond, body, (w, opt_state, g, gnorm, steps))
  margins_BxKxN = jnp.einsum("bnd,bkd->bkn", F_BxNxD, w)
  return {"w": w, "steps": steps, "grad_norm": gnorm, "min_margin": margins_BxKxN.min(-1)}


def max_margin_direction(F_NxD: np.ndarray, n_major: int, *, C: float = 1e3) -> np.ndarray:
  """Hard-margin direction through the origin: scikit-learn's LinearSVC, as the paper.

  The paper fits `LinearSVC(loss="hinge", fit_intercept=False)` to the majority
  rows labelled 0 and the negated minority rows labelled 1 and takes minus the
  coefficients; C is large so that no slack is used on this separable data.
  """
  from sklearn import svm
  x = np.concatenate([F_NxD[:n_major], -F_NxD[n_major:]]).astype(np.float64)
  y = np.r_[np.zeros(n_major), np.ones(len(F_NxD) - n_major)]
  clf = svm.LinearSVC(loss="hinge", fit_intercept=False, C=C, max_iter=1_000_000,
                      tol=1e-6).fit(x, y)
  return -clf.coef_[0]


FIG2_LEFT_EXPONENTS = {"1": 0.0, "tau": 1.0, "tau^3": 3.0}


def figure2(*, p: int = 1_000_000, runs: int = 10, seed: int = 0,
            approx_taus: Sequence[float] = tuple(range(1, 12)),
            right_tau: float = 10.0, rhos: Sequence[float] = tuple(np.linspace(0, 5, 21)),
            sampler: str = "reduced", solver: PolySolver = PolySolver(),
            svm_c: float = 1e3) -> dict[str, Any]:
  """Both panels of Figure 2, averaged over `runs` fresh draws of the training set.

  Left: test error against the imbalance ratio tau for weights 1, tau, tau^3 and
  the max-margin classifier. Right: majority, minority and overall test error
  against rho for weights tau^rho at tau about `right_tau`.
  """
  if runs < 1:
    raise ValueError(f"runs must be at least 1, got {runs}")
  mu = fig2_mu_norm(p)
  sizes = sorted({class_sizes(t) for t in approx_taus})
  left_exps = list(FIG2_LEFT_EXPONENTS.values())

  def fit_all(draws, exponents):
    # draws: list of (F_NxD, n_major, n_minor); explicit features are fitted one
    # draw at a time so that only one N x p matrix is in memory.
    weight_BxKxN = np.stack([np.stack([fig2_example_weights(n1, n2, e) for e in exponents])
                             for _, n1, n2 in draws])
    chunk = len(draws) if sampler == "reduced" else 1
    out = []
    for i in range(0, len(draws), chunk):
      F = np.stack([d[0] for d in draws[i:i + chunk]])
      fit = solver.fit(F, weight_BxKxN[i:i + chunk])
      out.extend({k: v[b] for k, v in fit.items()} for b in range(len(F)))
    return out

  left_draws, mm_margins = [], []
  for run in range(runs):
    for j, (n1, n2) in enumerate(sizes):
      rng = np.random.default_rng([seed, 0, run, j])
      left_draws.append((sample_features(rng, n_major=n1, n_minor=n2, p=p, sampler=sampler),
                         n1, n2))
  left_fits = fit_all(left_draws, left_exps)
  left_err = {}
  for (F, n1, n2), fit in zip(left_draws, left_fits):
    tau = n1 / n2
    for name, k in zip(FIG2_LEFT_EXPONENTS, range(len(left_exps))):
      left_err.setdefault((tau, name), []).append(exact_class_errors(fit["w"][k], mu))
    w_mm = max_margin_direction(F, n1, C=svm_c)
    mm_margins.append(float(np.min(np.r_[F[:n1] @ w_mm, F[n1:] @ w_mm])))
    left_err.setdefault((tau, "max-margin"), []).append(exact_class_errors(w_mm, mu))

  n1, n2 = class_sizes(right_tau)
  right_draws = [(sample_features(np.random.default_rng([seed, 1, run]), n_major=n1,
                                  n_minor=n2, p=p, sampler=sampler), n1, n2)
                 for run in range(runs)]
  right_fits = fit_all(right_draws, list(rhos))
  right_err = np.array([[exact_class_errors(fit["w"][k], mu) for k in range(len(rhos))]
                        for fit in right_fits])  # runs x rhos x 2

  def row(errs):
    errs = np.asarray(errs)  # runs x 2 (majority, minority)
    overall = errs.mean(axis=1)
    return {"error": float(overall.mean()), "error_std": float(overall.std()),
            "majority_error": float(errs[:, 0].mean()),
            "minority_error": float(errs[:, 1].mean())}

  fits = left_fits + right_fits
  return {
      "settings": {"p": p, "n": FIG2_N, "mu_norm": mu, "runs": runs, "seed": seed,
                   "sampler": sampler, "right_tau": n1 / n2,
                   "right_sizes": [n1, n2], "solver": dataclasses.asdict(solver),
                   "svm_C": svm_c},
      "left": [{"tau": tau, "weighting": name, **row(errs)}
               for (tau, name), errs in sorted(left_err.items())],
      "right": [{"rho": float(rho), **row(right_err[:, k])} for k, rho in enumerate(rhos)],
      "diagnostics": {
          "max_steps_taken": int(max(f["steps"].max() for f in fits)),
          "max_final_grad_norm": float(max(f["grad_norm"].max() for f in fits)),
          "all_converged": bool(all((f["steps"] < solver.max_steps).all() for f in fits)),
          "min_margin_poly": float(min(f["min_margin"].min() for f in fits)),
          # Fits whose margins reached the logistic head (<= 1), where polyjax's
          # loss differs from the paper's 1/v.
          "fits_in_head": int(sum((f["min_margin"] <= 1.0).sum() for f in fits)),
          "fits": int(sum(f["min_margin"].size for f in fits)),
          "min_margin_max_margin": float(min(mm_margins)),
      },
  }


def plot_figure1(fig1: dict[str, Any], path=None):
  """Four panels like the paper's Figure 1: data, predicted regions, learned and true boundary."""
  import matplotlib
  if path is not None:
    matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  x_NxD = np.asarray(fig1["train"]["x"])
  y_N = np.asarray(fig1["train"]["y"])
  fig, axes = plt.subplots(1, len(fig1["results"]), figsize=(20, 5.4))
  lim = (-4.0, 10.0)
  x0 = np.linspace(*lim, 200)
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
    ax.scatter(*x_NxD[y_N == 1].T, c="#E24A33", edgecolors="k", marker="o", s=50,
               label="Majority class")
    ax.scatter(*x_NxD[y_N == 0].T, c="#348ABD", edgecolors="k", marker="^", s=70,
               label="Minority class")
    ax.set(xlim=lim, ylim=lim, xticks=[], yticks=[])
    ax.set_title(f"{FIG1_TITLES[r['loss']]}: {'IW' if r['iw'] else 'No IW'}\n"
                 f"balanced test acc {r['balanced_test_acc']:.3f}")
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, ncol=6, loc="lower center")
  fig.tight_layout(rect=(0, 0.07, 1, 1))
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
