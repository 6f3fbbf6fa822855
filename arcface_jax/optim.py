"""Learning-rate schedules and the SGD optimizer of the face-recognition recipes.

The paper divides the rate by 10 at fixed steps; the current reference trainer warms up linearly
and then decays polynomially to zero, stepped every iteration. Weight decay is coupled (added to the
gradient before momentum, as torch.optim.SGD does) and applies to every parameter, as in the
reference; gradient-norm clipping applies to the backbone only.
"""
from __future__ import annotations

from typing import Any

import ml_collections
import optax

from arcface_jax.parallel import lazy

SCHEDULES = ('step', 'warmup_poly')


def make_schedule(train_config: ml_collections.ConfigDict) -> optax.Schedule:
  """The learning rate as a function of the step."""
  base = float(train_config.learning_rate)
  if train_config.schedule == 'step':
    boundaries = {int(b): float(train_config.lr_decay_factor) for b in train_config.lr_boundaries}
    return optax.piecewise_constant_schedule(base, boundaries)
  if train_config.schedule == 'warmup_poly':
    warmup = int(train_config.warmup_steps)
    decay_steps = max(int(train_config.num_steps) - warmup, 1)
    decay = optax.polynomial_schedule(base, 0.0, float(train_config.poly_power), decay_steps)
    if warmup == 0:
      return decay
    ramp = optax.linear_schedule(0.0, base, warmup)
    return optax.join_schedules([ramp, decay], [warmup])
  raise ValueError(f'config.train.schedule={train_config.schedule!r}: expected one of {SCHEDULES}')


def make_optimizer(train_config: ml_collections.ConfigDict,
                   schedule: optax.Schedule, *,
                   lazy_head: bool = False) -> optax.GradientTransformation:
  """SGD with momentum and coupled weight decay over params {'backbone': ..., 'head': ...}.

  lazy_head (config.head.lazy_update with the model-parallel head): the head's centres get the
  same SGD, but only on rows with a non-zero gradient — Partial FC's sampled centres — so
  unsampled centres keep their value and momentum (parallel/lazy.py).
  """
  parts = []
  if train_config.clip_grad_norm > 0:
    only_backbone = lambda params: {k: k == 'backbone' for k in params}
    parts.append(optax.masked(optax.clip_by_global_norm(float(train_config.clip_grad_norm)),
                              only_backbone))
  dense = []
  if train_config.weight_decay > 0:
    dense.append(optax.add_decayed_weights(float(train_config.weight_decay)))
  dense.append(optax.sgd(schedule, momentum=float(train_config.momentum) or None))
  if not lazy_head:
    return optax.chain(*parts, *dense)
  head = lazy.lazy_sgd(schedule, momentum=float(train_config.momentum),
                       weight_decay=float(train_config.weight_decay))
  split = optax.multi_transform({'dense': optax.chain(*dense), 'lazy': head},
                                lambda params: {k: 'lazy' if k == 'head' else 'dense'
                                                for k in params})
  return optax.chain(*parts, split)

