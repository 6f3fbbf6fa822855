"""The terms the objectives of `arcface_jax.losses` add up, each a function of arrays: the margin
cross-entropy (plain, and fused with a hand-written backward), the angle metrics, the ArcFace
paper's Intra- and Inter-loss, the angular triplet loss with semi-hard mining and the centre loss."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from arcface_jax import margins


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """x / ||x|| with the norm floored at 1e-6 (a zero row stays zero, gradient finite)."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), 1e-12))


def margin_softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy of (B, C) logits against integer labels, in float32.

  Rows with label −1 (no target among these columns) contribute nothing and are not counted in
  the mean. Stable for any logit magnitude: logsumexp with the row maximum taken out.
  """
  logits = margins.as_compute_dtype(logits)
  valid = labels >= 0
  lse = jax.nn.logsumexp(logits, axis=-1)
  per_row = lse - margins.gather_target(logits, labels)
  return jnp.sum(jnp.where(valid, per_row, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def _target_fn(margin):
  def target(c):
    t = margin.target_cos(c)
    return margins.straight_through_target(c, t) if margin.straight_through else t

  return target


def _fused_margin_ce_fwd(cos, labels, margin):
  cos = margins.as_compute_dtype(cos)
  s = margin.scale
  is_target = jnp.arange(cos.shape[-1])[None, :] == labels[:, None]
  c_t = jnp.sum(jnp.where(is_target, cos, 0.0), axis=-1)
  t = _target_fn(margin)(jnp.clip(c_t, -1.0, 1.0))
  valid = labels >= 0
  clipped = jnp.clip(cos, -1.0, 1.0)
  neg_max = jnp.max(jnp.where(is_target, -jnp.inf, clipped), axis=-1)
  shift = s * jnp.where(valid, jnp.maximum(neg_max, t), neg_max)
  z = jnp.where(is_target, (s * t)[:, None], s * clipped)
  lse = shift + jnp.log(jnp.sum(jnp.exp(z - shift[:, None]), axis=-1))
  count = jnp.maximum(jnp.sum(valid), 1)
  loss = jnp.sum(jnp.where(valid, lse - s * t, 0.0)) / count
  return loss, (cos, labels, c_t, t, lse, count)


def _fused_margin_ce_bwd(margin, residuals, g):
  cos, labels, c_t, t, lse, count = residuals
  s = margin.scale
  _, t_vjp = jax.vjp(_target_fn(margin), jnp.clip(c_t, -1.0, 1.0))
  valid = labels >= 0
  w = jnp.where(valid, g / count, 0.0)
  p_t = jnp.exp(s * t - lse)
  (d_ct,) = t_vjp(w * s * (p_t - 1.0))
  d_ct = jnp.where(jnp.abs(c_t) <= 1.0, d_ct, 0.0)
  is_target = jnp.arange(cos.shape[-1])[None, :] == labels[:, None]
  inside = jnp.abs(cos) <= 1.0  # the clip passes no gradient outside [−1, 1]
  d_other = (w * s)[:, None] * jnp.exp(s * cos - lse[:, None])
  d_cos = jnp.where(is_target, d_ct[:, None], jnp.where(inside, d_other, 0.0))
  return d_cos.astype(cos.dtype), None


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _fused_ce(cos: jax.Array, labels: jax.Array, margin: Any) -> jax.Array:
  return _fused_margin_ce_fwd(cos, labels, margin)[0]


_fused_ce.defvjp(_fused_margin_ce_fwd, _fused_margin_ce_bwd)


def fused_margin_cross_entropy(
  cos: jax.Array, labels: jax.Array, margin: margins.CombinedMargin
) -> jax.Array:
  """margin_softmax_cross_entropy(margin(cos, labels), labels) with a hand-written backward.

  Same value and gradient as the composition, but the (B, C) array is read three times forward
  and written once backward, instead of the dozen passes autodiff of the composition takes; the
  margin curve's own derivative still comes from autodiff, on the B target cosines only.
  """
  return _fused_ce(cos, labels, margin)


def angle_metrics(cos: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
  """Mean target angle (degrees), mean target cos and mean hardest-negative cos (no gradient)."""
  cos = jax.lax.stop_gradient(margins.as_compute_dtype(cos))
  is_target = jnp.arange(cos.shape[-1])[None, :] == labels[:, None]
  cos_target = jnp.sum(jnp.where(is_target, cos, 0.0), axis=-1)
  hardest = jnp.max(jnp.where(is_target, -jnp.inf, cos), axis=-1)
  theta = jnp.degrees(jnp.arccos(jnp.clip(cos_target, -1.0, 1.0)))
  return {
    'theta_target_deg': theta.mean(),
    'cos_target': cos_target.mean(),
    'cos_hardest_negative': hardest.mean(),
  }


def intra_loss(cos_target: jax.Array) -> jax.Array:
  """ArcFace paper's Intra-loss term: (1/πN) Σ θ_yi, the angle to the own class centre."""
  return jnp.mean(margins.safe_arccos(cos_target)) / jnp.pi


