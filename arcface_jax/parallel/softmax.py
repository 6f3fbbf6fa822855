"""The model-parallel margin softmax: class centres split by class over the mesh's `data` axis.

Device d of W owns the contiguous block of rows [d·C_local, (d+1)·C_local) of the (padded) centre
matrix. In one step, inside `jax.shard_map`, every device
  1. all-gathers the global batch's embeddings (B_g, D) and labels (the transpose of the gather is
     a reduce-scatter, so each embedding's gradient returns to the device that computed it);
  2. optionally keeps only a Partial FC sample of its centres (partial_fc.py);
  3. computes cosine logits of the normalised embeddings against its normalised centres, with the
     margin applied to the targets it owns (label −1 on rows whose class lives elsewhere), either
     all at once (fused.py for the CombinedMargin family, else chunked.local_stats) or in chunks
     with an online softmax (chunked.py);
  4. combines its per-row log-sum-exp with the others' (max-reduce, then sum-reduce) and takes the
     target logit from its owner (sum-reduce), so every device holds the same mean loss.

Padding: C need not divide by W. The centre matrix is padded with zero rows to C_pad, a multiple
of W; padded columns are masked to −inf, so they never enter the softmax and get zero gradient.
`margin_softmax_loss` pads a plain (C, D) matrix itself; the trainer's head stores the padded
matrix (head.py) so that no step copies it.

Margins with per-row parameters (CurricularFace's t and threshold, MagFace's and AdaFace's
norm-dependent margins, ElasticFace's draws) get them from the caller as `margin_rows`, computed
once over the global batch (head.py), and every device binds them (`margin.bind(rows)`; the
chunked path binds them in every block), so the result never depends on how the batch or the
classes are split.

SphereFace's A-softmax scales each row by its feature norm and anneals a blend with the training
step; it is not offered here (a clear ValueError) — train it with head.model_parallel=False, or
use its real-valued variant `combined` m1=1.35, which works.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from arcface_jax.parallel import chunked, fused, partial_fc
from arcface_jax.parallel.mesh import DATA_AXIS


class MarginSoftmaxOutput(NamedTuple):
  loss: jax.Array  # scalar: mean over the global batch, replicated
  metrics: dict[str, jax.Array]  # theta_target_deg, cos_target, cos_hardest_negative (replicated)
  sampled: jax.Array  # (C_pad,) bool, sharded like the centres' rows: centres used this step


def padded_size(num_classes: int, multiple: int) -> int:
  """num_classes rounded up to a multiple of `multiple`."""
  return -(-num_classes // multiple) * multiple


def check_margin(margin: Any) -> None:
  """Raises a ValueError for margins the model-parallel softmax cannot apply."""
  if getattr(margin, 'uses_feature_norm', False):
    raise ValueError(
      'the model-parallel margin softmax uses normalised features and a fixed scale; SphereFace '
      "(A-softmax) multiplies logits by each feature's norm and is not supported there: set "
      "head.model_parallel=False, or use loss.name='combined' with m1=1.35 (SphereFace 1.35)"
    )
  if not callable(margin) or not hasattr(margin, 'scale'):
    raise ValueError(f'{margin!r} is not a margin from arcface_jax.margins')


def _device_loss(
  w_local, x_local, y_local, key, rows, *, margin, num_classes, num_sample, chunk, axis
):
  """The per-device body run by shard_map (see the module docstring for the steps)."""
  x = jax.lax.all_gather(x_local, axis, tiled=True)
  y = jax.lax.all_gather(y_local, axis, tiled=True)
  num_local = w_local.shape[0]
  device = jax.lax.axis_index(axis)
  first = device * num_local
  valid = first + jnp.arange(num_local) < num_classes
  owned = (y >= first) & (y < first + num_local)
  labels = jnp.where(owned, y - first, -1)

  if num_sample < num_local:
    # Independent draws per device and per step (the caller folds the step into the key).
    index, labels = partial_fc.sample_classes(
      jax.random.fold_in(key, device), labels, valid, num_sample
    )
    w_used, valid = w_local[index], valid[index]
    sampled = jnp.zeros((num_local,), bool).at[index].set(True)
  else:
    w_used = w_local
    sampled = valid

  x_n = chunked.l2_normalize(x)
  if chunk and chunk < w_used.shape[0]:
    stats = chunked.chunked_local_stats(x_n, w_used, labels, valid, margin, chunk, rows=rows)
  elif not rows and fused.supports(margin, w_used):
    stats = fused.fused_local_stats(x_n, w_used, labels, valid, margin)
  else:
    stats = chunked.local_stats(x_n, w_used, labels, valid, margin.bind(rows) if rows else margin)
  lse_local, target_local, cos_target_local, hardest_local = stats

  # Global log-sum-exp: shift by the largest device's value (pmax has no derivative, and the
  # shift needs none: it cancels), then sum the shifted exponentials over devices.
  shift = jax.lax.pmax(jax.lax.stop_gradient(lse_local), axis)
  shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
  lse = shift + jnp.log(jax.lax.psum(jnp.exp(lse_local - shift), axis))
  target = jax.lax.psum(target_local, axis)
  loss = jnp.mean(lse - target)

  # Metrics carry no gradient (the chunked kernel's outputs would otherwise bring tangents).
  cos_target = jax.lax.psum(jax.lax.stop_gradient(cos_target_local), axis)
  hardest = jax.lax.pmax(jax.lax.stop_gradient(hardest_local), axis)
  metrics = {
    'theta_target_deg': jnp.mean(jnp.degrees(jnp.arccos(jnp.clip(cos_target, -1.0, 1.0)))),
    'cos_target': jnp.mean(cos_target),
    'cos_hardest_negative': jnp.mean(hardest),
  }
  return loss, metrics, sampled


def margin_softmax(
  weight: jax.Array,
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  margin: Any,
  mesh: Mesh,
  num_classes: int | None = None,
  sample_rate: float = 1.0,
  key: jax.Array | None = None,
  chunk: int = 0,
  axis: str = DATA_AXIS,
  margin_rows: dict[str, jax.Array] | None = None,
) -> MarginSoftmaxOutput:
  """The model-parallel margin softmax on an already padded centre matrix.

  weight: (C_pad, D) with C_pad a multiple of the mesh size; rows ≥ num_classes are padding.
  embeddings (B, D), labels (B,) in [0, num_classes): the global batch, B a multiple of the mesh
  size. sample_rate < 1 needs `key` (fold the step into it for a fresh draw each step).
  chunk > 0: columns per block of the online softmax (bounded memory, recomputed backward).
  margin_rows: the margin's per-row parameters over the global batch (`margin.prepare`), bound on
  every device (and in every block when chunked).
  """
  check_margin(margin)
  num_devices = mesh.shape[axis]
  num_padded = weight.shape[0]
  num_classes = num_padded if num_classes is None else int(num_classes)
  if num_padded % num_devices or not 0 < num_classes <= num_padded:
    raise ValueError(
      f'weight has {num_padded} rows: it must be padded to a multiple of the '
      f'{num_devices} devices and hold num_classes={num_classes} (see padded_size)'
    )
  batch = embeddings.shape[0]
  if batch % num_devices:
    raise ValueError(f'global batch {batch} must be a multiple of the {num_devices} devices')
  num_local = num_padded // num_devices
  num_sample = partial_fc.num_sampled(sample_rate, num_local, batch)
  if num_sample < num_local and key is None:
    raise ValueError(f'sample_rate={sample_rate} < 1 draws negatives at random: pass key=')
  if key is None:
    key = jax.random.key(0)  # unused
  elif not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)

  rows = dict(margin_rows or {})
  body = functools.partial(
    _device_loss,
    margin=margin,
    num_classes=num_classes,
    num_sample=num_sample,
    chunk=int(chunk),
    axis=axis,
  )
  run = jax.shard_map(
    body,
    mesh=mesh,
    in_specs=(P(axis), P(axis, None), P(axis), P(), P()),
    out_specs=(P(), P(), P(axis)),
  )
  loss, metrics, sampled = run(weight, embeddings, labels.astype(jnp.int32), key, rows)
  return MarginSoftmaxOutput(loss, metrics, sampled)


def margin_softmax_loss(
  weight: jax.Array,
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  margin: Any,
  mesh: Mesh,
  sample_rate: float = 1.0,
  key: jax.Array | None = None,
  chunk: int = 0,
) -> jax.Array:
  """Mean margin-softmax loss over the global batch, with the centres split over `mesh`.

  weight (C, D) and embeddings (B, D) are plain global arrays; C need not divide by the device
  count (padded and masked here). Gradients flow to both. See `margin_softmax` for the options.
  """
  num_classes = weight.shape[0]
  num_padded = padded_size(num_classes, mesh.shape[DATA_AXIS])
  padded = jnp.pad(weight, ((0, num_padded - num_classes), (0, 0)))
  return margin_softmax(
    padded,
    embeddings,
    labels,
    margin=margin,
    mesh=mesh,
    num_classes=num_classes,
    sample_rate=sample_rate,
    key=key,
    chunk=chunk,
  ).loss
