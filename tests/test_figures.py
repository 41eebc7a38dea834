"""Tests for polyjax.figures and scripts/figure{1,2}.py at small settings."""

import importlib.util
import json
import pathlib
import warnings

import numpy as np
import pytest
from scipy import optimize

from polyjax import figures, run_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _script(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ----------------------------------------------------------------- Figure 1


def test_figure1_weights_are_the_papers_ratio():
  np.testing.assert_allclose(figures.figure1_weights(np.array([20, 200])), [10.0, 1.0])


def _numpy_gd(x, y, w, loss, lr, steps):
  """Independent reference: GD on mean(w * loss) with hand-derived gradients."""
  W, b = np.zeros((2, 2)), np.zeros(2)
  s = 2 * y - 1
  for _ in range(steps):
    logits = x @ W + b
    if loss == "ce":
      p = np.exp(logits - logits.max(1, keepdims=True))
      p /= p.sum(1, keepdims=True)
      dlogits = p - np.eye(2)[y]
    else:  # poly, alpha 1, beta 1: softplus(-v)/softplus(-1) for v <= 1, 1/v above.
      v = s * (logits[:, 1] - logits[:, 0])
      dv = np.where(v > 1, -1.0 / np.maximum(v, 1) ** 2,
                    -1.0 / (1 + np.exp(v)) / np.log1p(np.exp(-1.0)))
      dlogits = np.stack([-s * dv, s * dv], 1)
    dlogits *= (w / len(y))[:, None]
    W -= lr * x.T @ dlogits
    b -= lr * dlogits.sum(0)
  return W, b


def test_train_linear_gd_matches_numpy_reference():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(30, 2)).astype(np.float32)
  y = (x[:, 0] + 0.3 * rng.normal(size=30) > 0).astype(np.int32)
  w = np.where(y == 0, 3.0, 1.0).astype(np.float32)
  weight_SxN = np.stack([w, np.ones(30), w, np.ones(30)]).astype(np.float32)
  names = ["ce", "ce", "poly", "poly"]
  W, b, _ = figures.train_linear_gd(x, y, weight_SxN, names, lr=0.5, steps=40)
  for s, name in enumerate(names):
    W_ref, b_ref = _numpy_gd(x.astype(np.float64), y, weight_SxN[s], name, 0.5, 40)
    np.testing.assert_allclose(W[s], W_ref, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(b[s], b_ref, rtol=2e-4, atol=2e-5)


def test_train_linear_gd_uses_full_float32_products(monkeypatch):
  """Whatever the platform's default (TF32 on GPUs), Figure 1's steps are traced
  with float32 products."""
  import jax

  seen, real = [], figures._loss_fns

  def spied(alpha):
    def wrap(fn):
      def loss(*args):
        seen.append(jax.config.jax_default_matmul_precision)
        return fn(*args)
      return loss
    return {name: wrap(fn) for name, fn in real(alpha).items()}
  monkeypatch.setattr(figures, "_loss_fns", spied)
  x = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  figures.train_linear_gd(x, np.array([0, 1]), np.ones((1, 2), np.float32), ["ce"],
                          lr=0.1, steps=2)
  assert seen and set(seen) == {"float32"}


def test_figure1_weights_turn_poly_boundary_not_ce(tmp_path):
  fig1 = figures.figure1(steps=2000)
  res = {(r["loss"], r["iw"]): r for r in fig1["results"]}
  assert set(res) == set(figures.FIG1_SETTINGS)
  for r in res.values():
    assert np.asarray(r["weight"]).shape == (2, 2) and len(r["bias"]) == 2
    assert r["train_acc"] == 1.0  # the training set is interpolated
    assert 0.9 < r["balanced_test_acc"] <= 1.0
  angle = {k: r["angle_to_true_boundary_deg"] for k, r in res.items()}
  # The paper's point: IW turns the poly-tailed boundary toward the truth by
  # much more than it turns the cross-entropy boundary.
  assert angle["poly", True] < angle["poly", False] - 10
  assert abs(angle["ce", True] - angle["ce", False]) < 0.5 * (
      angle["poly", False] - angle["poly", True])
  run_dir.write_json(tmp_path / "f.json", fig1)  # JSON-ready


def test_figure1_script_writes_png_and_json(tmp_path, capsys):
  out = tmp_path / "out"
  assert _script("figure1").main(["--out", str(out), "--steps", "50"]) == 0
  data = json.loads((out / "figure1.json").read_text())
  assert [(r["loss"], r["iw"]) for r in data["results"]] == list(figures.FIG1_SETTINGS)
  assert data["settings"]["steps"] == 50
  assert (out / "figure1.png").read_bytes()[:4] == b"\x89PNG"


def _max_margin_by_angle(x, y):
  """Independent reference in 2-D: the largest geometric margin over unit normals
  u(theta), (min over class 1 of u.x - max over class 0 of u.x) / 2, on a grid of
  angles refined by bounded Brent. Returns it and its error bound: the margin is
  Lipschitz in the angle with constant max|x|, and Brent's interval ends within
  xatol + sqrt(eps) |offset| <= 1e-12 + sqrt(eps) * step of the best angle."""
  def margin(theta):
    proj = x @ np.array([np.cos(theta), np.sin(theta)])
    return (proj[y == 1].min(0) - proj[y == 0].max(0)) / 2
  grid = np.linspace(-np.pi, np.pi, 20_001)
  best = grid[np.argmax(margin(grid))]
  step = grid[1] - grid[0]
  # Brent searches the offset from `best`, so its relative tolerance acts on |offset|.
  res = optimize.minimize_scalar(lambda d: -margin(best + d), bounds=(-step, step),
                                 method="bounded", options={"xatol": 1e-12})
  bound = np.linalg.norm(x, axis=1).max() * (1e-12 + np.sqrt(np.finfo(float).eps) * step)
  return -res.fun, bound


def test_max_margin_separator_is_the_hard_margin_svm():
  from polyjax.data import synthetic
  train = synthetic.gaussians(seed=0, n_test_per_class=10).train
  x, y = train.x.astype(np.float64), train.y
  normal, intercept = figures.max_margin_separator(train.x, train.y)
  s = 2 * y - 1
  margins = s * (x @ normal + intercept)
  # Solved in float64: the support vectors sit on margin 1 to rounding (libsvm alone,
  # with its float32 kernel cache, leaves them about 1e-7 away).
  np.testing.assert_allclose(np.sort(margins)[:3], 1.0, atol=1e-12)  # 3 support vectors
  # The geometric margin 1/|normal| is the largest over all directions.
  best, bound = _max_margin_by_angle(x, y)
  assert 1 / np.linalg.norm(normal) == pytest.approx(best, abs=bound + 1e-12)
  with pytest.raises(ValueError, match="not linearly separable"):
    figures.max_margin_separator(np.r_[x, [[10.0, -4.0]]], np.r_[y, 0])


def test_figure1_plot_draws_the_max_margin_line_with_labelled_axes():
  import matplotlib
  matplotlib.use("Agg")
  fig1 = figures.figure1(steps=10, n_test_per_class=10)
  fig = figures.plot_figure1(fig1)
  x, y = np.asarray(fig1["train"]["x"], np.float64), np.asarray(fig1["train"]["y"])
  best, bound = _max_margin_by_angle(x, y)
  label = "Max-margin boundary (hard-margin SVM)"
  assert label in [t.get_text() for t in fig.legends[0].get_texts()]
  for ax in fig.axes:
    assert ax.get_xlabel() and ax.get_ylabel()
    assert len(ax.get_xticks()) > 2 and len(ax.get_yticks()) > 2
    assert all(t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels())
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
    # The drawn line, from its end points: distances of the data to it, signed.
    (xa, xb), (ya, yb) = line.get_xdata()[[0, -1]], line.get_ydata()[[0, -1]]
    direction = np.array([xb - xa, yb - ya]) / np.hypot(xb - xa, yb - ya)
    dist = (x - [xa, ya]) @ np.array([direction[1], -direction[0]])
    dist *= np.sign(dist[y == 1].min())
    # It separates the classes, with the same margin on each side, the largest
    # there is. The end points are float64 at |x| <= 10: rounding stays below 1e-12.
    assert dist[y == 1].min() > 0 and dist[y == 0].max() < 0
    assert dist[y == 1].min() == pytest.approx(-dist[y == 0].max(), abs=1e-12)
    assert dist[y == 1].min() == pytest.approx(best, abs=bound + 1e-12)
  matplotlib.pyplot.close(fig)


@pytest.mark.parametrize("flag", [["--steps", "0"], ["--lr", "-1"]])
def test_figure1_script_rejects_bad_flags(tmp_path, flag):
  with pytest.raises(SystemExit) as e:
    _script("figure1").parse_args(["--out", str(tmp_path)] + flag)
  assert e.value.code == 2


# ----------------------------------------------------------------- Figure 2


def test_class_sizes_follow_the_paper():
  assert figures.class_sizes(1) == (50, 50)
  assert figures.class_sizes(10) == (91, 9)
  assert figures.class_sizes(11) == (92, 8)


def test_exact_error_matches_monte_carlo():
  rng = np.random.default_rng(1)
  p, mu = 20, 1.5
  w = rng.normal(size=p)
  w[:2] = [0.6, 0.2]  # class errors well inside (0, 0.5)
  exact = figures.exact_class_errors(w, mu)
  m = 200_000
  for k in range(2):
    z = rng.normal(size=(m, p))
    z[:, k] += mu
    mc = np.mean(z @ w <= 0)
    assert abs(mc - exact[k]) < 4 * np.sqrt(exact[k] * (1 - exact[k]) / m)
  assert figures.exact_test_error(w, mu) == pytest.approx(np.mean(exact))


def test_reduced_sampler_has_the_wishart_gram_law():
  rng = np.random.default_rng(2)
  p, n = 40, 6
  grams = np.stack([
      (lambda F: F[:, 2:] @ F[:, 2:].T)(
          figures.sample_features(rng, n_major=4, n_minor=2, p=p, sampler="reduced"))
      for _ in range(4000)])
  assert grams.shape == (4000, n, n)
  df = p - 2
  mean = grams.mean(0)
  np.testing.assert_allclose(np.diag(mean), df, rtol=0.03)
  assert np.abs(mean - np.diag(np.diag(mean))).max() < 0.6
  # Wishart(df, I): Var(diagonal) = 2 df, Var(off-diagonal) = df.
  np.testing.assert_allclose(grams[:, 0, 0].var(), 2 * df, rtol=0.1)
  np.testing.assert_allclose(grams[:, 0, 1].var(), df, rtol=0.1)


def test_reduced_features_give_the_same_classifiers_as_explicit():
  # The reduction is exact: rotate the explicit Gaussian block onto n coordinates
  # (G = R^T Q^T) and every fitted classifier has the same test error.
  rng = np.random.default_rng(3)
  p, n1, n2 = 3000, 45, 5
  Z = figures.sample_features(rng, n_major=n1, n_minor=n2, p=p, sampler="explicit")
  assert Z.shape == (n1 + n2, p)
  _, R = np.linalg.qr(Z[:, 2:].T.astype(np.float64))
  F = np.concatenate([Z[:, :2], R.T], axis=1)
  mu = figures.fig2_mu_norm(p)
  weights = np.stack([figures.fig2_example_weights(n1, n2, e) for e in (0.0, 3.0)])
  solver = figures.PolySolver()
  fit_z, fit_f = solver.fit(Z[None], weights[None]), solver.fit(F[None], weights[None])
  for k in range(2):
    assert figures.exact_test_error(fit_f["w"][0, k], mu) == pytest.approx(
        figures.exact_test_error(fit_z["w"][0, k], mu), rel=1e-4)
  np.testing.assert_array_equal(fit_z["steps"], fit_f["steps"])
  mm_z = figures.max_margin_direction(Z, n1)
  mm_f = figures.max_margin_direction(F, n1)
  assert figures.exact_test_error(mm_f, mu) == pytest.approx(
      figures.exact_test_error(mm_z, mu), rel=1e-3)


def test_poly_solver_matches_scipy_on_the_papers_objective():
  # At the paper's size the fitted margins sit in the 1/v tail, so the fit is
  # the minimiser of sum_i c_i / <v, z_i> + |v|^2 (c_i: normalised weights).
  p = 1_000_000
  n1, n2 = figures.class_sizes(10)
  F = figures.sample_features(np.random.default_rng(4), n_major=n1, n_minor=n2, p=p)
  F64 = F.astype(np.float64)
  exps = (0.0, 1.0)
  weights = np.stack([figures.fig2_example_weights(n1, n2, e) for e in exps])
  fit = figures.PolySolver(tol=1e-9).fit(F[None], weights[None])
  assert (fit["min_margin"] > 1).all()
  mu = figures.fig2_mu_norm(p)
  for k in range(len(exps)):
    c = weights[k] / weights[k].sum()
    ref = optimize.minimize(
        lambda v: np.sum(c / (F64 @ v)) + v @ v,
        np.r_[np.full(2, 2 ** -0.5), np.zeros(F.shape[1] - 2)],
        jac=lambda v: -F64.T @ (c / (F64 @ v) ** 2) + 2 * v, method="BFGS",
        options={"gtol": 1e-12, "maxiter": 10_000})
    assert np.linalg.norm(ref.jac) < 1e-7
    cos = fit["w"][0, k] @ ref.x / (np.linalg.norm(fit["w"][0, k]) * np.linalg.norm(ref.x))
    assert cos > 1 - 1e-9
    assert figures.exact_test_error(fit["w"][0, k], mu) == pytest.approx(
        figures.exact_test_error(ref.x, mu), rel=1e-5)


def test_max_margin_direction_is_the_hard_margin():
  n1, n2, p = 45, 5, 5000
  F = figures.sample_features(np.random.default_rng(5), n_major=n1, n_minor=n2, p=p)
  w_mm = figures.max_margin_direction(F, n1)
  margins = F.astype(np.float64) @ w_mm
  assert margins.min() == pytest.approx(1.0, abs=1e-3)  # no slack used
  # It has the largest normalised margin: larger than an unweighted poly fit's.
  w_poly = figures.PolySolver().fit(F[None], np.ones((1, 1, n1 + n2)))["w"][0, 0]
  assert margins.min() / np.linalg.norm(w_mm) > (F @ w_poly).min() / np.linalg.norm(w_poly)


def test_figure2_small_structure_and_effect(tmp_path):
  fig2 = figures.figure2(p=20_000, runs=2, approx_taus=(1, 6), rhos=(0.0, 1.0, 3.0))
  assert {(r["tau"], r["weighting"]) for r in fig2["left"]} == {
      (t, w) for t in (1.0, 86 / 14) for w in ("1", "tau", "tau^3", "max-margin")}
  assert [r["rho"] for r in fig2["right"]] == [0.0, 1.0, 3.0]
  for r in fig2["left"] + fig2["right"]:
    assert 0 <= r["minority_error"] <= 0.5 and 0 <= r["majority_error"] <= 0.5
    assert r["error"] == pytest.approx((r["majority_error"] + r["minority_error"]) / 2)
  assert fig2["diagnostics"]["all_converged"]
  err = {(r["tau"], r["weighting"]): r["error"] for r in fig2["left"]}
  tau = 86 / 14
  assert err[tau, "tau^3"] < err[tau, "tau"] < err[tau, "1"]
  right = fig2["right"]
  assert right[0]["minority_error"] > right[1]["minority_error"] > right[2]["minority_error"]
  assert right[0]["majority_error"] <= right[2]["majority_error"]


def test_figure2_script_writes_png_and_json(tmp_path):
  out = tmp_path / "out"
  assert _script("figure2").main(["--out", str(out), "--p", "5000", "--runs", "1"]) == 0
  data = json.loads((out / "figure2.json").read_text())
  assert set(data["left"][0]) >= {"tau", "weighting", "error"}
  assert set(data["right"][0]) >= {"rho", "error", "majority_error", "minority_error"}
  assert len(data["right"]) == 21 and data["settings"]["p"] == 5000
  assert (out / "figure2.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("flag", [["--p", "1"], ["--runs", "0"], ["--sampler", "bogus"]])
def test_figure2_script_rejects_bad_flags(tmp_path, flag):
  with pytest.raises(SystemExit) as e:
    _script("figure2").parse_args(["--out", str(tmp_path)] + flag)
  assert e.value.code == 2


def test_the_max_margin_direction_is_the_same_on_every_call():
  from polyjax import gaussian_mixture
  rng = np.random.default_rng(0)
  F = rng.normal(size=(60, 8))
  F[:, 0] += 4.0  # Signed rows, separable through the origin: liblinear converges.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    a = gaussian_mixture.max_margin_direction(F, 45)
    b = gaussian_mixture.max_margin_direction(F, 45)
  assert np.array_equal(a, b)
