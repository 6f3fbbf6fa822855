"""The train state and the one jitted train step.

Parameters are a dict {'backbone': ..., 'head': ...}: the backbone maps images to embeddings, the
head (class centres, and a bias for plain softmax) belongs to the objective. A step whose loss,
gradients or batch statistics are not finite is skipped: the state keeps its old values, the step
counter still moves on (so the data order is unchanged) and the skip is counted.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from arcface_jax import optim
from arcface_jax.data.normalise import normalise_images

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of steps taken (skipped ones included)
  params: dict[str, Any]  # {'backbone': ..., 'head': ...}
  batch_stats: Any  # backbone batch-norm statistics
  head_state: dict[str, Any]  # non-trainable objective state (e.g. center-loss centres)
  opt_state: optax.OptState
  skipped_steps: jax.Array  # int32: non-finite steps skipped so far
  consecutive_skips: jax.Array  # int32: non-finite steps in a row, reset by a good step


def create_train_state(rng: jax.Array, model: nn.Module, objective: Any,
                       tx: optax.GradientTransformation, image_size: int) -> TrainState:
  """Initialises backbone, head and optimizer state (deterministic in `rng`)."""
  model_rng, dropout_rng, head_rng = jax.random.split(rng, 3)
  dummy = jnp.zeros((2, image_size, image_size, 3), jnp.float32)
  variables = model.init({'params': model_rng, 'dropout': dropout_rng}, dummy, train=False)
  head_params, head_state = objective.init(head_rng)
  params = {'backbone': variables['params'], 'head': head_params}
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get('batch_stats', {}),
      head_state=head_state,
      opt_state=tx.init(params),
      skipped_steps=jnp.zeros((), jnp.int32),
      consecutive_skips=jnp.zeros((), jnp.int32),
  )


def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.stack(leaves).all() if leaves else jnp.array(True)


def make_train_step(model: nn.Module, objective: Any, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, dropout_key: jax.Array, *,
                    image_mean: Any = 127.5, image_std: Any = 127.5
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The pure train step; the caller jits it with its shardings.

  The batch's uint8 images (the input pipeline's) are normalised here, (x − image_mean) /
  image_std (config.data.mean/std), so that they cross to the devices as uint8; floating-point
  images are taken as normalised already.
  """

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    labels = batch['label']
    images = normalise_images(batch['image'], image_mean, image_std)
    dropout_rng = jax.random.fold_in(dropout_key, state.step)
    # The step's key for the objective (ElasticFace's margin draws), apart from dropout's.
    head_rng = jax.random.fold_in(dropout_rng, 0x6D617267)

    def loss_fn(params):
      embeddings, new_model_state = model.apply(
          {'params': params['backbone'], 'batch_stats': state.batch_stats}, images,
          train=True, rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
      # Margins and softmax run in fp32 whatever the trunk's dtype.
      embeddings = embeddings.astype(jnp.float32)
      loss, new_head_state, metrics = objective(params['head'], state.head_state, embeddings,
                                                labels, state.step, rng=head_rng)
      return loss, (new_model_state.get('batch_stats', {}), new_head_state, metrics)

    (loss, (batch_stats, head_state, metrics)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    # The forward pass's batch statistics too: a loss on normalised embeddings can stay finite
    # while the running variances overflow. (Not the updated parameters: whether the update
    # overflows depends on the learning rate, which the caller's health checks blame instead.)
    finite = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(batch_stats)
    keep_if_bad = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(
        step=state.step + 1,
        params=keep_if_bad(params, state.params),
        batch_stats=keep_if_bad(batch_stats, state.batch_stats),
        head_state=keep_if_bad(head_state, state.head_state),
        opt_state=keep_if_bad(opt_state, state.opt_state),
        skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32),
        consecutive_skips=jnp.where(finite, 0, state.consecutive_skips + 1),
    )
    metrics = dict(metrics)
    metrics.update(
        loss=loss,
        learning_rate=_applied_rate(state.opt_state, schedule, state.step),
        grad_norm_backbone=optax.tree.norm(grads['backbone']),
        skipped=(~finite).astype(jnp.float32),
    )
    return new_state, metrics

  return train_step


def _applied_rate(opt_state: optax.OptState, schedule: optax.Schedule,
                  step: jax.Array) -> jax.Array:
  # optim.make_optimizer keeps the base rate in its state (not a constant of the program).
  rate = optim.applied_learning_rate(opt_state)
  return jnp.asarray(schedule(step) if rate is None else rate, jnp.float32)


def make_embed_fn(model: nn.Module) -> Callable[[dict[str, Any], jax.Array], jax.Array]:
  """Inference-mode embeddings (fp32) from {'params', 'batch_stats'} variables."""

  def embed(variables: dict[str, Any], images: jax.Array) -> jax.Array:
    return model.apply(variables, images, train=False).astype(jnp.float32)

  return embed