def inter_loss(weight_normed: jax.Array, labels: jax.Array) -> jax.Array:
  """ArcFace paper's Inter-loss term: −(1/(πN(n−1))) Σ_i Σ_{j≠yi} arccos(W_yi · W_j).

  Costs one (B, C) product of the batch's target centres with all centres.
  """
  num_classes = weight_normed.shape[0]
  centre_cos = weight_normed[labels] @ weight_normed.T
  is_own = jnp.arange(num_classes)[None, :] == labels[:, None]
  # Clipped inside arccos, so the masked-out own column (cos = 1) has a finite, zeroed gradient.
  angles = jnp.where(is_own, 0.0, margins.safe_arccos(centre_cos))
  return -jnp.sum(angles) / (jnp.pi * labels.shape[0] * max(num_classes - 1, 1))


def triplet_loss(
  embeddings: jax.Array, labels: jax.Array, margin: float = 0.35
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Angular triplet loss, mean over all anchor-positive pairs of [θ_ap − θ_an + margin]_+.

  Online semi-hard mining within the batch (FaceNet): for each pair (a, p) the negative is the
  closest one still farther than p (θ_an > θ_ap); when none is, the farthest negative. Angles
  θ = arccos(x_a · x_b) of L2-normalised embeddings. Returns (loss, metrics) with the batch's
  anchor-positive cos and hardest-negative cos, the analogues of the target/negative metrics.
  """
  x = l2_normalize(margins.as_compute_dtype(embeddings))
  cos = x @ x.T
  theta = margins.safe_arccos(cos)
  n = labels.shape[0]
  same = labels[:, None] == labels[None, :]
  positive = same & ~jnp.eye(n, dtype=bool)
  negative = ~same
  # Mining is a choice, not part of the gradient: indices come from stopped angles. Sorting each
  # anchor's negatives keeps memory at (B, B) instead of the (B, B, B) of a brute-force search.
  t = jax.lax.stop_gradient(theta)
  neg_t = jnp.where(negative, t, jnp.inf)
  order = jnp.argsort(neg_t, axis=-1)
  sorted_t = jnp.take_along_axis(neg_t, order, axis=-1)
  num_neg = jnp.sum(negative, axis=-1)
  # First negative strictly farther than the positive, per (anchor, positive).
  first = jax.vmap(lambda row, q: jnp.searchsorted(row, q, side='right'))(sorted_t, t)
  semi_hard = first < num_neg[:, None]
  farthest = jnp.maximum(num_neg - 1, 0)[:, None]
  rank = jnp.where(semi_hard, first, farthest)
  chosen = jnp.take_along_axis(order, jnp.minimum(rank, n - 1), axis=-1)
  theta_an = jnp.take_along_axis(theta, chosen, axis=-1)  # gradient reaches the negative
  valid = positive & (num_neg > 0)[:, None]
  hinge = jnp.maximum(theta - theta_an + margin, 0.0)
  loss = jnp.sum(jnp.where(valid, hinge, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
  cs = jax.lax.stop_gradient(cos)
  pos_cos = jnp.sum(jnp.where(positive, cs, 0.0)) / jnp.maximum(jnp.sum(positive), 1)
  has_neg = jnp.any(negative, axis=-1)
  neg_cos = jnp.max(jnp.where(negative, cs, -jnp.inf), axis=-1)
  neg_cos = jnp.sum(jnp.where(has_neg, neg_cos, 0.0)) / jnp.maximum(jnp.sum(has_neg), 1)
  metrics = {
    'theta_target_deg': jnp.degrees(jnp.arccos(jnp.clip(pos_cos, -1.0, 1.0))),
    'cos_target': pos_cos,
    'cos_hardest_negative': neg_cos,
  }
  return loss, metrics


def center_loss(
  embeddings: jax.Array, labels: jax.Array, centres: jax.Array, alpha: float
) -> tuple[jax.Array, jax.Array]:
  """Centre loss (Wen et al. 2016): ½·mean ||x_i − c_yi||², and the centres moved by rate α.

  Centres are state, not parameters: the loss pulls features only, and each centre present in
  the batch moves as c_j ← c_j − α Σ_{i: y_i=j} (c_j − x_i) / (1 + n_j).
  """
  target = centres[labels]
  diff = embeddings - jax.lax.stop_gradient(target)
  loss = 0.5 * jnp.mean(jnp.sum(diff * diff, axis=-1))
  num = centres.shape[0]
  delta_sum = jax.ops.segment_sum(jax.lax.stop_gradient(target - embeddings), labels, num)
  counts = jax.ops.segment_sum(jnp.ones_like(labels, jnp.float32), labels, num)
  new_centres = centres - alpha * delta_sum / (1.0 + counts)[:, None]
  return loss, new_centres
