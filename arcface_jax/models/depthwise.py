"""Depthwise convolution whose training pass XLA:CPU runs fast: `conv_general_dilated` drop-in.

XLA:CPU lowers a depthwise convolution (`feature_group_count` = input channels = output
channels) and above all its gradients to a slow generic loop: at batch 32, 56×56×128, 3×3, its
weight gradient takes ~17 s where the same arithmetic written as nine shifted multiply-adds
takes ~1.5 s (benchmarks/backbone.py --breakdown --arch mobilefacenet). This module keeps the
convolution primitive for the plain forward pass — evaluation, `jax.jit` inference and the ONNX
export (which reads the jaxpr and expects a Conv) see exactly `lax.conv_general_dilated` — and
swaps in, under differentiation only (a `custom_vjp` forward rule), the sum over kernel taps of
strided slices of the padded input times one kernel row, whose gradients are again slices, pads
and reductions that XLA fuses. bfloat16 inputs are accumulated in float32.

`conv_general_dilated` takes the arguments Flax's `nn.Conv` passes; any convolution that is not
a plain depthwise one (channels per group ≠ 1, dilation, layouts other than NHWC/HWIO, padding
given as a string other than 'VALID') goes to `lax.conv_general_dilated` unchanged.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

_LAYOUT = ('NHWC', 'HWIO', 'NHWC')
Padding = tuple[tuple[int, int], tuple[int, int]]


def _taps_sum(x: jnp.ndarray, w: jnp.ndarray, strides: tuple[int, int],
              padding: Padding) -> jnp.ndarray:
  """Σ over taps (i, j) of x_padded[:, i::sh, j::sw, :] · w[i, j, 0, :] (the depthwise conv)."""
  kh, kw = w.shape[:2]
  sh, sw = strides
  accumulate = jnp.promote_types(x.dtype, jnp.float32)  # bf16 sums nine products in fp32
  xp = jnp.pad(x.astype(accumulate), ((0, 0), padding[0], padding[1], (0, 0)))
  batch, hp, wp, channels = xp.shape
  ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
  kernel = w.astype(accumulate)
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = lax.slice(xp, (0, i, j, 0), (batch, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1,
                                         channels), (1, sh, sw, 1))
      term = tap * kernel[i, j, 0]
      out = term if out is None else out + term
  return out.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv(x: jnp.ndarray, w: jnp.ndarray, strides: tuple[int, int],
                   padding: Padding) -> jnp.ndarray:
  """Depthwise conv of x (B, H, W, C) with w (kh, kw, 1, C); the convolution primitive itself."""
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_LAYOUT,
                                  feature_group_count=x.shape[-1])


def _forward(x, w, strides, padding):
  return _taps_sum(x, w, strides, padding), (x, w)


def _backward(strides, padding, residuals, dy):
  x, w = residuals
  _, vjp = jax.vjp(lambda x, w: _taps_sum(x, w, strides, padding), x, w)
  return vjp(dy)


depthwise_conv.defvjp(_forward, _backward)


def _explicit_padding(padding: Any) -> Padding | None:
  if isinstance(padding, str):
    return ((0, 0), (0, 0)) if padding.upper() == 'VALID' else None
  pairs = tuple(tuple(int(p) for p in pair) for pair in padding)
  return pairs if len(pairs) == 2 and all(len(p) == 2 for p in pairs) else None  # type: ignore


def conv_general_dilated(lhs: jnp.ndarray, rhs: jnp.ndarray, window_strides: Sequence[int],
                         padding: Any, lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                         feature_group_count: int = 1, **kwargs: Any) -> jnp.ndarray:
  """`lax.conv_general_dilated`, with plain depthwise NHWC convolutions routed through
  `depthwise_conv` (same values; a faster training formulation on CPU)."""
  pads = _explicit_padding(padding)
  nhwc = dimension_numbers is not None and lax.conv_dimension_numbers(
      lhs.shape, rhs.shape, dimension_numbers) == lax.conv_dimension_numbers(
          lhs.shape, rhs.shape, _LAYOUT)
  undilated = all(d == 1 for d in (lhs_dilation or (1, 1))) and all(
      d == 1 for d in (rhs_dilation or (1, 1)))
  if (nhwc and undilated and pads is not None and lhs.ndim == 4 and rhs.shape[2] == 1
      and feature_group_count == lhs.shape[-1] == rhs.shape[-1] and not kwargs.get('precision')
      and kwargs.get('preferred_element_type') is None):
    return depthwise_conv(lhs, rhs, tuple(int(s) for s in window_strides), pads)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                  dimension_numbers, feature_group_count, **kwargs)
