"""Layers shared by the backbones: PReLU and the batch-norm settings of the reference models.

Batch norm follows the PyTorch reference trainer (eps 1e-5, running averages kept with weight
0.9 on the old value, i.e. PyTorch's momentum 0.1), so statistics imported from its exports
mean the same thing here.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from arcface_jax.models.batch_norm import BatchNorm

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


class PReLU(nn.Module):
  """Per-channel leaky slope learnt from 0.25 (PyTorch's `nn.PReLU(C)` default)."""

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    slope = self.param('slope', nn.initializers.constant(0.25), (x.shape[-1],), jnp.float32)
    # The negative side is computed in float32 (the slope stays a float32 parameter) and cast
    # to x's dtype: with a bf16 x the slope's gradient then sums float32 products, which XLA:CPU
    # hands to YNNPACK; a bf16 product and sum went to a generic loop ~5× slower.
    negative = (x.astype(jnp.promote_types(x.dtype, jnp.float32)) * slope).astype(x.dtype)
    return jnp.where(x >= 0, x, negative)


def batch_norm(train: bool, dtype: Any = jnp.float32, **kwargs: Any) -> nn.BatchNorm:
  """A BatchNorm in the reference's settings; `train` picks batch vs running statistics. It
  is `batch_norm.BatchNorm`: Flax's layer with a fused training-mode gradient."""
  return BatchNorm(
    use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, **kwargs
  )


def conv(
  features: int,
  kernel: int,
  *,
  strides: int = 1,
  padding: int = 0,
  groups: int = 1,
  dtype: Any = jnp.float32,
  conv_fn: Any = None,
  **kwargs: Any,
) -> nn.Conv:
  """A bias-free square conv with PyTorch-style symmetric integer padding.

  `conv_fn` replaces `lax.conv_general_dilated` (e.g. a formulation with a faster weight
  gradient on CPU); None keeps XLA's own.
  """
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=strides,
    padding=padding,
    feature_group_count=groups,
    use_bias=False,
    dtype=dtype,
    conv_general_dilated=conv_fn,
    **kwargs,
  )


dense_fp32 = functools.partial(nn.Dense, dtype=jnp.float32)
