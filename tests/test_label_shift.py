"""Label-shift estimators against known priors and independent float64 references."""

import numpy as np
import pytest
from scipy import optimize, special

from polyjax import label_shift, weighting

MEANS = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])  # Three classes, unit-variance Gaussians.
SOURCE = np.array([0.6, 0.3, 0.1])
TARGET = np.array([0.2, 0.3, 0.5])


def draw(priors, n, rng):
  """Labels with the exact class proportions `priors` (to rounding) and, as the
  model's logits, a miscalibrated version (x 2.5, shifted) of the source-optimal
  log-posterior: a fixed model that is not the Bayes classifier's calibration."""
  counts = np.floor(np.asarray(priors) * n).astype(int)
  counts[0] += n - counts.sum()
  y = np.repeat(np.arange(3), counts)
  x = MEANS[y] + rng.standard_normal((n, 2))
  log_post = -0.5 * ((x[:, None, :] - MEANS[None]) ** 2).sum(-1) + np.log(SOURCE)
  return 2.5 * log_post + np.array([0.0, 0.7, -0.4]), y


def test_bbse_is_exact_on_a_known_confusion_matrix():
  rng = np.random.default_rng(0)
  confusion = rng.random((4, 4)) + 2 * np.eye(4)
  confusion /= confusion.sum()
  w_true = np.array([0.5, 1.5, 2.0, 0.25])
  w = label_shift.bbse_weights(confusion, confusion @ w_true)
  # A solve of a 4x4 system with condition number k loses at most ~k ulps.
  assert np.allclose(w, w_true, rtol=np.linalg.cond(confusion) * 1e-14, atol=0)
  # A marginal no non-negative w explains: the negative weight is clipped to 0.
  assert label_shift.bbse_weights(np.eye(2) / 2, np.array([0.6, -0.1]))[1] == 0


def test_bbse_priors_from_predictions_are_exact_when_the_confusion_is():
  # Source: 100 of class 0 (90 right), 100 of class 1 (80 right). A target whose
  # per-class prediction rates are the source's, with priors (0.25, 0.75).
  src_y = np.repeat([0, 1], 100)
  src_pred = np.concatenate([np.repeat([0, 1], [90, 10]), np.repeat([1, 0], [80, 20])])
  tgt_pred = np.concatenate([np.repeat([0, 1], [90, 10]), np.tile(np.repeat([1, 0], [80, 20]), 3)])
  q = label_shift.bbse_priors(src_pred, src_y, tgt_pred, 2)
  np.testing.assert_allclose(q, [0.25, 0.75], rtol=1e-12)


@pytest.mark.parametrize("estimator", label_shift.ESTIMATORS)
def test_estimation_error_shrinks_with_sample_size(estimator):
  errors = {}
  for n in (1000, 100000):
    rng = np.random.default_rng(n)
    err = []
    for _ in range(5):
      src_logits, src_y = draw(SOURCE, n, rng)
      tgt_logits, _ = draw(TARGET, n, rng)
      est = label_shift.estimate(estimator, source_logits=src_logits, source_y=src_y,
                                 target_logits=tgt_logits)
      err.append(np.abs(est.target_priors - TARGET).sum())
    errors[n] = np.mean(err)
  # Both estimators are consistent with error ~ n^(-1/2): 100x the data, ~10x less
  # error (measured: BBSE 9x, MLLS 18x).
  assert errors[100000] < errors[1000] / 5, errors
  assert errors[100000] < 0.02, errors


def test_mlls_converges_to_the_maximum_likelihood_estimate():
  rng = np.random.default_rng(1)
  probs = rng.dirichlet([1.0, 1.0, 1.0], size=400)
  source = np.array([0.5, 0.3, 0.2])
  q = label_shift.mlls_priors(probs, source)

  def nll(v):  # The same likelihood over the simplex through a softmax, by scipy.
    pri = special.softmax(np.concatenate([[0.0], v]))
    return -np.sum(np.log(probs @ (pri / source)))

  ref = optimize.minimize(nll, np.zeros(2), method="BFGS", options={"gtol": 1e-10})
  q_ref = special.softmax(np.concatenate([[0.0], ref.x]))
  np.testing.assert_allclose(q, q_ref, atol=1e-6)
  assert (label_shift.mlls_log_likelihood(q, probs, source)
          >= label_shift.mlls_log_likelihood(q_ref, probs, source) - 1e-9)


def test_bcts_matches_a_reference_optimiser():
  rng = np.random.default_rng(2)
  logits, y = draw(SOURCE, 2000, rng)
  cal = label_shift.fit_bcts(logits, y)

  def nll(theta):  # Written independently: scipy's logsumexp, b_0 fixed at 0.
    s = theta[0] * logits + np.concatenate([[0.0], theta[1:]])
    return np.mean(special.logsumexp(s, axis=1) - s[np.arange(len(y)), y])

  ref = optimize.minimize(nll, np.array([1.0, 0.0, 0.0]), method="BFGS",
                          options={"gtol": 1e-11})
  assert nll(np.concatenate([[cal.a], cal.b[1:]])) <= ref.fun + 1e-12
  np.testing.assert_allclose(np.concatenate([[cal.a], cal.b[1:]]), ref.x, atol=1e-5)
  # The logits were 2.5x the log-posterior: the fit undoes most of that scale.
  assert 0.3 < cal.a < 0.5


def test_class_weights_reduce_to_the_importance_weights_for_uniform_targets():
  counts = np.array([600, 60, 7])
  for exponent in (0.0, 1.0, 2.5):
    np.testing.assert_allclose(
        label_shift.class_weights(counts, np.full(3, 1 / 3), exponent=exponent),
        weighting.importance_weights(counts, exponent=exponent), rtol=1e-12)
  w = label_shift.class_weights(counts, np.array([0.5, 0.5, 0.0]))
  assert w[2] == 0 and np.isclose(np.sum(counts * w), counts.sum())
