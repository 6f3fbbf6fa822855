"""The seed course's ResNet-50: a standard bottleneck ResNet (He et al. 2016) with a 512-d head.

stem conv7×7(64, stride 2) → BN → ReLU → max-pool 3×3 stride 2; bottleneck stages [3, 4, 6, 3]
(1×1 → 3×3(stride) → 1×1 ×4, projection shortcut on the first block of each stage, ReLU after
the sum); global average pooling → FC(2048 → embedding). The embedding is L2-normalised where
it is used (by the margin loss and the evaluation), not here.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from arcface_jax.models.layers import batch_norm, conv


class Bottleneck(nn.Module):
  features: int  # inner width; the block outputs 4× this
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    c = functools.partial(conv, dtype=self.dtype)
    y = nn.relu(batch_norm(train, self.dtype)(c(self.features, 1)(x)))
    # Stride on the 3×3 conv (the "ResNet v1.5" placement used by torchvision).
    y = nn.relu(
      batch_norm(train, self.dtype)(c(self.features, 3, strides=self.strides, padding=1)(y))
    )
    y = c(self.features * 4, 1)(y)
    # Zero-initialised last BN scale would change the seed's behaviour; keep the plain init.
    y = batch_norm(train, self.dtype)(y)
    if self.strides != 1 or x.shape[-1] != self.features * 4:
      x = batch_norm(train, self.dtype)(c(self.features * 4, 1, strides=self.strides)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """Images (B, H, W, 3), normalised → un-normalised embeddings (B, embedding_dim) in float32."""

  stage_sizes: Sequence[int]
  embedding_dim: int = 512
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = images.astype(self.dtype)
    x = conv(64, 7, strides=2, padding=3, dtype=self.dtype)(x)
    x = nn.relu(batch_norm(train, self.dtype)(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, blocks in enumerate(self.stage_sizes):
      for i in range(blocks):
        x = Bottleneck(64 * 2**stage, strides=2 if i == 0 and stage > 0 else 1, dtype=self.dtype)(
          x, train
        )
    # Pool in float32: a mean over 49+ values is where bf16 rounding would accumulate.
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.embedding_dim, dtype=jnp.float32)(x)


resnet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3))
