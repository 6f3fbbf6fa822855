"""Partial FC: which of a device's class centres take part in one step's softmax.

Each device keeps every class of its block that is a target somewhere in the global batch (the
positives) plus uniformly drawn other classes (the negatives), `num_sample` centres in all. The
draw is a scored top-k so the shapes are static and the step jits: positives score 2, real
negatives a uniform number in [0, 1), padding rows −1, and the `num_sample` best are kept.

Positives must never be dropped (a row whose target is missing would be trained towards a wrong
class), so `num_sampled` rounds the sample size up to the global batch: a device can own at most
min(B_g, C_local) positives, and `num_sample = min(C_local, max(int(r · C_local), B_g))` always
holds them all. For the published set-ups (C_local in the tens of thousands, B_g ≈ 1,000) the bound
is inactive and num_sample is exactly int(r · C_local), as in the reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def num_sampled(sample_rate: float, num_local: int, global_batch: int) -> int:
  """Centres per device used in a step (static): all of them at r ≥ 1, else see the module doc."""
  if not 0.0 < sample_rate <= 1.0:
    raise ValueError(f'sample_rate={sample_rate} must be in (0, 1] (1 = every class centre)')
  if sample_rate >= 1.0:
    return num_local
  return min(num_local, max(int(sample_rate * num_local), global_batch))


def sample_classes(
  key: jax.Array, local_labels: jax.Array, valid: jax.Array, num_sample: int
) -> tuple[jax.Array, jax.Array]:
  """(indices (num_sample,) into the device's block, sorted; labels re-indexed into them).

  local_labels (B_g,): the target's row in this device's block, −1 where another device owns it.
  valid (C_local,): False for padding rows, which are only drawn once the real ones run out (and
  are then masked out of the softmax by the caller).
  """
  num_local = valid.shape[0]
  owned = local_labels >= 0
  # Index num_local is out of bounds and dropped; −1 would wrap round to the last row.
  positive = (
    jnp.zeros((num_local,), bool)
    .at[jnp.where(owned, local_labels, num_local)]
    .set(True, mode='drop')
  )
  score = jax.random.uniform(key, (num_local,), jnp.float32)
  score = jnp.where(positive, 2.0, jnp.where(valid, score, -1.0))
  _, index = jax.lax.top_k(score, num_sample)
  # Sorted indices keep the gather of centres (and the scatter of their gradient) in row order.
  index = jnp.sort(index)
  position = (
    jnp.full((num_local,), -1, jnp.int32).at[index].set(jnp.arange(num_sample, dtype=jnp.int32))
  )
  labels = jnp.where(owned, position[jnp.maximum(local_labels, 0)], -1)
  return index, labels
