"""`TrainState`: everything a run carries from step to step, and its initial value.

Parameters are a dict {'backbone': ..., 'head': ...}: the backbone maps images to embeddings, the
head (class centres, and a bias for plain softmax) belongs to the objective. This module sits
below the train step and the checkpoints, so that restoring a checkpoint or loading a model never
imports the training loop.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from arcface_jax import models


class TrainState(flax.struct.PyTreeNode):  # a frozen dataclass and pytree, typed `replace`
  step: jax.Array  # int32 scalar: number of steps taken (skipped ones included)
  params: dict[str, Any]  # {'backbone': ..., 'head': ...}
  batch_stats: Any  # backbone batch-norm statistics
  head_state: dict[str, Any]  # non-trainable objective state (e.g. center-loss centres)
  opt_state: optax.OptState
  skipped_steps: jax.Array  # int32: non-finite steps skipped so far
  consecutive_skips: jax.Array  # int32: non-finite steps in a row, reset by a good step


def create_train_state(
  keys: Mapping[str, jax.Array],
  model: nn.Module,
  objective: Any,
  tx: optax.GradientTransformation,
  image_size: int,
) -> TrainState:
  """Initialises backbone, head and optimizer state from `keys['params']` and `keys['head']`
  (`seeding.keys(config)`): the same seed gives bit-identical weights wherever they are drawn."""
  variables = models.init_variables(model, keys['params'], image_size)
  head_params, head_state = objective.init(keys['head'])
  params = {'backbone': variables['params'], 'head': head_params}
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables['batch_stats'],
    head_state=head_state,
    opt_state=tx.init(params),
    skipped_steps=jnp.zeros((), jnp.int32),
    consecutive_skips=jnp.zeros((), jnp.int32),
  )
