"""Objectives: margin softmax cross-entropy over L2-normalised features and class centres.

`build_objective(loss_config, num_classes=, embedding_dim=)` returns the head the trainer calls:
`init(rng) -> (head_params, head_state)` and
`__call__(head_params, head_state, embeddings, labels, step) -> (loss, head_state, metrics)`.
Everything after the backbone runs in float32.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from arcface_jax import margins


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), 1e-12))


def margin_softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy of (B, C) logits against integer labels, in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                         labels).mean()


def angle_metrics(cos: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
  """Mean target angle (degrees), target cos and hardest-negative cos: the margin at work."""
  one_hot = jax.nn.one_hot(labels, cos.shape[-1], dtype=bool)
  cos_target = jnp.sum(jnp.where(one_hot, cos, 0.0), axis=-1)
  hardest = jnp.max(jnp.where(one_hot, -2.0, cos), axis=-1)
  theta = jnp.degrees(jnp.arccos(jnp.clip(cos_target, -1.0, 1.0)))
  return {'theta_target_deg': theta.mean(), 'cos_target': cos_target.mean(),
          'cos_hardest_negative': hardest.mean()}


@dataclasses.dataclass(frozen=True)
class MarginSoftmaxObjective:
  num_classes: int
  embedding_dim: int
  margin: Any  # a margins.CombinedMargin, or None for plain softmax (FC with bias)

  def init(self, rng: jax.Array) -> tuple[dict, dict]:
    weight = 0.01 * jax.random.normal(rng, (self.num_classes, self.embedding_dim), jnp.float32)
    params = {'weight': weight}
    if self.margin is None:
      params['bias'] = jnp.zeros((self.num_classes,), jnp.float32)
    return params, {}

  def __call__(self, head_params: dict, head_state: dict, embeddings: jax.Array,
               labels: jax.Array, step: jax.Array) -> tuple[jax.Array, dict, dict]:
    del step
    embeddings = embeddings.astype(jnp.float32)
    weight = head_params['weight']
    cos = l2_normalize(embeddings) @ l2_normalize(weight).T
    if self.margin is None:
      logits = embeddings @ weight.T + head_params['bias']
    else:
      logits = self.margin(cos, labels)
    loss = margin_softmax_cross_entropy(logits, labels)
    metrics = angle_metrics(jax.lax.stop_gradient(cos), labels)
    return loss, head_state, metrics


def build_objective(loss_config, *, num_classes: int,
                    embedding_dim: int) -> MarginSoftmaxObjective:
  margin = None if loss_config.name == 'softmax' else margins.from_config(loss_config)
  return MarginSoftmaxObjective(num_classes=num_classes, embedding_dim=embedding_dim,
                                margin=margin)
