"""One device's unchunked share of the margin softmax as one kernel (`fused_local_stats`).

Same contract as `chunked.local_stats` (normalised features x̂ (B, D), this device's centres
W (S, D), labels re-indexed into W's rows with −1 where the target lives elsewhere, a column mask)
and the same per-row statistics (lse, target logit, cos_target, hardest), for the margins of
`margins.CombinedMargin`, with a hand-written backward, as the dense head's `margin_head.py`:
Ŵ is never formed (1/‖W‖ scales the product's columns forward and the gradient's backward), cos
is the one (B, S) residual, the margin is evaluated on the B target cosines, and the backward is
the two matmuls G·W and Gᵀ·x̂ plus one fused row reduction over (S, D) for the normalisation.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from arcface_jax import margins


def supports(margin: Any, w: jax.Array) -> bool:
  """Whether `fused_local_stats` computes this share: a CombinedMargin, one centre a class."""
  return isinstance(margin, margins.CombinedMargin) and w.ndim == 2


def _target_fn(margin):
  def target(c):
    t = margin.target_cos(c)
    return margins.straight_through_target(c, t) if margin.straight_through else t

  return target


def _finite_or_zero(m: jax.Array) -> jax.Array:
  return jnp.where(jnp.isfinite(m), m, 0.0)


def _forward(x_n, w, labels, valid, margin):
  s = margin.scale
  inv_w = jax.lax.rsqrt(jnp.maximum(jnp.sum(w * w, axis=-1), 1e-12))
  cos = (x_n @ w.T) * inv_w[None, :]
  is_target = jnp.arange(w.shape[0])[None, :] == labels[:, None]
  owned = labels >= 0
  c_t = jnp.where(
    owned, jnp.take_along_axis(cos, jnp.maximum(labels, 0)[:, None], axis=-1)[:, 0], 0.0
  )
  t = _target_fn(margin)(jnp.clip(c_t, -1.0, 1.0))
  negative = valid[None, :] & ~is_target
  hardest = jnp.max(jnp.where(negative, cos, -jnp.inf), axis=-1)
  shift = _finite_or_zero(
    s * jnp.where(owned, jnp.maximum(jnp.clip(hardest, -1.0, 1.0), t), jnp.clip(hardest, -1.0, 1.0))
  )
  z = jnp.where(
    is_target, (s * t)[:, None], jnp.where(valid[None, :], s * jnp.clip(cos, -1.0, 1.0), -jnp.inf)
  )
  total = jnp.sum(jnp.exp(z - shift[:, None]), axis=-1)
  # No valid column: lse = −inf (the caller's cross-device sum then ignores this device).
  lse = jnp.where(total > 0, shift + jnp.log(jnp.where(total > 0, total, 1.0)), -jnp.inf)
  target = jnp.where(owned, s * t, 0.0)
  out = (lse, target, jax.lax.stop_gradient(c_t), jax.lax.stop_gradient(hardest))
  return out, (x_n, w, inv_w, cos, labels, valid, c_t, t, lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _stats(x_n, w, labels, valid, margin):
  return _forward(x_n, w, labels, valid, margin)[0]


def _stats_fwd(x_n, w, labels, valid, margin):
  return _forward(x_n, w, labels, valid, margin)


def _stats_bwd(margin, residuals, cotangents):
  # The metrics (cos_target, hardest) carry no gradient; lse and target do.
  x_n, w, inv_w, cos, labels, valid, c_t, t, lse = residuals
  g_lse, g_target = cotangents[0], cotangents[1]
  s = margin.scale
  owned = labels >= 0
  lse_shift = _finite_or_zero(lse)
  p_t = jnp.where(owned & jnp.isfinite(lse), jnp.exp(s * t - lse_shift), 0.0)
  _, t_vjp = jax.vjp(_target_fn(margin), jnp.clip(c_t, -1.0, 1.0))
  (d_ct,) = t_vjp(jnp.where(owned, s * (g_target + g_lse * p_t), 0.0))
  d_ct = jnp.where(jnp.abs(c_t) <= 1.0, d_ct, 0.0)
  is_target = jnp.arange(w.shape[0])[None, :] == labels[:, None]
  # Softmax columns: valid, not the target, inside [−1, 1] (the clip passes no gradient outside).
  softmax_column = valid[None, :] & ~is_target & (jnp.abs(cos) <= 1.0)
  d_other = (g_lse * s)[:, None] * jnp.exp(s * cos - lse_shift[:, None])
  d_cos = jnp.where(is_target, d_ct[:, None], jnp.where(softmax_column, d_other, 0.0))
  g_scaled = d_cos * inv_w[None, :]
  d_x = g_scaled @ w
  d_wn = g_scaled.T @ x_n
  # Through ŵ = w/‖w‖ (see margin_head.py): dw = d_wn − w·⟨w, d_wn⟩/‖w‖².
  dw = d_wn - w * (jnp.sum(w * d_wn, axis=-1) * inv_w * inv_w)[:, None]
  return d_x.astype(x_n.dtype), dw.astype(w.dtype), None, None


_stats.defvjp(_stats_fwd, _stats_bwd)


def fused_local_stats(
  x_n: jax.Array, w: jax.Array, labels: jax.Array, valid: jax.Array, margin: Any
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """`chunked.local_stats` for a CombinedMargin, with the one-kernel backward (module doc)."""
  if not supports(margin, w):
    raise ValueError(
      f'fused_local_stats takes a CombinedMargin and (S, D) centres, got '
      f'{margin!r} and centres of shape {w.shape}'
    )
  x_n = margins.as_compute_dtype(x_n)
  w = margins.as_compute_dtype(w)
  return _stats(x_n, w, labels.astype(jnp.int32), valid, margin)
