"""MobileFaceNet (Chen et al. 2018) in the layout of the reference trainer's `mbf` backbone.

stem conv3×3(64·s, stride 2) → BN → PReLU; grouped conv3×3 (64 groups) → BN → PReLU; then
inverted-residual "depthwise" units (conv1×1 expand → BN → PReLU → depthwise conv3×3 → BN →
PReLU → conv1×1 project → BN, identity shortcut when the shape is kept) in stages of
(expand width, output width, stride, repeats): a stride-2 unit opens each of stages 1–3; then
conv1×1(512) → BN → PReLU and the GDC head: a 7×7 (= final feature map) linear depthwise conv →
BN → flatten → FC (no bias) → BN.

Scale 1 is the paper's network (about 1.0M parameters, 0.22 G multiply-accumulates); the
reference trainer's `mbf` uses scale 2 with the same expand widths (128/256/512).

The depthwise convolutions go through `cpu_conv.conv_general_dilated`: the same values, but a
training pass XLA:CPU runs an order of magnitude faster than its own depthwise gradients.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from arcface_jax.models import cpu_conv
from arcface_jax.models.layers import PReLU, batch_norm, conv


class ConvUnit(nn.Module):
  """conv → BN (→ PReLU unless `linear`)."""

  features: int
  kernel: int = 1
  strides: int = 1
  groups: int = 1
  linear: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    x = conv(
      self.features,
      self.kernel,
      strides=self.strides,
      padding=(self.kernel - 1) // 2,
      groups=self.groups,
      dtype=self.dtype,
      conv_fn=cpu_conv.conv_general_dilated,
    )(x)
    x = batch_norm(train, self.dtype)(x)
    return x if self.linear else PReLU()(x)


class DepthWise(nn.Module):
  """Inverted residual: expand 1×1 → depthwise 3×3(stride) → linear project 1×1."""

  features: int
  expand: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    unit = functools.partial(ConvUnit, dtype=self.dtype)
    y = unit(self.expand)(x, train)
    y = unit(self.expand, 3, strides=self.strides, groups=self.expand)(y, train)
    y = unit(self.features, linear=True)(y, train)
    # The reference adds the shortcut exactly for the repeated (shape-keeping) units.
    return x + y if self.strides == 1 and x.shape[-1] == self.features else y


class MobileFaceNet(nn.Module):
  """Images (B, H, W, 3), normalised → un-normalised embeddings (B, embedding_dim) in float32."""

  blocks: Sequence[int] = (1, 4, 6, 2)
  scale: int = 1
  embedding_dim: int = 512
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    unit = functools.partial(ConvUnit, dtype=self.dtype)
    block = functools.partial(DepthWise, dtype=self.dtype)
    c1, c2 = 64 * self.scale, 128 * self.scale
    x = images.astype(self.dtype)
    x = unit(c1, 3, strides=2)(x, train)
    if self.blocks[0] == 1:
      x = unit(c1, 3, groups=64)(x, train)
    else:
      for _ in range(self.blocks[0]):
        x = block(c1, 128)(x, train)
    # (output width, expand width, repeats after the stride-2 opener)
    for out, expand_down, expand, repeats in (
      (c1, 128, 128, self.blocks[1]),
      (c2, 256, 256, self.blocks[2]),
      (c2, 512, 256, self.blocks[3]),
    ):
      x = block(out, expand_down, strides=2)(x, train)
      for _ in range(repeats):
        x = block(out, expand)(x, train)
    # As in the reference's fp16 recipe, the last 1×1 conv and the GDC head run in float32.
    x = x.astype(jnp.float32)
    x = ConvUnit(512)(x, train)
    # GDC: a depthwise conv whose kernel covers the whole final feature map.
    x = nn.Conv(
      512,
      x.shape[1:3],
      padding='VALID',
      feature_group_count=512,
      use_bias=False,
      conv_general_dilated=cpu_conv.conv_general_dilated,
    )(x)
    x = batch_norm(train)(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.embedding_dim, use_bias=False)(x)
    return batch_norm(train)(x)


mobilefacenet = functools.partial(MobileFaceNet, scale=1)
# The reference trainer's `mbf` configuration (twice the widths, same expand widths).
mobilefacenet_x2 = functools.partial(MobileFaceNet, scale=2)
