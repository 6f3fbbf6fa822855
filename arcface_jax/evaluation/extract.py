"""Embedding extraction for evaluation: flip-sum, XNorm, batched across the mesh.

Every image is embedded with its horizontal flip and the two embeddings are summed (normalising
is the protocol's job). The last batch is padded to the full batch so one compiled program serves
every batch, and the padding rows are dropped, so nothing is lost or counted twice.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import numpy as np

from arcface_jax import parallel


def extract_embeddings(apply_fn: Callable[[jax.Array], jax.Array], images: np.ndarray, *,
                       batch_size: int, mean: float = 127.5, std: float = 127.5,
                       flip: bool = True, mesh: jax.sharding.Mesh | None = None
                       ) -> tuple[np.ndarray, float]:
  """(embeddings float32 (N, D) = emb + emb_flip, XNorm = mean L2 norm of the raw embeddings)."""
  images = np.asarray(images)
  num = len(images)
  devices = mesh.size if mesh is not None else 1
  batch = max(devices, math.ceil(batch_size / devices) * devices)
  chunks, norm_sum, norm_count = [], 0.0, 0
  for start in range(0, num, batch):
    chunk = images[start:start + batch]
    real = len(chunk)
    if real < batch:
      chunk = np.concatenate([chunk, np.zeros((batch - real,) + chunk.shape[1:], chunk.dtype)])
    x = (chunk.astype(np.float32) - np.float32(mean)) / np.float32(std)
    views = [x, np.ascontiguousarray(x[:, :, ::-1])] if flip else [x]
    total = None
    for view in views:
      if mesh is not None:
        view = jax.device_put(view, parallel.batch_sharding(mesh))
      emb = np.asarray(apply_fn(view), np.float32)[:real]
      norm_sum += float(np.linalg.norm(emb, axis=1).sum())
      norm_count += real
      total = emb if total is None else total + emb
    chunks.append(total)
  embeddings = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
  return embeddings, norm_sum / max(norm_count, 1)
