"""Convolutions whose training pass XLA:CPU runs fast: a `conv_general_dilated` drop-in.

XLA:CPU computes three kinds of convolution gradient through slow generic loops (measured on
the shapes of MobileFaceNet and IResNet, `benchmarks/conv_formulations.py`, `backbone.py`):
- depthwise convolutions (`feature_group_count` = input = output channels): at 56×56×128, 3×3,
  batch 32, the weight gradient takes ~17 s and the input gradient of the strided one ~9 s,
  where the same arithmetic as nine shifted multiply-adds takes ~1.5 s and ~0.2 s;
- 1×1 convolutions: the weight gradient is 5–40× slower than the matrix product it is
  (64→128 at 56×56: 4.4 s against 0.26 s);
- dense k×k convolutions: the weight gradient contracts over the batch as if it were the
  feature axis, up to 20× slower than PyTorch's (IResNet's 64→64 at 112×112: ~2 s against
  84 ms) when YNNPACK runs it. Dense convs stay the convolution primitive: compiled with
  `arcface_jax.compiler_options` (XLA's own convolutions, not YNNPACK's), each of their three
  passes, summed over IResNet-50's convolutions at batch 8, is faster than PyTorch's.
This module keeps the convolution primitive for the plain forward pass of 1×1 convs
(and of depthwise convs off CPU, and inside `convolution_primitives()`, which the ONNX export
uses: it reads the jaxpr and expects a Conv; on CPU a depthwise forward is the taps sum below),
and swaps in, under differentiation only (a `custom_vjp` rule), a formulation with the same
values:
- depthwise convs: the sum over kernel taps of strided slices of the padded input times one
  kernel row; its input gradient is the same kind of sum over dy (dilated by the stride, kernel
  flipped), and its weight gradient reduces the padded input against dy padded into each tap's
  place, so nothing tap-sized is written (XLA:CPU would write the transposes of the slices);
  a 1×1 output (the GDC head) has its own single-window gradients;
- 1×1 convs: a (strided slice and) matrix product with hand-written matrix-product gradients.
bfloat16 inputs accumulate in float32.

`conv_general_dilated` takes the arguments Flax's `nn.Conv` passes; any other convolution
(channels per group other than 1 or all, dilation, layouts other than NHWC/HWIO, padding given
as a string other than 'VALID') goes to `lax.conv_general_dilated` unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

_LAYOUT = ('NHWC', 'HWIO', 'NHWC')
Padding = tuple[tuple[int, int], tuple[int, int]]


def _taps_sum(
  x: jnp.ndarray, w: jnp.ndarray, strides: tuple[int, int], padding: Padding
) -> jnp.ndarray:
  """Σ over taps (i, j) of x_padded[:, i::sh, j::sw, :] · w[i, j, 0, :] (the depthwise conv)."""
  kh, kw = w.shape[:2]
  sh, sw = strides
  accumulate = jnp.promote_types(x.dtype, jnp.float32)  # bf16 sums nine products in fp32
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))  # padded in x's dtype: half the bytes
  batch, hp, wp, channels = xp.shape
  ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
  kernel = w.astype(accumulate)
  if (ho, wo) == (1, 1):  # one window (the GDC head): one product and one reduction, not 49 taps
    window = xp[:, :kh, :kw, :].astype(accumulate) * kernel[:, :, 0, :]
    return jnp.sum(window, axis=(1, 2), keepdims=True).astype(x.dtype)
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = lax.slice(
        xp,
        (0, i, j, 0),
        (batch, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, channels),
        (1, sh, sw, 1),
      )
      term = tap.astype(accumulate) * kernel[i, j, 0]
      out = term if out is None else out + term
  assert out is not None, f'depthwise kernel {w.shape} has no taps'
  return out.astype(x.dtype)


_PRIMITIVES_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar(
  'cpu_conv_primitives_only', default=False
)


@contextlib.contextmanager
def convolution_primitives() -> Iterator[None]:
  """While tracing inside this block, every forward pass is the convolution primitive itself
  (the ONNX export translates the jaxpr and expects a Conv).

  It acts at trace time only: `jax.jit`'s cache does not key on it, so a jitted function traced
  before at the same shapes keeps its earlier body. Trace a fresh function (or a jaxpr) here."""
  token = _PRIMITIVES_ONLY.set(True)
  try:
    yield
  finally:
    _PRIMITIVES_ONLY.reset(token)


def _depthwise_primitive(x, w, strides, padding):
  return lax.conv_general_dilated(
    x, w, strides, padding, dimension_numbers=_LAYOUT, feature_group_count=x.shape[-1]
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv(
  x: jnp.ndarray, w: jnp.ndarray, strides: tuple[int, int], padding: Padding
) -> jnp.ndarray:
  """Depthwise conv of x (B, H, W, C) with w (kh, kw, 1, C).

  Outside differentiation: on CPU the taps sum (XLA:CPU's depthwise convolution is ~10× slower:
  780 against 77 ms at 56×56×128, batch 32), elsewhere — and always inside
  `convolution_primitives()` — the convolution primitive."""
  if _PRIMITIVES_ONLY.get():
    return _depthwise_primitive(x, w, strides, padding)
  return lax.platform_dependent(
    x,
    w,
    cpu=lambda x, w: _taps_sum(x, w, strides, padding),
    default=lambda x, w: _depthwise_primitive(x, w, strides, padding),
  )


def _forward(x, w, strides, padding):
  return _taps_sum(x, w, strides, padding), (x, w)


def _depthwise_weight_gradient(
  x: jnp.ndarray,
  dy: jnp.ndarray,
  kernel_shape: tuple[int, ...],
  strides: tuple[int, int],
  padding: Padding,
) -> jnp.ndarray:
  """∂L/∂w of the depthwise conv: per tap (i, j), Σ over B·Ho·Wo of x_padded[h·sh+i, w·sw+j] · dy.

  Rather than slicing the input once per tap (nine materialised copies: XLA fuses the pad and
  the slice into a loop that writes each, and YNNPACK's reduction reads it back), each tap pads
  dy into place on the padded input's grid: the reduction then reads the padded input as it is
  and takes dy's zero padding into its own fusion (3–4× faster at MobileFaceNet's shapes). A
  strided conv first splits the padded input into its sh·sw phases (one pass in all); tap (i, j)
  reads phase (i mod sh, j mod sw) shifted by (i div sh, j div sw).
  """
  kh, kw = kernel_shape[:2]
  sh, sw = strides
  accumulate = jnp.promote_types(x.dtype, jnp.float32)
  # Padded and shifted in their own dtype (bf16: half the bytes), multiplied in float32.
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  ho, wo = dy.shape[1:3]
  phases: dict[tuple[int, int], jnp.ndarray] = {}
  taps = []
  for i in range(kh):
    for j in range(kw):
      key = (i % sh, j % sw)
      if key not in phases:
        phases[key] = xp[:, key[0] :: sh, key[1] :: sw, :] if (sh, sw) != (1, 1) else xp
      phase = phases[key]
      (di, dj), (hq, wq) = (i // sh, j // sw), phase.shape[1:3]
      shifted = jnp.pad(dy, ((0, 0), (di, hq - ho - di), (dj, wq - wo - dj), (0, 0)))
      taps.append(jnp.sum(phase.astype(accumulate) * shifted.astype(accumulate), axis=(0, 1, 2)))
  return jnp.stack(taps).reshape(kernel_shape)


def _depthwise_input_gradient(
  dy: jnp.ndarray,
  w: jnp.ndarray,
  input_shape: tuple[int, ...],
  strides: tuple[int, int],
  padding: Padding,
) -> jnp.ndarray:
  """∂L/∂x of the depthwise conv, as a stride-1 depthwise conv (`_taps_sum`) of dy — dilated by
  the stride and padded by k−1−pad (negative pads crop) — with the flipped kernel.

  The transpose of the taps' slices would be nine pads of dy·w[i, j], one per tap, each its own
  loop writing a padded-input-sized array (XLA fuses the producer of dy into every one of them);
  this reads one padded dy nine times and writes dx once.
  """
  config = [(0, 0, 0)]
  for size, taps, stride, (low, _), out in zip(
    input_shape[1:3], w.shape[:2], strides, padding, dy.shape[1:3]
  ):
    dilated = (out - 1) * stride + 1
    config.append((taps - 1 - low, size + low - dilated, stride - 1))
  config.append((0, 0, 0))
  spread = lax.pad(dy, jnp.zeros((), dy.dtype), config)
  return _taps_sum(spread, w[::-1, ::-1], (1, 1), ((0, 0), (0, 0)))


def _single_window_gradients(
  x: jnp.ndarray, w: jnp.ndarray, dy: jnp.ndarray, padding: Padding
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Both gradients of a depthwise conv whose output is 1×1 (MobileFaceNet's 7×7 GDC head):
  y = Σ over the one window of x_padded · w, so ∂L/∂w sums window · dy over the batch and
  ∂L/∂x is dy · w on the window (zero beyond it), the padding cropped. The per-tap forms would
  pad dy to the whole input once per tap (49 arrays for a 7×7 kernel)."""
  kh, kw = w.shape[:2]
  accumulate = jnp.promote_types(x.dtype, jnp.float32)
  xp = jnp.pad(x.astype(accumulate), ((0, 0), padding[0], padding[1], (0, 0)))
  grads = dy.astype(accumulate)  # (B, 1, 1, C)
  dw = jnp.sum(xp[:, :kh, :kw, :] * grads, axis=0)[:, :, None, :]
  window = grads * w[:, :, 0, :].astype(accumulate)  # (B, kh, kw, C)
  crop = [(0, 0, 0)]
  for (low, high), size, taps in zip(padding, xp.shape[1:3], (kh, kw)):
    crop.append((-low, size - taps - high, 0))
  dx = lax.pad(window, jnp.zeros((), accumulate), crop + [(0, 0, 0)])
  return dx.astype(x.dtype), dw.astype(w.dtype)


