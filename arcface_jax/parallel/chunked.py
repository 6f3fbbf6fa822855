"""One device's share of the margin softmax: local log-sum-exp and target logit, dense or chunked.

Both functions map normalised features x (B, D), this device's class centres w (S, D), labels
re-indexed into w's rows (−1: the target lives elsewhere) and a column mask (False: padding) to
per-row statistics over this device's columns:
  lse       log Σ_j exp(logit_j) over the valid columns (−inf when there are none)
  target    the margin-adjusted target logit (0 where the target is elsewhere)
  cos_target, hardest   cos θ of the target and the largest non-target cos θ (no gradient)
The caller combines them across devices (softmax.py).

`local_stats` builds the (B, S) logits and lets autodiff do the rest. `chunked_local_stats` walks
the columns in blocks of `chunk` with an online max/sum and a hand-written backward that
recomputes each block's logits, so no (B, S) array exists in either pass; the peak extra memory
is a few (B, chunk) blocks. The margin's own derivative still comes from autodiff (jax.vjp of one
block), so every margin, straight-through included, works unchanged.

Margins with per-row parameters (`margin.prepare`: CurricularFace's t and threshold, MagFace's
and AdaFace's norm-dependent margins, ElasticFace's draws) pass them as `rows`, computed once
over the global batch before the block loop: every block binds the same rows, so chunking changes
neither the state nor the draws. Rows are an input of the hand-written backward like x and w, so
a row parameter that depends on the features (MagFace's m(‖x‖)) gets its gradient, summed over
the blocks.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

Stats = tuple[jax.Array, jax.Array, jax.Array, jax.Array]


def l2_normalize(x: jax.Array) -> jax.Array:
  """Rows of x over their norm, floored at 1e-6 so zero (padding) rows stay zero and finite."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def _logits(
  x_n: jax.Array, w: jax.Array, labels: jax.Array, valid: jax.Array, margin: Any
) -> tuple[jax.Array, jax.Array]:
  """(cos (B, S), scaled logits with the margin on the targets and −inf on invalid columns).

  Sub-centre centres w (S, K, D) give each column the max cosine over its K sub-centres."""
  if w.ndim == 3:
    cos = jnp.max(jnp.einsum('bd,skd->bsk', x_n, l2_normalize(w)), axis=-1)
  else:
    cos = x_n @ l2_normalize(w).T
  logits = margin(cos, labels)
  return cos, jnp.where(valid[None, :], logits, -jnp.inf)


def _finite_or_zero(m: jax.Array) -> jax.Array:
  # A row max is −inf when a block has no valid column; shifting by it would give inf − inf.
  return jnp.where(jnp.isfinite(m), m, 0.0)


