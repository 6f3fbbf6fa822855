"""IResNet ("improved" ResNet for faces, the ArcFace paper's LResNet-IR) and its sizes.

Layout (REFERENCE §6): stem conv3×3(64, stride 1) → BN → PReLU; four stages of 64/128/256/512
channels, each opening with a stride-2 block; block = BN → conv3×3 → BN → PReLU → conv3×3(stride)
→ BN, plus a shortcut (identity, or conv1×1(stride) → BN), with no activation after the sum; head
BN → dropout → FC(flatten → embedding) → BN with its scale fixed to 1. The variants are
`functools.partial` aliases of one definition.

Every conv goes through `cpu_conv` (a faster CPU training pass, same values).

Module call order equals the PyTorch reference's forward order (the shortcut after the main
path), which is what `import_onnx` relies on to pair layers.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from arcface_jax.models import cpu_conv
from arcface_jax.models.layers import PReLU, batch_norm, conv


class IBasicBlock(nn.Module):
  features: int
  strides: int
  dtype: Any = jnp.float32
  conv_fn: Any = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    c = functools.partial(conv, dtype=self.dtype, conv_fn=self.conv_fn)
    y = batch_norm(train, self.dtype)(x)
    y = c(self.features, 3, padding=1)(y)
    y = batch_norm(train, self.dtype)(y)
    y = PReLU()(y)
    y = c(self.features, 3, strides=self.strides, padding=1)(y)
    y = batch_norm(train, self.dtype)(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = c(self.features, 1, strides=self.strides)(x)
      x = batch_norm(train, self.dtype)(x)
    return x + y


class IResNet(nn.Module):
  """Images (B, H, W, 3), normalised → un-normalised embeddings (B, embedding_dim) in float32.

  H and W must be multiples of 16 (four stride-2 stages); the FC's input size follows the
  final feature map (7×7 at 112×112).
  """

  stage_sizes: Sequence[int]
  widths: Sequence[int] = (64, 128, 256, 512)
  stem_width: int = 64
  embedding_dim: int = 512
  dropout: float = 0.0
  dtype: Any = jnp.float32  # trunk compute dtype; parameters stay float32
  # Replacement for lax.conv_general_dilated (see layers.conv): by default every conv's weight
  # gradient is computed by matrix products on CPU (cpu_conv): the same values, faster.
  conv_fn: Any = cpu_conv.conv_general_dilated

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = images.astype(self.dtype)
    x = conv(self.stem_width, 3, padding=1, dtype=self.dtype, conv_fn=self.conv_fn)(x)
    x = batch_norm(train, self.dtype)(x)
    x = PReLU()(x)
    for width, blocks in zip(self.widths, self.stage_sizes):
      for i in range(blocks):
        x = IBasicBlock(width, strides=2 if i == 0 else 1, dtype=self.dtype, conv_fn=self.conv_fn)(
          x, train
        )
    x = batch_norm(train, self.dtype)(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = x.reshape(x.shape[0], -1)
    # The embedding head runs in float32 whatever the trunk's dtype (as the reference's fp16
    # recipe does): the FC sums thousands of terms, and the loss sees these values directly.
    x = nn.Dense(self.embedding_dim, dtype=jnp.float32)(x.astype(jnp.float32))
    x = batch_norm(train, jnp.float32, use_scale=False)(x)
    return x


iresnet18 = functools.partial(IResNet, stage_sizes=(2, 2, 2, 2))
iresnet34 = functools.partial(IResNet, stage_sizes=(3, 4, 6, 3))
iresnet50 = functools.partial(IResNet, stage_sizes=(3, 4, 14, 3))
iresnet100 = functools.partial(IResNet, stage_sizes=(3, 13, 30, 3))
iresnet200 = functools.partial(IResNet, stage_sizes=(6, 26, 60, 6))
# A CPU demo variant of the same definition: narrow, one block per stage.
iresnet_tiny = functools.partial(
  IResNet, stage_sizes=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem_width=16
)