def _backward(strides, padding, residuals, dy):
  x, w = residuals
  if dy.shape[1:3] == (1, 1):
    return _single_window_gradients(x, w, dy, padding)
  dx = _depthwise_input_gradient(dy, w, x.shape, strides, padding).astype(x.dtype)
  dw = _depthwise_weight_gradient(x, dy, w.shape, strides, padding).astype(w.dtype)
  return dx, dw


depthwise_conv.defvjp(_forward, _backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def pointwise_conv(x: jnp.ndarray, w: jnp.ndarray, strides: tuple[int, int]) -> jnp.ndarray:
  """Unpadded 1×1 conv of x (B, H, W, Cin) with w (1, 1, Cin, Cout); the convolution primitive."""
  return lax.conv_general_dilated(x, w, strides, 'VALID', dimension_numbers=_LAYOUT)


def _subsample(x: jnp.ndarray, strides: tuple[int, int]) -> jnp.ndarray:
  if strides == (1, 1):
    return x
  return x[:, :: strides[0], :: strides[1], :]


def _matmul(
  a: jnp.ndarray, b: jnp.ndarray, dims: tuple[tuple[int, ...], tuple[int, ...]], dtype: Any
) -> jnp.ndarray:
  accumulate = jnp.promote_types(dtype, jnp.float32)
  return lax.dot_general(a, b, (dims, ((), ())), preferred_element_type=accumulate).astype(dtype)


def _pointwise_forward(x, w, strides):
  xs = _subsample(x, strides)
  rows = xs.reshape(-1, xs.shape[-1])
  y = _matmul(rows, w[0, 0], ((1,), (0,)), x.dtype).reshape(xs.shape[:-1] + (w.shape[-1],))
  return y, (x, w)  # x, not its subsample: the backward needs its shape (and x is kept anyway)


def _pointwise_backward(strides, residuals, dy):
  x, w = residuals
  xs = _subsample(x, strides)
  rows, grads = xs.reshape(-1, xs.shape[-1]), dy.reshape(-1, dy.shape[-1])
  dw = _matmul(rows, grads, ((0,), (0,)), w.dtype).reshape(w.shape)
  dxs = _matmul(grads, w[0, 0], ((1,), (1,)), xs.dtype).reshape(xs.shape)
  if strides != (1, 1):  # back onto the input grid: zeros between and after the sampled pixels
    config = (
      [(0, 0, 0)]
      + [(0, n - ((m - 1) * s + 1), s - 1) for n, m, s in zip(x.shape[1:3], xs.shape[1:3], strides)]
      + [(0, 0, 0)]
    )
    dxs = lax.pad(dxs, jnp.zeros((), dxs.dtype), config)
  return dxs, dw


pointwise_conv.defvjp(_pointwise_forward, _pointwise_backward)


def _explicit_padding(padding: Any) -> Padding | None:
  if isinstance(padding, str):
    return ((0, 0), (0, 0)) if padding.upper() == 'VALID' else None
  pairs = tuple(tuple(int(p) for p in pair) for pair in padding)
  return pairs if len(pairs) == 2 and all(len(p) == 2 for p in pairs) else None  # type: ignore


def conv_general_dilated(
  lhs: jnp.ndarray,
  rhs: jnp.ndarray,
  window_strides: Sequence[int],
  padding: Any,
  lhs_dilation: Sequence[int] | None = None,
  rhs_dilation: Sequence[int] | None = None,
  dimension_numbers: Any = None,
  feature_group_count: int = 1,
  **kwargs: Any,
) -> jnp.ndarray:
  """`lax.conv_general_dilated`, with plain NHWC depthwise and unpadded 1×1 convolutions routed
  through `depthwise_conv` / `pointwise_conv` (same values; faster training on CPU)."""
  pads = _explicit_padding(padding)
  nhwc = dimension_numbers is not None and lax.conv_dimension_numbers(
    lhs.shape, rhs.shape, dimension_numbers
  ) == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _LAYOUT)
  undilated = all(d == 1 for d in (lhs_dilation or (1, 1))) and all(
    d == 1 for d in (rhs_dilation or (1, 1))
  )
  plain = (
    nhwc
    and undilated
    and pads is not None
    and lhs.ndim == 4
    and not kwargs.get('precision')
    and kwargs.get('preferred_element_type') is None
  )
  strides = tuple(int(s) for s in window_strides)
  if plain and rhs.shape[2] == 1 and feature_group_count == lhs.shape[-1] == rhs.shape[-1]:
    return depthwise_conv(lhs, rhs, strides, pads)
  if plain and feature_group_count == 1 and rhs.shape[:2] == (1, 1) and pads == ((0, 0), (0, 0)):
    return pointwise_conv(lhs, rhs, strides)
  return lax.conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count,
    **kwargs,
  )
