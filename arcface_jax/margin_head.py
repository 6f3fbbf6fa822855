"""The dense margin-softmax head as one kernel: normalise, cos θ, margin, cross-entropy, backward.

`margin_head(embeddings, weight, labels, margin)` maps un-normalised features x (B, D) and class
centres W (C, D) to the mean margin cross-entropy of s·margin(x̂·Ŵᵀ) and the angle metrics, with a
hand-written backward (one `jax.custom_vjp`), so that the step costs the three matmuls it must
(x̂·Wᵀ forward; G·W and Gᵀ·x̂ backward) plus a few elementwise passes:
  * Ŵ is never formed: cos = (x̂·Wᵀ)·diag(1/‖W‖), and the backward folds 1/‖W‖ into the (B, C)
    gradient G before both matmuls. The normalisation's Jacobian needs ⟨ŵ_c, ∂L/∂ŵ_c⟩, which
    equals Σ_b G_bc·cos_bc: a column sum over the (B, C) arrays already in hand, not a C×D pass.
  * The margin is evaluated on the B target cosines only (its derivative by autodiff there), the
    softmax shift is the row maximum, and the one-hot is an iota comparison fused into each pass.
  * The only (B, C) residual is cos itself; G is computed from it in place. No logits copy, no
    one-hot, no fp32 copy of Ŵ, so the peak is about one (B, C) array plus dW.
Everything runs in float32 whatever the trunk's dtype; gradients return in the inputs' dtypes.
Rows with label −1 contribute nothing (and are not counted in the mean). cos θ is clipped to
[−1, 1] for the margin and the softmax (no gradient through the clip), so no NaN/Inf arises.

Margins: those of `margins.CombinedMargin` (norm_softmax, cosface, arcface, combined, with
easy_margin / straight_through); the others change more than the target column or need per-row
state and go through `losses` ' general path.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from arcface_jax import margins


def _inv_norm(x: jax.Array) -> jax.Array:
  """1/‖row‖ with the norm floored at 1e-6 (as `loss_terms.l2_normalize`)."""
  return jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1), 1e-12))


def _target_fn(margin):
  def target(c):
    t = margin.target_cos(c)
    return margins.straight_through_target(c, t) if margin.straight_through else t

  return target


def _is_target(labels: jax.Array, num_classes: int) -> jax.Array:
  return jnp.arange(num_classes)[None, :] == labels[:, None]


def _forward(x, w, labels, margin):
  x = margins.as_compute_dtype(x)
  w = margins.as_compute_dtype(w)
  s = margin.scale
  inv_x = _inv_norm(x)
  inv_w = _inv_norm(w)
  x_n = x * inv_x[:, None]
  cos = (x_n @ w.T) * inv_w[None, :]
  is_target = _is_target(labels, w.shape[0])
  valid = labels >= 0
  # The target cosine by a gather of B values (a (B, C) masked sum would be one more pass).
  c_t = jnp.where(
    valid, jnp.take_along_axis(cos, jnp.maximum(labels, 0)[:, None], axis=-1)[:, 0], 0.0
  )
  hardest = jnp.max(jnp.where(is_target, -jnp.inf, cos), axis=-1)
  t = _target_fn(margin)(jnp.clip(c_t, -1.0, 1.0))
  neg_max = jnp.clip(hardest, -1.0, 1.0)  # max of the clipped = clip of the max
  shift = s * jnp.where(valid, jnp.maximum(neg_max, t), neg_max)
  z = jnp.where(is_target, (s * t)[:, None], s * jnp.clip(cos, -1.0, 1.0))
  e = jnp.exp(z - shift[:, None])
  total = jnp.sum(e, axis=-1)
  lse = shift + jnp.log(total)
  # Σ_{c≠y} p_c cos_c over the columns inside [−1, 1], for the backward's ⟨x̂, ∂L/∂x̂⟩ (see there).
  inside = (jnp.abs(cos) <= 1.0) & ~is_target
  mean_cos = jnp.sum(jnp.where(inside, e * cos, 0.0), axis=-1) / total
  count = jnp.maximum(jnp.sum(valid), 1)
  loss = jnp.sum(jnp.where(valid, lse - s * t, 0.0)) / count
  return (loss, c_t, hardest), (x_n, inv_x, w, inv_w, cos, labels, c_t, t, lse, mean_cos, count)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _head(x, w, labels, margin):
  return _forward(x, w, labels, margin)[0]


def _head_fwd(x, w, labels, margin):
  out, residuals = _forward(x, w, labels, margin)
  # The dtypes of the inputs, as zero-size arrays (a custom_vjp residual must be an array).
  return out, residuals + (jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


def _head_bwd(margin, residuals, cotangents):
  # Only the loss carries a gradient: the metrics (c_t, hardest) are reported, not trained on.
  x_n, inv_x, w, inv_w, cos, labels, c_t, t, lse, mean_cos, count, x_dtype, w_dtype = residuals
  g = cotangents[0]
  s = margin.scale
  _, t_vjp = jax.vjp(_target_fn(margin), jnp.clip(c_t, -1.0, 1.0))
  valid = labels >= 0
  row = jnp.where(valid, g / count, 0.0)
  p_t = jnp.exp(s * t - lse)
  (d_ct,) = t_vjp(row * s * (p_t - 1.0))
  d_ct = jnp.where(jnp.abs(c_t) <= 1.0, d_ct, 0.0)
  is_target = _is_target(labels, w.shape[0])
  inside = jnp.abs(cos) <= 1.0  # the clip passes no gradient outside [−1, 1]
  d_other = (row * s)[:, None] * jnp.exp(s * cos - lse[:, None])
  d_cos = jnp.where(is_target, d_ct[:, None], jnp.where(inside, d_other, 0.0))
  # ∂L/∂ŵ_c = Σ_b d_cos_bc x̂_b; folding 1/‖w_c‖ in now gives (1/‖w_c‖)·∂L/∂ŵ_c from the matmul.
  g_scaled = d_cos * inv_w[None, :]
  d_xn = g_scaled @ w
  d_wn = g_scaled.T @ x_n
  # Through ŵ = w/‖w‖: dw = (∂L/∂ŵ − ŵ⟨ŵ, ∂L/∂ŵ⟩)/‖w‖ = d_wn − w·⟨w, d_wn⟩/‖w‖², one fused
  # row reduction and update over (C, D) (a column sum over the (B, C) arrays runs strided).
  radial_w = jnp.sum(w * d_wn, axis=-1) * (inv_w * inv_w)
  dw = d_wn - w * radial_w[:, None]
  # ⟨x̂_b, ∂L/∂x̂_b⟩ = Σ_c d_cos_bc cos_bc = row·s·Σ_{c≠y} p_c cos_c + d_ct·c_t, the first sum
  # taken in the forward pass: any reduction here (of d_xn, or of the (B, C) arrays) is fused by
  # XLA:CPU into the matmul's kernel, which made the whole step twice as slow.
  radial_x = row * s * mean_cos + jnp.where(valid, d_ct * c_t, 0.0)
  dx = (d_xn - x_n * radial_x[:, None]) * inv_x[:, None]
  return dx.astype(x_dtype.dtype), dw.astype(w_dtype.dtype), None


_head.defvjp(_head_fwd, _head_bwd)


def supports(margin: Any, weight: jax.Array) -> bool:
  """Whether `margin_head` computes this head: a CombinedMargin over one centre per class."""
  return isinstance(margin, margins.CombinedMargin) and weight.ndim == 2


def margin_head(
  embeddings: jax.Array, weight: jax.Array, labels: jax.Array, margin: margins.CombinedMargin
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(mean margin cross-entropy, angle metrics) of un-normalised embeddings (B, D) against
  centres (C, D); gradients reach both. Metrics (no gradient): 'theta_target_deg', 'cos_target',
  'cos_hardest_negative', as `loss_terms.angle_metrics`."""
  if not supports(margin, weight):
    raise ValueError(
      f'margin_head takes a CombinedMargin and (C, D) centres, got {margin!r} and '
      f'centres of shape {weight.shape}'
    )
  if embeddings.ndim != 2 or embeddings.shape[1] != weight.shape[1]:
    raise ValueError(f'embeddings {embeddings.shape} do not match centres {weight.shape}')
  loss, c_t, hardest = _head(embeddings, weight, labels.astype(jnp.int32), margin)
  c_t, hardest = jax.lax.stop_gradient(c_t), jax.lax.stop_gradient(hardest)
  theta = jnp.degrees(jnp.arccos(jnp.clip(c_t, -1.0, 1.0)))
  return loss, {
    'theta_target_deg': theta.mean(),
    'cos_target': c_t.mean(),
    'cos_hardest_negative': hardest.mean(),
  }
