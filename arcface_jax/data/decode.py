"""Encoded image bytes → RGB uint8, and the one resize rule, shared by every source and set.

OpenCV's `imdecode` is about twice as fast as PIL on the small JPEGs face datasets hold, so it is
the decoder; it returns BGR, which is converted here, once, so every source hands out RGB.
`resize` is how training, evaluation and the figures bring an image to the model's size, so the
network sees the same interpolation everywhere.
"""

from __future__ import annotations

import cv2
import numpy as np

from arcface_jax.data.errors import CorruptSampleError

# Leading bytes of the formats the sources accept: a cheap test of "is this an image at all"
# that does not decode (used when indexing or packing millions of files).
_SIGNATURES = (b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n', b'BM')


def looks_like_image(head: bytes) -> bool:
  """True if `head` (the first bytes of a file) starts like a JPEG, PNG or BMP."""
  return any(head.startswith(signature) for signature in _SIGNATURES)


def decode_image(
  data: bytes | bytearray | memoryview | np.ndarray, key: object = None
) -> np.ndarray:
  """RGB uint8 (H, W, 3) from JPEG/PNG/BMP bytes; grey and RGBA images become 3-channel RGB.

  Raises `CorruptSampleError(key, ...)` when the bytes are empty or do not decode.
  """
  buffer = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
  if buffer.size == 0:
    raise CorruptSampleError(key, 'empty image bytes')
  # IMREAD_COLOR drops alpha and expands grey to three channels, so the shape is always (H, W, 3).
  image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
  if image is None:
    raise CorruptSampleError(key, f'{buffer.size} image bytes do not decode as JPEG/PNG/BMP')
  return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """`image` at size=(H, W): INTER_AREA when shrinking (no aliasing), bilinear when enlarging;
  returned as is when it already has that size."""
  if image.shape[:2] == tuple(size):
    return image
  shrink = image.shape[0] > size[0] or image.shape[1] > size[1]
  return cv2.resize(
    image, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
  )


def center_crop_square(image: np.ndarray) -> np.ndarray:
  """The largest centred square of `image` (H, W, ...): rows or columns cut equally from both
  sides (the odd one from the bottom / right); a square image is returned as is.

  Cropping rather than padding or stretching: face crops, aligned or detected, are centred on the
  face, so the cut borders are background or hair, while stretching would change the face's
  proportions the model learns and padding would spend pixels on a border it never sees in
  aligned crops.
  """
  height, width = image.shape[:2]
  if height == width:
    return image
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  return image[top : top + side, left : left + side]


def encode_image(image: np.ndarray, extension: str = '.png', quality: int = 95) -> bytes:
  """RGB uint8 (H, W, 3) → encoded bytes (PNG lossless by default, or '.jpg' at `quality`)."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'expected an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}')
  params = [cv2.IMWRITE_JPEG_QUALITY, quality] if extension.lower() in ('.jpg', '.jpeg') else []
  ok, data = cv2.imencode(extension, np.ascontiguousarray(image[..., ::-1]), params)
  if not ok:
    raise ValueError(f'OpenCV cannot encode an image as {extension}')
  return data.tobytes()
