"""The train state: a pytree of arrays only, and the model definition beside it.

`TrainState` is exactly what is checkpointed, sharded by jit and (for sweeps)
stacked by vmap. The static half of the NNX model, its graph definitions, lives in
`ModelDef` and is closed over by the jitted steps.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from polyjax import models, resnet


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # () int32: optimizer steps taken.
  params: nnx.State  # nnx.Param variables.
  model_state: nnx.State  # Every other variable (BatchNorm statistics); may be empty.
  opt_state: optax.OptState
  rng: jax.Array  # () typed key; step randomness is fold_in(rng, step).
  adv_probs: jax.Array  # (G,) group DRO's adversarial group probabilities (uniform unless mode 'dro').
  # Group DRO's automatic adjustment (`group_robust.initial_auto_state`): None, no
  # arrays, unless weighting.automatic_adjustment, so other runs' checkpoints keep
  # the arrays they always had.
  dro_auto: dict[str, jax.Array] | None = None


@dataclasses.dataclass(frozen=True)
class ModelDef:
  """Static graph definitions of the model in training and evaluation mode."""
  train: Any
  eval: Any

  def apply(self, state: TrainState, x: jax.Array, *, train: bool):
    """Logits for `x`, and the model state after the call (updated BatchNorm stats)."""
    # copy=True: fresh Variables at the current trace level, so that BatchNorm may
    # update its statistics inside jax.grad (the state came in at the jit level).
    model = nnx.merge(self.train if train else self.eval, state.params, state.model_state,
                      copy=True)
    logits = model(x)
    _, _, model_state = nnx.split(model, nnx.Param, ...)
    return logits, model_state


def make_optimizer(*, lr: float, momentum: float, weight_decay: float,
                   lr_factor: optax.Schedule | None = None) -> optax.GradientTransformation:
  """SGD with momentum and L2 weight decay; hyperparameters live in the optimizer state
  (`inject_hyperparams`) so that they can differ across stacked models.

  `lr_factor` (polyjax.schedules) multiplies the learning rate at each step: the
  update is `-lr * lr_factor(step) * momentum_buffer`, as with `optax.sgd` given
  the schedule `lr * lr_factor`. It sits inside the injected optimizer, so the
  state keeps the base lr as a plain number in `opt_state.hyperparams`.
  """

  def sgd(learning_rate, momentum, weight_decay):
    parts = [optax.add_decayed_weights(weight_decay),
             optax.sgd(learning_rate, momentum=momentum)]
    if lr_factor is not None:
      parts.append(optax.scale_by_schedule(lr_factor))
    return optax.chain(*parts)

  return optax.inject_hyperparams(sgd)(learning_rate=lr, momentum=momentum,
                                       weight_decay=weight_decay)


def head_only(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` on the classifier (`head`, the last layer of every model), zero updates elsewhere."""

  def labels(params):
    def label(path, _):
      return "head" if getattr(path[0], "key", None) == "head" else "frozen"
    return jax.tree_util.tree_map_with_path(label, params)

  return optax.multi_transform({"head": tx, "frozen": optax.set_to_zero()}, labels)


def create(*, model_name: str, model_kwargs: dict, in_shape: tuple[int, ...],
           num_classes: int, num_groups: int, tx: optax.GradientTransformation,
           seed: int, freeze_features: bool = False) -> tuple[ModelDef, TrainState]:
  """Initialises model, optimizer and randomness from the run seed.

  With `freeze_features` the model also trains in evaluation mode, so BatchNorm
  uses and keeps its running statistics (pair it with `head_only(tx)`).
  `model_kwargs['pretrained']` (resnet50) is loaded over the initialised weights.
  """
  model_kwargs = dict(model_kwargs)
  pretrained = model_kwargs.pop("pretrained", None)
  init = _initializer(model_name, tuple(sorted(model_kwargs.items())), tuple(in_shape),
                      num_classes)
  # The key is made outside the program, as for any Python int (even >= 2**31).
  params, model_state, step_key = init.fn(jax.random.key_data(jax.random.key(seed)))
  train_def, eval_def = init.graphdefs
  if pretrained is not None:
    # Outside the compiled init: inside it, the weights would become constants.
    model = nnx.merge(train_def, params, model_state)
    resnet.load_torchvision_weights(model, pretrained)
    _, params, model_state = nnx.split(model, nnx.Param, ...)
  state = TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      model_state=model_state,
      opt_state=tx.init(params),
      rng=step_key,
      adv_probs=jnp.full((num_groups,), 1.0 / num_groups, jnp.float32),
  )
  return ModelDef(train=eval_def if freeze_features else train_def, eval=eval_def), state


@dataclasses.dataclass
class _Initializer:
  fn: Any  # jitted key data of the run seed -> (params, model_state, step key).
  graphdefs: tuple = ()  # (train, eval) graph definitions, set when `fn` is traced.


@functools.lru_cache(maxsize=None)
def _initializer(model_name: str, model_kwargs: tuple, in_shape: tuple[int, ...],
                 num_classes: int) -> _Initializer:
  """The model's initialisation as one compiled program, per model shape.

  Run op by op, initialisation compiles every distinct operation of it (dozens of
  small programs); one program reaches its first result sooner, and sooner still on
  CPU without XLA's backend optimisations, which a program run once does not repay:
  they make it run slower but compile faster by more (docs/BENCHMARKS.md,
  "Start-up"). The seed's key is an argument, so members of a sweep share the
  program. The values equal those of the same initialisation run op by op within a
  few float32 ulps (tests/test_train_state.py).
  """
  out = _Initializer(fn=None)

  def init(key_data):
    init_key, step_key = jax.random.split(jax.random.wrap_key_data(key_data))
    model = models.get_model(model_name, in_shape=in_shape, num_classes=num_classes,
                             rngs=nnx.Rngs(params=init_key), **dict(model_kwargs))
    train_def, params, model_state = nnx.split(model, nnx.Param, ...)
    eval_model = nnx.view(model, use_running_average=True, deterministic=True,
                          raise_if_not_found=False)
    out.graphdefs = (train_def, nnx.graphdef(eval_model))
    return params, model_state, step_key

  options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  out.fn = jax.jit(init, compiler_options=options)
  return out
