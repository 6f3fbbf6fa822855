"""Image normalisation on the device: uint8 RGB batches → float32 (x − mean) / std.

The input pipeline hands out uint8 batches, which cross to the devices at a quarter of float32's
bytes; the jitted program that consumes them normalises them, where XLA fuses the subtraction and
division into the first convolution's input instead of a separate pass over the batch on the host.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def per_channel(value: float | Sequence[float]) -> np.ndarray:
  """A scalar or one value per RGB channel as float32 (1,) or (3,): broadcasts over channels."""
  array = np.asarray(value, np.float32).reshape(-1)
  if array.size not in (1, 3):
    raise ValueError(
      f'normalisation constant {value!r}: expected one number or one per RGB channel (3)'
    )
  return array


def normalise_images(
  images: jax.Array, mean: float | Sequence[float], std: float | Sequence[float]
) -> jax.Array:
  """uint8 (or other integer) images → float32 (x − mean) / std; call it inside jit.

  Floating-point images are taken as normalised already (a caller that prepared them itself) and
  are only cast to float32.
  """
  if jnp.issubdtype(images.dtype, jnp.floating):
    return images.astype(jnp.float32)
  return (images.astype(jnp.float32) - per_channel(mean)) / per_channel(std)
