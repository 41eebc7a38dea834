"""Target class priors under label shift, from a fixed classifier's outputs (NumPy).

Label shift: p_t(x | y) = p_s(x | y), only the class priors move from p_s(y) to
p_t(y), so the importance weight of a source example is w_y = p_t(y) / p_s(y).
Two estimators of p_t(y) from a source-trained model, held-out labelled source
data and unlabelled target inputs:

- BBSE (Lipton et al. 2018): with C[i, j] = P_s(f(x) = i, y = j) (the joint
  confusion matrix on held-out source data) and mu[i] = P_t(f(x) = i), label
  shift gives mu = C w; solve for w, clip it at 0 and set q_j = w_j p_s(j).
- MLLS (Saerens et al. 2002) with BCTS calibration (Alexandari et al. 2020): the
  maximum-likelihood priors of the target inputs under the source posteriors
  reweighted by q_j / p_s(j), found by EM; the posteriors are first calibrated by
  bias-corrected temperature scaling, softmax(a z + b), fitted on held-out source
  data by minimising the negative log-likelihood (convex in a, b: Newton's method).

Everything is float64 and deterministic; no JAX.
"""

from __future__ import annotations

import dataclasses

import numpy as np

ESTIMATORS = ("bbse", "mlls")


def softmax(z: np.ndarray) -> np.ndarray:
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def confusion_joint(pred: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
  """(C, C) joint C[i, j] = fraction of examples predicted i with label j."""
  pred, y = np.asarray(pred), np.asarray(y)
  out = np.zeros((num_classes, num_classes))
  np.add.at(out, (pred, y), 1.0)
  return out / len(y)


def bbse_weights(confusion: np.ndarray, target_pred_marginal: np.ndarray) -> np.ndarray:
  """(C,) w with confusion @ w = mu (least squares if singular), clipped at 0."""
  w, *_ = np.linalg.lstsq(np.asarray(confusion, np.float64),
                          np.asarray(target_pred_marginal, np.float64), rcond=None)
  return np.maximum(w, 0.0)


def bbse_priors(source_pred, source_y, target_pred, num_classes: int) -> np.ndarray:
  """Target priors by BBSE from hard predictions on held-out source data (with its
  labels) and on target data; q_j = w_j p_s(j), renormalised to sum 1."""
  confusion = confusion_joint(source_pred, source_y, num_classes)
  mu = np.bincount(np.asarray(target_pred), minlength=num_classes)[:num_classes]
  w = bbse_weights(confusion, mu / len(target_pred))
  q = w * confusion.sum(axis=0)
  if q.sum() <= 0:  # Every weight clipped: nothing to go on but the source priors.
    return confusion.sum(axis=0)
  return q / q.sum()


def mlls_log_likelihood(q: np.ndarray, probs: np.ndarray, source_priors: np.ndarray) -> float:
  """sum_i log sum_k (q_k / p_s(k)) P_s(k | x_i): the target inputs' log-likelihood
  of priors q, up to a constant."""
  return float(np.sum(np.log(np.asarray(probs) @ (np.asarray(q) / source_priors))))


def mlls_priors(probs: np.ndarray, source_priors: np.ndarray, *, tol: float = 1e-12,
                max_iter: int = 100_000) -> np.ndarray:
  """EM for the maximum-likelihood target priors (Saerens et al. 2002).

  Args:
    probs: (N, C) source posteriors P_s(k | x_i) of the target inputs.
    source_priors: (C,) the priors those posteriors assume.
    tol: stop when no prior moves by more than this in an iteration.
  """
  probs = np.asarray(probs, np.float64)
  ratio = 1.0 / np.asarray(source_priors, np.float64)
  q = np.asarray(source_priors, np.float64).copy()
  for _ in range(max_iter):
    r = probs * (q * ratio)
    r /= r.sum(axis=1, keepdims=True)
    new = r.mean(axis=0)
    done = np.max(np.abs(new - q)) < tol
    q = new
    if done:
      break
  return q


def _bcts_terms(theta, logits, onehot):
  """NLL, gradient and Hessian of mean_i -log softmax(a z_i + b)_{y_i} in theta =
  (a, b_1..b_{C-1}) with b_0 = 0 (softmax is blind to a shared shift of b)."""
  a, b = theta[0], np.concatenate([[0.0], theta[1:]])
  s = a * logits + b
  m = s.max(axis=1, keepdims=True)
  lse = (m + np.log(np.exp(s - m).sum(axis=1, keepdims=True)))[:, 0]
  nll = float(np.mean(lse - np.sum(onehot * s, axis=1)))
  p = np.exp(s - lse[:, None])
  # phi_ik = (z_ik, e_k without its first entry): ds_ik / dtheta.
  n, c = logits.shape
  phi = np.concatenate([logits[:, :, None], np.broadcast_to(np.eye(c)[:, 1:], (n, c, c - 1))],
                       axis=2)
  mean_phi = np.einsum("ik,ikd->id", p, phi)
  grad = np.mean(mean_phi - np.einsum("ik,ikd->id", onehot, phi), axis=0)
  hess = (np.einsum("ik,ikd,ike->de", p, phi, phi)
          - np.einsum("id,ie->de", mean_phi, mean_phi)) / len(logits)
  return nll, grad, hess


@dataclasses.dataclass(frozen=True)
class Calibration:
  """Bias-corrected temperature scaling: calibrated logits `a * z + b`."""
  a: float
  b: np.ndarray  # (C,), b[0] == 0.

  def probs(self, logits: np.ndarray) -> np.ndarray:
    return softmax(self.a * np.asarray(logits, np.float64) + self.b)


def fit_bcts(logits: np.ndarray, y: np.ndarray, *, tol: float = 1e-10,
             max_iter: int = 200) -> Calibration:
  """BCTS fitted on held-out labelled data by damped Newton steps from a = 1, b = 0.

  The objective is convex; on separable data it has no minimiser (a grows without
  bound) and the fit stops after `max_iter` steps with a large `a`.
  """
  logits = np.asarray(logits, np.float64)
  onehot = np.eye(logits.shape[1])[np.asarray(y)]
  theta = np.zeros(logits.shape[1])
  theta[0] = 1.0
  nll, grad, hess = _bcts_terms(theta, logits, onehot)
  for _ in range(max_iter):
    if np.max(np.abs(grad)) < tol:
      break
    step = -np.linalg.lstsq(hess, grad, rcond=None)[0]
    t = 1.0
    while t > 1e-12:  # Backtracking: Armijo's sufficient decrease.
      cand = theta + t * step
      new = _bcts_terms(cand, logits, onehot)
      if new[0] <= nll + 1e-4 * t * float(grad @ step):
        break
      t /= 2
    else:
      break  # No decrease along the Newton direction: at the minimum to rounding.
    theta, (nll, grad, hess) = cand, new
  return Calibration(a=float(theta[0]), b=np.concatenate([[0.0], theta[1:]]))


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Estimated target priors and what they were estimated from."""
  estimator: str
  source_priors: np.ndarray  # (C,) p_s(y) of the held-out source data.
  target_priors: np.ndarray  # (C,) the estimate of p_t(y).
  calibration: Calibration | None = None  # MLLS: the BCTS fit.


def estimate(estimator: str, *, source_logits: np.ndarray, source_y: np.ndarray,
             target_logits: np.ndarray) -> Estimate:
  """Target priors by `estimator` ('bbse' or 'mlls' with BCTS) from a model's logits
  on held-out labelled source data and on unlabelled target data.

  MLLS takes as source priors the mean calibrated posterior of the held-out data,
  the priors the calibrated model itself implies (Alexandari et al. 2020), so that
  target data distributed as the source gives back about the source priors.
  """
  source_logits = np.asarray(source_logits, np.float64)
  num_classes = source_logits.shape[1]
  counts = np.bincount(np.asarray(source_y), minlength=num_classes)[:num_classes]
  if estimator == "bbse":
    q = bbse_priors(source_logits.argmax(1), source_y, np.asarray(target_logits).argmax(1),
                    num_classes)
    return Estimate("bbse", counts / counts.sum(), q)
  if estimator == "mlls":
    cal = fit_bcts(source_logits, source_y)
    source_priors = cal.probs(source_logits).mean(axis=0)
    q = mlls_priors(cal.probs(target_logits), source_priors)
    return Estimate("mlls", source_priors, q, cal)
  raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")


def class_weights(train_class_counts: np.ndarray, target_priors: np.ndarray, *,
                  exponent: float = 1.0) -> np.ndarray:
  """(C,) importance weights w_c proportional to (q_c / p_c)**exponent, p the training
  class frequencies, normalised to mean 1 over the training set; 0 where q_c is 0
  or the class has no training example. With uniform q this is
  `weighting.importance_weights` of the class counts."""
  counts = np.asarray(train_class_counts, np.float64)
  q = np.asarray(target_priors, np.float64)
  live = (counts > 0) & (q > 0)
  log_raw = np.full_like(counts, -np.inf)
  log_raw[live] = exponent * (np.log(q[live]) - np.log(counts[live] / counts.sum()))
  log_raw -= log_raw[live].max()
  raw = np.exp(log_raw)
  return raw * (counts.sum() / np.sum(counts * raw))
