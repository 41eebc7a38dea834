"""Learning-rate schedules (docs/run_lifecycle.md), built from optax schedules.

A schedule here is a *multiplier* of the base learning rate, a function of the
optimizer step: the optimizer applies `lr * factor(step)`. Keeping the base lr a
plain number (an injected hyperparameter in the optimizer state) and the shape
of the schedule a pure function of the step means models stacked for a sweep can
differ in lr while sharing the schedule.

Shapes (`name`): 'constant' (1), 'cosine' (1 down to `final_frac` at the last
step), 'step' (times `step_factor` at each epoch in `step_epochs`). Any of them
can start with a linear warm-up over `warmup_epochs` from 0 to 1.
"""

from __future__ import annotations

from typing import Sequence

import optax

SCHEDULES = ("constant", "cosine", "step")


def lr_factor(name: str, *, steps_per_epoch: int, num_epochs: int,
              warmup_epochs: float = 0.0, step_epochs: Sequence[int] = (),
              step_factor: float = 0.1, final_frac: float = 0.0) -> optax.Schedule:
  """The multiplier of the base lr at each optimizer step.

  Args:
    name: 'constant', 'cosine' or 'step'.
    steps_per_epoch: optimizer steps in one epoch.
    num_epochs: length of the run (the cosine decays over it).
    warmup_epochs: linear warm-up from 0 (step 0) to 1 (this many epochs in).
    step_epochs: 'step': epochs after which the multiplier is scaled by `step_factor`.
    step_factor: 'step': the scale applied at each of `step_epochs`.
    final_frac: 'cosine': the multiplier at the last step.

  Returns:
    An optax schedule `step -> multiplier`.
  """
  if name not in SCHEDULES:
    raise ValueError(f"unknown lr schedule {name!r}; valid: {', '.join(SCHEDULES)}")
  total = steps_per_epoch * num_epochs
  warmup = int(round(warmup_epochs * steps_per_epoch))
  if name == "constant":
    main = optax.constant_schedule(1.0)
  elif name == "cosine":
    main = optax.cosine_decay_schedule(1.0, decay_steps=max(1, total - warmup),
                                       alpha=final_frac)
  else:
    # Boundaries count steps after the warm-up (join_schedules shifts the step).
    main = optax.piecewise_constant_schedule(
        1.0, {int(e) * steps_per_epoch - warmup: step_factor for e in sorted(step_epochs)})
  if warmup == 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, 1.0, transition_steps=warmup), main], [warmup])
