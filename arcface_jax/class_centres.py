"""Class centres read from a file (config.head.init_centres), for the dense and sharded heads.

Both `losses.Objective` and `parallel.ModelParallelObjective` start their centres from
N(0, init_std²) draws unless config.head.init_centres names a (C, D) or (C, K, D) .npy; this is
where that file is read and checked, below both heads so neither imports the other.
"""

from __future__ import annotations

import numpy as np


def initial_centres(path: str, shape: tuple[int, ...]) -> np.ndarray:
  """The centres in the .npy at `path` (config.head.init_centres), checked against `shape`."""
  try:
    centres = np.load(path)
  except (OSError, ValueError) as e:
    raise ValueError(f'config.head.init_centres={path!r}: cannot read it as a .npy ({e})') from None
  if centres.shape != tuple(shape):
    raise ValueError(
      f'config.head.init_centres={path!r} holds {centres.shape}, the head needs '
      f'{tuple(shape)} (classes, [sub-centres,] embedding_dim)'
    )
  return centres.astype(np.float32)
