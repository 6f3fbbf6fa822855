"""Class centres read from a file (config.head.init_centres), for the dense and sharded heads.

Both `losses.Objective` and `parallel.ModelParallelObjective` start their centres from
N(0, init_std²) draws unless config.head.init_centres names a (C, D) or (C, K, D) .npy; this is
where that file is read and checked, below both heads so neither imports the other.
"""

from __future__ import annotations

import io

import numpy as np

from arcface_jax import paths


def initial_centres(path: paths.PathLike, shape: tuple[int, ...]) -> np.ndarray:
  """The centres in the .npy at `path` (config.head.init_centres, local or gs://), checked
  against `shape`."""
  try:
    centres = np.load(io.BytesIO(paths.read_bytes(path)) if paths.is_remote(path) else path)
  except (OSError, ValueError) as e:
    raise ValueError(f'config.head.init_centres={path!r}: cannot read it as a .npy ({e})') from None
  if centres.shape != tuple(shape):
    raise ValueError(
      f'config.head.init_centres={path!r} holds {centres.shape}, the head needs '
      f'{tuple(shape)} (classes, [sub-centres,] embedding_dim)'
    )
  return centres.astype(np.float32)
