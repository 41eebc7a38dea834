"""Deep feature reweighting (DFR, Kirichenko et al. 2023): the last layer of a stage-1
model retrained on group-balanced held-out data (`method.name` 'dfr').

Stage 2 keeps the stage-1 model's features (every layer but `head`, and its
BatchNorm statistics) and trains only a fresh head (zeros) with L2 strength lambda on
the validation split subsampled to equal group sizes. lambda is tuned as DFR does:
the validation split is halved (data seed); for each lambda of `method.dfr_l2_grid`
the head is fitted exactly on the balanced first half and scored by worst-group
accuracy on the second; the best lambda (the first of the grid among equals)
becomes the run's weight decay. The exact fit minimises mean cross-entropy +
(lambda / 2)(|W|^2 + |b|^2) over the stage-1 features by Newton's method (convex,
strongly so for lambda > 0), the objective SGD with that weight decay minimises.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from polyjax import placement, steps, xla_runtime
from polyjax.data.splits import Dataset


def fit_head(features: np.ndarray, y: np.ndarray, num_classes: int, l2: float, *,
             tol: float = 1e-10, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
  """(W (D, C), b (C,)) minimising mean_i CE(x_i W + b, y_i) + (l2/2)(|W|^2 + |b|^2)."""
  x = np.concatenate([np.asarray(features, np.float64), np.ones((len(y), 1))], axis=1)
  n, d = x.shape
  onehot = np.eye(num_classes)[np.asarray(y)]

  def terms(theta):
    s = x @ theta
    s -= s.max(axis=1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.mean(np.sum(onehot * np.log(np.maximum(p, 1e-300)), axis=1))
    return loss + 0.5 * l2 * np.sum(theta ** 2), p

  theta = np.zeros((d, num_classes))
  value, p = terms(theta)
  for _ in range(max_iter):
    grad = x.T @ (p - onehot) / n + l2 * theta
    if np.max(np.abs(grad)) < tol:
      break
    hess = np.zeros((d, num_classes, d, num_classes))
    for c in range(num_classes):
      for k in range(num_classes):
        a = p[:, c] * ((c == k) - p[:, k])
        hess[:, c, :, k] = (x.T * a) @ x / n
    hess = hess.reshape(d * num_classes, -1) + l2 * np.eye(d * num_classes)
    step = -np.linalg.solve(hess, grad.reshape(-1)).reshape(d, num_classes)
    t = 1.0
    while t > 1e-12:  # Backtracking to Armijo's sufficient decrease.
      new_value, new_p = terms(theta + t * step)
      if new_value <= value + 1e-4 * t * float(np.sum(grad * step)):
        break
      t /= 2
    else:
      break  # No decrease: at the minimum to rounding.
    theta, value, p = theta + t * step, new_value, new_p
  return theta[:-1], theta[-1]


def worst_group_acc(pred: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
  """The lowest accuracy over the groups present."""
  return float(min(np.mean(pred[groups == g] == y[groups == g]) for g in np.unique(groups)))


def balanced_indices(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Sorted indices keeping, of every group present, as many random examples as the
  smallest group has."""
  present = np.unique(groups)
  k = min(int(np.sum(groups == g)) for g in present)
  return np.sort(np.concatenate([rng.choice(np.flatnonzero(groups == g), k, replace=False)
                                 for g in present]))


def halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """A random split of range(n) into two sorted halves (the first one smaller when odd)."""
  perm = np.random.default_rng([seed, 0xDF]).permutation(n)
  return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


def tune_l2(features: np.ndarray, y: np.ndarray, groups: np.ndarray, num_classes: int,
            grid, seed: int) -> tuple[float, dict[str, Any]]:
  """DFR's tuning on the validation split: (the chosen lambda, the record)."""
  first, second = halves(len(y), seed)
  fit = first[balanced_indices(groups[first], np.random.default_rng([seed, 0xDF, 1]))]
  scores = []
  for l2 in grid:
    w, b = fit_head(features[fit], y[fit], num_classes, l2)
    pred = (features[second] @ w + b).argmax(axis=1)
    scores.append(worst_group_acc(pred, y[second], groups[second]))
  best = int(np.argmax(scores))  # The first of the grid among equal scores.
  return float(grid[best]), {"l2_grid": list(map(float, grid)),
                             "val_half_worst_group_acc": scores, "l2": float(grid[best]),
                             "tune_fit_size": len(fit), "tune_eval_size": len(second)}


class _Identity(nnx.Module):
  def __call__(self, x):
    return x


def features(model_def, state, split, *, shardings: placement.Shardings, batch_size: int,
             preprocess=None, matmul_precision: str = "default") -> np.ndarray:
  """(N, D) float32 inputs of the model's `head` (evaluation mode) for every example."""
  batch = steps.eval_batch_size(batch_size, [split], shardings.mesh.size)
  packed = steps.pack_for_eval([split], batch, keys=("x",))

  def apply(state, x):
    x = x if preprocess is None else preprocess(x)
    model = nnx.merge(model_def.eval, state.params, state.model_state, copy=True)
    model.head = _Identity()
    return model(x)

  fn = xla_runtime.WithMatmulPrecision(
      jax.jit(apply, in_shardings=(shardings.replicated, shardings.batch),
              out_shardings=shardings.replicated), matmul_precision)
  return np.concatenate([np.asarray(fn(state, x)) for x in packed["x"]])[: len(split)]


def balanced_val_dataset(ds: Dataset, seed: int) -> Dataset:
  """The dataset whose training split is the validation split subsampled to equal
  group sizes (unit weights); validation and test unchanged."""
  keep = balanced_indices(ds.val.group, np.random.default_rng([seed, 0xDF, 2]))
  train = ds.val.take(keep)
  ones = {k: dataclasses.replace(s, weight=np.ones(len(s), np.float32))
          for k, s in {"train": train, "val": ds.val, "test": ds.test}.items()}
  return dataclasses.replace(ds, **ones)


def stage2_state(state, stage1_state, l2: float):
  """The stage-2 initial state: the stage-1 parameters and BatchNorm statistics with
  a zero head, and weight decay `l2` in the optimizer's hyperparameters."""
  params = jax.tree_util.tree_map_with_path(
      lambda path, new, old: jnp.zeros_like(new) if getattr(path[0], "key", None) == "head"
      else jnp.asarray(old, new.dtype), state.params, stage1_state.params)
  model_state = jax.tree.map(lambda new, old: jnp.asarray(old, new.dtype), state.model_state,
                             stage1_state.model_state)

  def decay(path, leaf):
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    return jnp.full_like(leaf, l2) if names[-1:] == ["weight_decay"] else leaf

  opt_state = jax.tree_util.tree_map_with_path(decay, state.opt_state)
  return state.replace(params=params, model_state=model_state, opt_state=opt_state)
