"""Batch normalisation whose training pass writes one array forward and one backward.

Flax's `nn.BatchNorm` under differentiation leaves the gradient to autodiff, which keeps the
centred input x − mean as a residual: XLA writes it as a second activation-sized array beside
the output in every layer's forward pass (at MobileFaceNet's shapes on CPU that pass is about
as costly as the output itself). `BatchNorm` here is the same layer — same parameters
('scale', 'bias'), same batch statistics ('mean', 'var', updated with the same momentum), the
same values — whose training-mode normalisation is a `custom_vjp`: the forward keeps only the
input and two per-channel vectors, and the backward is two per-channel sums and one
elementwise pass, dx = a·dy + k·x + c.

Evaluation (running averages), a cross-device `axis_name`, masks and feature axes other than
the last fall back to Flax's own code. Statistics and arithmetic are float32 whatever the
input's dtype, as in Flax (`force_float32_reductions`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes
from jax import lax


def _statistics(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Per-channel mean and biased variance over every axis but the last, in float32, the way
  Flax's default (`use_fast_variance`) computes them: E[x²] − E[x]², never below zero."""
  axes = tuple(range(x.ndim - 1))
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = jnp.mean(x32, axes)
  mean_of_squares = jnp.mean(lax.square(x32), axes)
  return mean, jnp.maximum(0.0, mean_of_squares - lax.square(mean))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def normalize_batch(
  x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray, epsilon: float, out_dtype: Any
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """(y, mean, var): y = (x − mean) · rsqrt(var + ε) · scale + bias with the batch's own
  statistics (over every axis but the last), in float32, cast to `out_dtype`.

  The statistics come out for the running averages, reduced once with y's (rather than a second
  time beside this call, for XLA to merge). They carry no gradient: the backward pass ignores
  their cotangents, and the caller stops their gradient.
  """
  return _normalize_forward(x, scale, bias, epsilon, out_dtype)[0]


def _normalize_forward(x, scale, bias, epsilon, out_dtype):
  mean, var = _statistics(x)
  inverse = lax.rsqrt(var + epsilon)
  gain = scale * inverse
  y = x.astype(gain.dtype) * gain + (bias - mean * gain)
  return (y.astype(out_dtype), mean, var), (x, mean, inverse, scale)


def _normalize_backward(epsilon, out_dtype, residuals, cotangents):
  del epsilon, out_dtype
  dy = cotangents[0]  # the statistics' cotangents are ignored (see normalize_batch)
  x, mean, inverse, scale = residuals
  axes = tuple(range(x.ndim - 1))
  count = x.size // x.shape[-1]
  dy32 = dy.astype(mean.dtype)
  # Σ dy·(x − mean) rather than Σ dy·x − mean·Σ dy: the centring is done before the sum.
  grad_bias = jnp.sum(dy32, axes)
  grad_centred = jnp.sum(dy32 * (x.astype(mean.dtype) - mean), axes)
  grad_scale = grad_centred * inverse
  gain = scale * inverse
  # dx = gain · (dy − mean(dy) − x̂ · mean(dy · x̂)), with x̂ = (x − mean) · inverse, as a·dy + k·x + c.
  k = -gain * inverse * grad_scale / count
  c = -gain * grad_bias / count - k * mean
  dx = dy32 * gain + x.astype(mean.dtype) * k + c
  return dx.astype(x.dtype), grad_scale.astype(scale.dtype), grad_bias.astype(scale.dtype)


normalize_batch.defvjp(_normalize_forward, _normalize_backward)


_FLAX_CALL = nn.BatchNorm.__call__.__wrapped__  # type: ignore[attr-defined]


class BatchNorm(nn.BatchNorm):
  """`nn.BatchNorm` with a fused training-mode normalisation (`normalize_batch`).

  The class keeps Flax's name, so parameters and statistics sit where `nn.BatchNorm` puts them
  (`BatchNorm_0/scale`, …) and checkpoints of either load in the other.
  """

  @nn.compact
  def __call__(
    self,
    x: jnp.ndarray,
    use_running_average: bool | None = None,
    *,
    mask: jnp.ndarray | None = None,
  ) -> jnp.ndarray:
    running = nn.merge_param('use_running_average', self.use_running_average, use_running_average)
    fused = (
      not running
      and mask is None
      and self.axis_name is None
      and self.axis in (-1, x.ndim - 1)
      and self.use_fast_variance
      and self.force_float32_reductions
    )
    if not fused:
      # Flax's own body, unwrapped: through the wrapped method, interceptors (the ONNX importer's
      # layer walk, freezing) would see this one layer called twice.
      return _FLAX_CALL(self, x, use_running_average, mask=mask)
    channels = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32), channels)
    ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), channels)
    arguments: list[Any] = [x]
    compute = jnp.promote_types(jnp.promote_types(x.dtype, self.param_dtype), jnp.float32)
    scale = jnp.ones(channels, compute)
    bias = jnp.zeros(channels, compute)
    if self.use_scale:
      scale = self.param('scale', self.scale_init, channels, self.param_dtype)
      arguments.append(scale)
    if self.use_bias:
      bias = self.param('bias', self.bias_init, channels, self.param_dtype)
      arguments.append(bias)
    out_dtype = dtypes.canonicalize_dtype(*arguments, dtype=self.dtype)
    y, mean, var = normalize_batch(
      x,
      scale.astype(compute),
      bias.astype(compute),
      float(self.epsilon),
      jnp.dtype(out_dtype),
    )
    if not self.is_initializing():
      mean, var = lax.stop_gradient((mean, var))
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y