def _metrics(cos: jax.Array, is_target: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  cos = jax.lax.stop_gradient(cos)
  cos_target = jnp.sum(jnp.where(is_target, cos, 0.0), axis=-1)
  hardest = jnp.max(jnp.where(valid[None, :] & ~is_target, cos, -jnp.inf), axis=-1)
  return cos_target, hardest


def _varying_like(value: jax.Array, *inputs: jax.Array) -> jax.Array:
  """`value` marked as varying over every mesh axis any of `inputs` varies over.

  Inside shard_map a scan's carry must keep its type; the carries start as constants but become
  per-device values once the centres enter them.
  """
  axes = set().union(*(_varying_axes(x) for x in inputs)) - _varying_axes(value)
  return jax.lax.pcast(value, tuple(sorted(axes)), to='varying') if axes else value


def _varying_axes(x: jax.Array) -> set[str]:
  aval = jax.typeof(x)
  manual = getattr(aval, 'manual_axis_type', None)  # this jax; older releases call it vma
  return set(manual.varying if manual is not None else getattr(aval, 'vma', ()))


def _is_target(labels: jax.Array, num_columns: int) -> jax.Array:
  return jnp.arange(num_columns)[None, :] == labels[:, None]


def local_stats(
  x_n: jax.Array, w: jax.Array, labels: jax.Array, valid: jax.Array, margin: Any
) -> Stats:
  """Unchunked: materialises the (B, S) logits; differentiated by autodiff."""
  cos, logits = _logits(x_n, w, labels, valid, margin)
  m = _finite_or_zero(jax.lax.stop_gradient(jnp.max(logits, axis=-1)))
  total = jnp.sum(jnp.exp(logits - m[:, None]), axis=-1)
  # No valid column: lse = −inf, and the log's argument is kept at 1 so its gradient stays finite.
  lse = jnp.where(total > 0, m + jnp.log(jnp.where(total > 0, total, 1.0)), -jnp.inf)
  is_target = _is_target(labels, w.shape[0])
  target = jnp.sum(jnp.where(is_target, logits, 0.0), axis=-1)
  return (lse, target) + _metrics(cos, is_target, valid)


def _blocks(num_columns: int, chunk: int) -> tuple[int, int]:
  """(number of blocks, block width): the last block is shifted left to end at num_columns."""
  width = min(chunk, num_columns)
  return -(-num_columns // width), width


def _block(k: jax.Array, w: jax.Array, labels: jax.Array, valid: jax.Array, width: int):
  """Block k: its centres, labels re-indexed into it, and its mask of not-yet-seen valid columns.

  Blocks start at k·width, except the last, which starts at S − width so that every block has the
  same static shape; the columns it shares with the block before are masked out (and their labels
  dropped) so that each column counts exactly once.
  """
  num_columns = w.shape[0]
  first = k * width
  start = jnp.minimum(first, num_columns - width)
  w_k = jax.lax.dynamic_slice_in_dim(w, start, width, axis=0)
  columns = start + jnp.arange(width)
  valid_k = jax.lax.dynamic_slice_in_dim(valid, start, width) & (columns >= first)
  inside = (labels >= first) & (labels < start + width)
  labels_k = jnp.where(inside, labels - start, -1)
  return start, w_k, labels_k, valid_k


def _bind(margin: Any, rows: dict[str, jax.Array]) -> Any:
  return margin.bind(rows) if rows else margin


def _chunked_forward(x_n, w, labels, valid, rows, margin, chunk):
  num_blocks, width = _blocks(w.shape[0], chunk)
  batch = x_n.shape[0]
  margin = _bind(margin, rows)

  def step(carry, k):
    m, total, target, cos_target, hardest = carry
    _, w_k, labels_k, valid_k = _block(k, w, labels, valid, width)
    cos, logits = _logits(x_n, w_k, labels_k, valid_k, margin)
    m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
    shift = _finite_or_zero(m_new)
    # exp(m − shift) is exactly 0 while m is still −inf (nothing seen yet): no inf · 0.
    total = total * jnp.exp(m - shift) + jnp.sum(jnp.exp(logits - shift[:, None]), axis=-1)
    is_target = _is_target(labels_k, width)
    target = target + jnp.sum(jnp.where(is_target, logits, 0.0), axis=-1)
    c_t, hard = _metrics(cos, is_target, valid_k)
    return (m_new, total, target, cos_target + c_t, jnp.maximum(hardest, hard)), None

  dtype = jnp.result_type(x_n.dtype, w.dtype, jnp.float32)
  zeros = jnp.zeros((batch,), dtype)
  neg_inf = jnp.full((batch,), -jnp.inf, dtype)
  init = tuple(
    _varying_like(v, x_n, w, labels, valid) for v in (neg_inf, zeros, zeros, zeros, neg_inf)
  )
  (m, total, target, cos_target, hardest), _ = jax.lax.scan(step, init, jnp.arange(num_blocks))
  lse = jnp.where(
    total > 0, _finite_or_zero(m) + jnp.log(jnp.where(total > 0, total, 1.0)), -jnp.inf
  )
  return lse, target, cos_target, hardest


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _chunked(x_n, w, labels, valid, rows, margin, chunk):
  return _chunked_forward(x_n, w, labels, valid, rows, margin, chunk)


def _chunked_fwd(x_n, w, labels, valid, rows, margin, chunk):
  out = _chunked_forward(x_n, w, labels, valid, rows, margin, chunk)
  # Residuals are the inputs and the (B,) lse: the backward recomputes the blocks.
  return out, (x_n, w, labels, valid, rows, out[0])


def _chunked_bwd(margin, chunk, residuals, cotangents):
  x_n, w, labels, valid, rows, lse = residuals
  g_lse, g_target = cotangents[0], cotangents[1]
  num_blocks, width = _blocks(w.shape[0], chunk)
  lse_shift = _finite_or_zero(lse)

  def step(carry, k):
    dx, dw, d_rows = carry
    start, w_k, labels_k, valid_k = _block(k, w, labels, valid, width)
    block_logits = lambda x, wk, r: _logits(x, wk, labels_k, valid_k, _bind(margin, r))[1]
    logits, pullback = jax.vjp(block_logits, x_n, w_k, rows)
    # d lse / d logit_j = softmax_j over this device's columns (0 on masked, −inf, columns).
    g_logits = g_lse[:, None] * jnp.exp(logits - lse_shift[:, None])
    g_logits = g_logits + jnp.where(_is_target(labels_k, width), g_target[:, None], 0.0)
    dx_k, dw_k, d_rows_k = pullback(g_logits.astype(logits.dtype))
    # Add, not overwrite: the shifted last block overlaps the one before, whose rows it leaves at
    # a zero gradient (their columns are masked in this block).
    dw = jax.lax.dynamic_update_slice_in_dim(
      dw, jax.lax.dynamic_slice_in_dim(dw, start, width, axis=0) + dw_k, start, axis=0
    )
    return (dx + dx_k, dw, jax.tree.map(jnp.add, d_rows, d_rows_k)), None

  inputs = (x_n, w, labels, valid, g_lse, g_target)
  zeros = lambda v: _varying_like(jnp.zeros_like(v), *inputs)
  init = (zeros(x_n), zeros(w), jax.tree.map(zeros, rows))
  (dx, dw, d_rows), _ = jax.lax.scan(step, init, jnp.arange(num_blocks))
  return dx, dw, None, None, d_rows


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def chunked_local_stats(
  x_n: jax.Array,
  w: jax.Array,
  labels: jax.Array,
  valid: jax.Array,
  margin: Any,
  chunk: int,
  rows: dict[str, jax.Array] | None = None,
) -> Stats:
  """`local_stats` computed `chunk` columns at a time, forward and backward (see module doc).

  rows: a row margin's per-row parameters over this batch (`margin.prepare`), bound in every
  block; `margin` is then the unbound margin."""
  if chunk <= 0:
    raise ValueError(f'chunk={chunk} must be positive (0 means unchunked: use local_stats)')
  # Varying like the features: inside shard_map their cotangent is per device, and the
  # transpose of this cast sums it over the devices (as autodiff does for the unchunked path).
  rows = jax.tree.map(lambda r: _varying_like(r, x_n, w), dict(rows or {}))
  return _chunked(x_n, w, labels, valid, rows, margin, int(chunk))
