"""The one jitted train step over a `train_state.TrainState`.

A step whose loss, gradients or batch statistics are not finite (an element NaN or ±Inf, or a
norm past float32's range) is skipped: the state keeps its old values, the step counter still
moves on (so the data order is unchanged) and the skip is counted.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from arcface_jax import optim
from arcface_jax.data.normalise import normalise_images
from arcface_jax.train_state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def _finite_norm(tree: Any) -> tuple[jax.Array, jax.Array]:
  """(‖tree‖₂, whether it is finite): not finite when an element is NaN or ±Inf, or when the
  squared norm overflows float32 (‖tree‖ > 1.8e19: no update or running variance of that size
  is sound either).

  The check goes through the norm, not element by element: a second reduction over every
  gradient and batch statistic (`all(isfinite(x))`) made XLA:CPU fuse copies of the backward
  pass into it, and a 16-px MobileFaceNet train step compiled for 100 s instead of 17 (the
  gradient norm's reductions are the ones the metric and clipping compute anyway).
  """
  norm = optax.tree.norm(tree)
  return norm, jnp.isfinite(norm)


def make_train_step(
  model: nn.Module,
  objective: Any,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  dropout_key: jax.Array,
  *,
  image_mean: Any = 127.5,
  image_std: Any = 127.5,
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
        {'params': params['backbone'], 'batch_stats': state.batch_stats},
        images,
        train=True,
        rngs={'dropout': dropout_rng},
        mutable=['batch_stats'],
      )
      # Margins and softmax run in fp32 whatever the trunk's dtype.
      embeddings = embeddings.astype(jnp.float32)
      loss, new_head_state, metrics = objective(
        params['head'], state.head_state, embeddings, labels, state.step, rng=head_rng
      )
      return loss, (new_model_state.get('batch_stats', {}), new_head_state, metrics)

    (loss, (batch_stats, head_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    # The forward pass's batch statistics too: a loss on normalised embeddings can stay finite
    # while the running variances overflow. (Not the updated parameters: whether the update
    # overflows depends on the learning rate, which the caller's health checks blame instead.)
    grad_norm_backbone, backbone_finite = _finite_norm(grads['backbone'])
    finite = (
      jnp.isfinite(loss)
      & backbone_finite
      & _finite_norm(grads['head'])[1]
      & _finite_norm(batch_stats)[1]
    )
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
      grad_norm_backbone=grad_norm_backbone,
      skipped=(~finite).astype(jnp.float32),
    )
    return new_state, metrics

  return train_step


def _applied_rate(
  opt_state: optax.OptState, schedule: optax.Schedule, step: jax.Array
) -> jax.Array:
  # optim.make_optimizer keeps the base rate in its state (not a constant of the program).
  rate = optim.applied_learning_rate(opt_state)
  return jnp.asarray(schedule(step) if rate is None else rate, jnp.float32)
