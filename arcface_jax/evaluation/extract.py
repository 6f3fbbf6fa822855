"""Embedding extraction for evaluation: flip-sum, XNorm, batched across the mesh.

Every image is embedded with its horizontal flip and the two embeddings are summed (normalising
is the protocol's job). Images travel to the devices as uint8 (a quarter of the bytes of float32)
and are normalised and flipped there. Each batch is a global array sharded over the mesh's `data`
axis, built from the host's copy of the images with `make_array_from_callback`, so the same code
serves one process and many (every process holds the whole evaluation set). The last batch is
padded to the full batch so one compiled program serves every batch, and its padding rows are
dropped before anything is kept or counted. The next batch is dispatched before the previous
one's results are fetched, so host work overlaps device work.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from arcface_jax.parallel.mesh import DATA_AXIS


@functools.partial(jax.jit, static_argnames=('flip',))
def _normalise(
  images: jax.Array, mean: jax.Array, std: jax.Array, flip: bool
) -> tuple[jax.Array, ...]:
  """(x - mean) / std in float32, and its mirror image (width is axis 2) when `flip`."""
  x = (images.astype(jnp.float32) - mean) / std
  return (x, jnp.flip(x, axis=2)) if flip else (x,)


@functools.lru_cache(maxsize=None)
def _combiner(out_sharding: NamedSharding | None) -> Callable[..., tuple[jax.Array, jax.Array]]:
  """Jitted (emb + emb_flip, per-row sum of the raw norms); replicated so every host can read."""

  def combine(*views: jax.Array) -> tuple[jax.Array, jax.Array]:
    views32 = [v.astype(jnp.float32) for v in views]
    return sum(views32[1:], views32[0]), sum(jnp.linalg.norm(v, axis=1) for v in views32)

  return jax.jit(combine, out_shardings=out_sharding)


def _per_channel(value: float | Sequence[float]) -> np.ndarray:
  return np.asarray(value, np.float32).reshape(-1)  # (1,) or (3,): broadcasts over channels


def extract_embeddings(
  apply_fn: Callable[[jax.Array], jax.Array],
  images: np.ndarray,
  *,
  batch_size: int,
  mean: float | Sequence[float] = 127.5,
  std: float | Sequence[float] = 127.5,
  flip: bool = True,
  mesh: jax.sharding.Mesh | None = None,
) -> tuple[np.ndarray, float]:
  """Embeds `images` (N, H, W, 3), usually uint8 RGB, in batches.

  `apply_fn` maps float32 normalised (B, H, W, 3) to (B, D). Returns (embeddings float32 (N, D)
  = emb + emb_flip, not normalised; XNorm = mean L2 norm of the raw embeddings of both views).
  With a mesh, each batch is sharded over its `data` axis and `batch_size` is rounded up to a
  multiple of the device count.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'images must be (N, H, W, 3), got shape {images.shape}')
  num = len(images)
  if num == 0:
    raise ValueError('no images to embed')
  if batch_size < 1:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  devices = mesh.devices.size if mesh is not None else 1
  batch = math.ceil(batch_size / devices) * devices
  # A set smaller than one batch is padded only up to the device multiple, not to batch_size.
  batch = min(batch, math.ceil(num / devices) * devices)
  in_sharding = NamedSharding(mesh, P(DATA_AXIS)) if mesh is not None else None
  combine = _combiner(NamedSharding(mesh, P()) if mesh is not None else None)
  mean_arr, std_arr = _per_channel(mean), _per_channel(std)

  def place(chunk: np.ndarray) -> jax.Array:
    if in_sharding is None:
      return jnp.asarray(chunk)
    return jax.make_array_from_callback(chunk.shape, in_sharding, lambda index: chunk[index])

  embeddings: np.ndarray | None = None
  norm_sum = 0.0

  def collect(start: int, real: int, summed: jax.Array, norms: jax.Array) -> None:
    nonlocal embeddings, norm_sum
    rows = np.asarray(summed)[:real]
    if embeddings is None:
      embeddings = np.empty((num, rows.shape[1]), np.float32)
    embeddings[start : start + real] = rows
    norm_sum += float(np.asarray(norms, np.float64)[:real].sum())

  pending: tuple[int, int, jax.Array, jax.Array] | None = None
  for start in range(0, num, batch):
    chunk = images[start : start + batch]
    real = len(chunk)
    if real < batch:
      pad = np.zeros((batch - real,) + chunk.shape[1:], chunk.dtype)
      chunk = np.concatenate([chunk, pad])
    views = _normalise(place(chunk), mean_arr, std_arr, flip=flip)
    summed, norms = combine(*(apply_fn(view) for view in views))
    if pending is not None:  # fetch the previous batch only now that this one is queued
      collect(*pending)
    pending = (start, real, summed, norms)
  assert pending is not None  # num > 0: the loop ran at least once
  collect(*pending)
  assert embeddings is not None
  return embeddings, norm_sum / (num * (2 if flip else 1))
