"""Small CNNs of the seed material, so its toy experiments can be re-run here.

`SmallCNN` is the tutorial's network: a few conv → BN → ReLU → max-pool layers and an FC to a
2- or 3-d embedding, which a toy draws on the circle / sphere after L2 normalisation.
`MiniNetwork` is the seed project's: three conv → ReLU → max-pool layers and an FC, Kaiming-
(He-) normal initialised as PyTorch's `kaiming_normal_` (fan-in, gain √2, untruncated).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from arcface_jax.models.layers import batch_norm

# PyTorch's kaiming_normal_(mode='fan_in', nonlinearity='relu'): N(0, 2 / fan_in), no truncation.
kaiming_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


class SmallCNN(nn.Module):
  """Images (B, H, W, 3) → un-normalised embeddings (B, embedding_dim) in float32."""

  widths: Sequence[int] = (32, 64, 128)
  embedding_dim: int = 2
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = images.astype(self.dtype)
    for width in self.widths:
      x = nn.Conv(width, (3, 3), padding=1, use_bias=False, dtype=self.dtype)(x)
      x = nn.relu(batch_norm(train, self.dtype)(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1).astype(jnp.float32)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.embedding_dim, dtype=jnp.float32)(x)


class MiniNetwork(nn.Module):
  """3 conv + FC without batch norm (so it has no `batch_stats`), Kaiming-normal weights."""

  widths: Sequence[int] = (32, 64, 128)
  embedding_dim: int = 512
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = images.astype(self.dtype)
    for width in self.widths:
      x = nn.Conv(width, (3, 3), padding=1, dtype=self.dtype, kernel_init=kaiming_normal)(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1).astype(jnp.float32)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.embedding_dim, dtype=jnp.float32, kernel_init=kaiming_normal)(x)


small_cnn = functools.partial(SmallCNN)
mini_network = functools.partial(MiniNetwork)
