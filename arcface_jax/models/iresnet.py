"""IResNet ("improved" ResNet for faces, the ArcFace paper's LResNet-IR) and its sizes.

Layout (REFERENCE §6): stem conv3×3(64, stride 1) → BN → PReLU; four stages of 64/128/256/512
channels, each opening with a stride-2 block; block = BN → conv3×3 → BN → PReLU → conv3×3(stride)
→ BN, plus a shortcut (identity, or conv1×1(stride) → BN), with no activation after the sum; head
BN → dropout → FC(flatten → embedding) → BN with its scale fixed to 1. The variants are
`functools.partial` aliases of one definition.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


class PReLU(nn.Module):
  """Per-channel leaky slope learnt from 0.25, as in the reference."""

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    slope = self.param('slope', nn.initializers.constant(0.25), (x.shape[-1],), jnp.float32)
    return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


class IBasicBlock(nn.Module):
  features: int
  strides: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM,
                             epsilon=BN_EPSILON, dtype=self.dtype)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    y = norm()(x)
    y = conv(self.features, (3, 3), padding=1)(y)
    y = norm()(y)
    y = PReLU()(y)
    y = conv(self.features, (3, 3), strides=self.strides, padding=1)(y)
    y = norm()(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = conv(self.features, (1, 1), strides=self.strides, padding=0)(x)
      x = norm()(x)
    return x + y


class IResNet(nn.Module):
  """Images (B, H, W, 3), normalised → un-normalised embeddings (B, embedding_dim) in float32."""
  stage_sizes: Sequence[int]
  widths: Sequence[int] = (64, 128, 256, 512)
  stem_width: int = 64
  embedding_dim: int = 512
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = images.astype(self.dtype)
    x = nn.Conv(self.stem_width, (3, 3), padding=1, use_bias=False, dtype=self.dtype)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                     dtype=self.dtype)(x)
    x = PReLU()(x)
    for width, blocks in zip(self.widths, self.stage_sizes):
      for i in range(blocks):
        x = IBasicBlock(width, strides=2 if i == 0 else 1, dtype=self.dtype)(x, train)
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                     dtype=self.dtype)(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = x.reshape(x.shape[0], -1)
    # The embedding head runs in float32 whatever the trunk's dtype.
    x = nn.Dense(self.embedding_dim, dtype=jnp.float32)(x.astype(jnp.float32))
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                     use_scale=False, dtype=jnp.float32)(x)
    return x


iresnet18 = functools.partial(IResNet, stage_sizes=(2, 2, 2, 2))
iresnet34 = functools.partial(IResNet, stage_sizes=(3, 4, 6, 3))
iresnet50 = functools.partial(IResNet, stage_sizes=(3, 4, 14, 3))
iresnet100 = functools.partial(IResNet, stage_sizes=(3, 13, 30, 3))
iresnet200 = functools.partial(IResNet, stage_sizes=(6, 26, 60, 6))
# A CPU demo variant of the same definition: narrow, one block per stage.
iresnet_tiny = functools.partial(IResNet, stage_sizes=(1, 1, 1, 1), widths=(16, 32, 64, 128),
                                 stem_width=16)
