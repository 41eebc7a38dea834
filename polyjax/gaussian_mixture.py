"""The paper's Figure 2: a high-dimensional Gaussian mixture with its exact test error.

Two classes in p dimensions with means `||mu|| e_1` and `||mu|| e_2` (docs/figures.md):
`sample_features` draws a training set (by default in a reduced form with the same
law, whose cost does not grow with p), `PolySolver` fits weighted poly-tailed
classifiers as the paper does, `max_margin_direction` the max-margin one, and
`exact_class_errors` gives each classifier's test error in closed form. `figure2`
puts both panels together; `polyjax.figures` re-exports these names and plots the
result.
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
  # random_state: liblinear's dual coordinate descent visits examples in a random
  # order; fixed, the same call gives the same direction.
  clf = svm.LinearSVC(loss="hinge", fit_intercept=False, C=C, max_iter=1_000_000,
                      tol=1e-6, random_state=0).fit(x, y)
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
  left_draws = [(sample_features(np.random.default_rng([seed, 0, run, j]), n_major=n1,
                                 n_minor=n2, p=p, sampler=sampler), n1, n2)
                for run in range(runs) for j, (n1, n2) in enumerate(sizes)]
  left_fits = _fit_draws(left_draws, list(FIG2_LEFT_EXPONENTS.values()), solver=solver,
                         sampler=sampler)
  left_err, mm_margins = _left_errors(left_draws, left_fits, mu, svm_c=svm_c)

  n1, n2 = class_sizes(right_tau)
  right_draws = [(sample_features(np.random.default_rng([seed, 1, run]), n_major=n1,
                                  n_minor=n2, p=p, sampler=sampler), n1, n2)
                 for run in range(runs)]
  right_fits = _fit_draws(right_draws, list(rhos), solver=solver, sampler=sampler)
  right_err = np.array([[exact_class_errors(fit["w"][k], mu) for k in range(len(rhos))]
                        for fit in right_fits])  # runs x rhos x 2
  return {
      "settings": {"p": p, "n": FIG2_N, "mu_norm": mu, "runs": runs, "seed": seed,
                   "sampler": sampler, "right_tau": n1 / n2,
                   "right_sizes": [n1, n2], "solver": dataclasses.asdict(solver),
                   "svm_C": svm_c},
      "left": [{"tau": tau, "weighting": name, **_error_row(errs)}
               for (tau, name), errs in sorted(left_err.items())],
      "right": [{"rho": float(rho), **_error_row(right_err[:, k])}
                for k, rho in enumerate(rhos)],
      "diagnostics": _diagnostics(left_fits + right_fits, solver, mm_margins),
  }


def _fit_draws(draws: Sequence[tuple[np.ndarray, int, int]], exponents: Sequence[float], *,
               solver: PolySolver, sampler: str) -> list[dict[str, np.ndarray]]:
  """`solver`'s fits of every draw `(F_NxD, n_major, n_minor)` for weights `tau ** e`,
  e in `exponents`: one dict per draw, arrays over the exponents. Explicit features
  are fitted one draw at a time so that only one N x p matrix is in memory."""
  weight_BxKxN = np.stack([np.stack([fig2_example_weights(n1, n2, e) for e in exponents])
                           for _, n1, n2 in draws])
  chunk = len(draws) if sampler == "reduced" else 1
  out = []
  for i in range(0, len(draws), chunk):
    F = np.stack([d[0] for d in draws[i:i + chunk]])
    fit = solver.fit(F, weight_BxKxN[i:i + chunk])
    out.extend({k: v[b] for k, v in fit.items()} for b in range(len(F)))
  return out


def _left_errors(draws: Sequence[tuple[np.ndarray, int, int]],
                 fits: Sequence[dict[str, np.ndarray]], mu: float, *,
                 svm_c: float) -> tuple[dict[tuple[float, str], list], list[float]]:
  """The left panel's class errors: {(tau, weighting): [(majority, minority) per run]},
  the max-margin classifier's included, and the max-margin fits' smallest margins."""
  errors, mm_margins = {}, []
  for (F, n1, n2), fit in zip(draws, fits):
    tau = n1 / n2
    for k, name in enumerate(FIG2_LEFT_EXPONENTS):
      errors.setdefault((tau, name), []).append(exact_class_errors(fit["w"][k], mu))
    w_mm = max_margin_direction(F, n1, C=svm_c)
    mm_margins.append(float(np.min(np.r_[F[:n1] @ w_mm, F[n1:] @ w_mm])))
    errors.setdefault((tau, "max-margin"), []).append(exact_class_errors(w_mm, mu))
  return errors, mm_margins


def _error_row(errs) -> dict[str, float]:
  """Mean overall, majority and minority error (and the overall's std) over runs."""
  errs = np.asarray(errs)  # runs x 2 (majority, minority)
  overall = errs.mean(axis=1)
  return {"error": float(overall.mean()), "error_std": float(overall.std()),
          "majority_error": float(errs[:, 0].mean()),
          "minority_error": float(errs[:, 1].mean())}


def _diagnostics(fits: Sequence[dict[str, np.ndarray]], solver: PolySolver,
                 mm_margins: Sequence[float]) -> dict[str, Any]:
  """Whether the fits converged, and whether they are of the paper's 1/v loss."""
  return {
      "max_steps_taken": int(max(f["steps"].max() for f in fits)),
      "max_final_grad_norm": float(max(f["grad_norm"].max() for f in fits)),
      "all_converged": bool(all((f["steps"] < solver.max_steps).all() for f in fits)),
      "min_margin_poly": float(min(f["min_margin"].min() for f in fits)),
      # Fits whose margins reached the logistic head (<= 1), where polyjax's
      # loss differs from the paper's 1/v.
      "fits_in_head": int(sum((f["min_margin"] <= 1.0).sum() for f in fits)),
      "fits": int(sum(f["min_margin"].size for f in fits)),
      "min_margin_max_margin": float(min(mm_margins)),
  }
