"""Photos in: a file or an array → RGB uint8 (H, W, 3), and folders listed recursively.

Files are read with Pillow, which knows the formats people's photos come in (JPEG, PNG, BMP,
WebP, TIFF, GIF) and their EXIF orientation tag: a phone photo stored sideways with "rotate 90°"
in its EXIF is turned upright, as every photo viewer shows it. Other layouts are converted:

- greyscale (and 1-bit) → the grey value in all three channels;
- RGBA, LA and palette images with transparency → composited over white (a transparent
  background shows as the page a viewer would show it on, not as whatever colour hides under it);
- 16-bit (PNG/TIFF) → the top 8 bits; CMYK, YCbCr and the rest → Pillow's RGB conversion.

Very large photos are loaded at full resolution, so boxes and landmarks are in the photo's own
pixels and crops are aligned from its full detail; the detector first shrinks a photo whose longer
side exceeds 1,600 px (`MTCNN(max_side=...)`) and maps its results back. Photos above Pillow's
decompression-bomb guard (about 179 megapixels) are refused with an `ImageError` that says to
downscale them.

A file that is missing, not an image, truncated or otherwise undecodable is an `ImageError` naming
the file; folder runs skip it and count it (`list_photos` + the caller's summary). Paths may be
local or URIs (`gs://bucket/photos/a.jpg`): a URI's bytes are read through `epath`.
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings
from typing import Iterable, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from arcface_jax import paths as uri_paths

PHOTO_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff', '.gif')
ImageInput = Union[str, os.PathLike, np.ndarray]


class ImageError(ValueError):
  """A photo cannot be used; the message names the file (or says it was an array)."""


def _to_rgb(image: Image.Image) -> np.ndarray:
  """RGB uint8 (H, W, 3) from any Pillow mode."""
  mode = image.mode
  if mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I'):
    # 16-bit greyscale: Pillow's convert('L') clips at 255 instead of scaling, so scale here.
    values = np.asarray(image).astype(np.uint32)
    maximum = 65535 if mode.startswith('I;16') or values.max(initial=0) > 255 else 255
    grey = (values * 255 // maximum).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)
  if mode == 'F':
    values = np.asarray(image, np.float32)
    scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0
    grey = np.clip(values * scale, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)
  if mode == 'P' and 'transparency' in image.info:
    image, mode = image.convert('RGBA'), 'RGBA'
  if mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La'):
    rgba = image.convert('RGBA')
    background = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
    image = Image.alpha_composite(background, rgba)
  return np.asarray(image.convert('RGB'), np.uint8).copy()


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
  if array.dtype == np.uint16:
    array = (array >> 8).astype(np.uint8)
  if array.dtype != np.uint8:
    raise ImageError(
      f'image array has dtype {array.dtype}; expected uint8 RGB (H, W, 3) (0..255), or uint16'
    )
  if array.ndim == 2:
    return np.repeat(array[..., None], 3, axis=2)
  if array.ndim == 3 and array.shape[2] == 1:
    return np.repeat(array, 3, axis=2)
  if array.ndim == 3 and array.shape[2] == 4:
    alpha = array[..., 3:].astype(np.float32) / 255.0
    over_white = array[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.round(over_white).astype(np.uint8)
  if array.ndim == 3 and array.shape[2] == 3:
    return np.ascontiguousarray(array)
  raise ImageError(
    f'image array has shape {array.shape}; expected (H, W, 3) RGB, (H, W) grey or (H, W, 4) RGBA'
  )


def load_image(image: ImageInput) -> np.ndarray:
  """RGB uint8 (H, W, 3) from a file path or an array; `ImageError` naming the file if unusable.

  Arrays are taken as RGB (not OpenCV's BGR); grey (H, W), RGBA and uint16 arrays are converted.
  """
  if isinstance(image, np.ndarray):
    rgb = _array_to_rgb(image)
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
      raise ImageError(f'image array has shape {image.shape}: no pixels')
    return rgb
  if not isinstance(image, (str, os.PathLike)):
    raise ImageError(
      f'expected a file path or an (H, W, 3) uint8 array, got {type(image).__name__}'
    )
  path = os.fspath(image)
  if uri_paths.is_dir(path):
    raise ImageError(f'{path} is a folder, not a photo')
  try:
    remote = uri_paths.is_remote(path)
    source = io.BytesIO(uri_paths.read_bytes(path)) if remote else path
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      with Image.open(source) as opened:
        opened.load()  # decode now, so a truncated file fails here and not later
        upright = ImageOps.exif_transpose(opened)
        return _to_rgb(upright)
  except FileNotFoundError:
    raise ImageError(f'{path}: no such file') from None
  except Image.DecompressionBombError as e:
    raise ImageError(f'{path}: too large to decode safely ({e}); downscale it first') from None
  except UnidentifiedImageError:
    raise ImageError(f'{path}: not an image file (or a format Pillow cannot read)') from None
  except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated or corrupt data
    raise ImageError(f'{path}: corrupt or unreadable image ({e})') from None


@dataclasses.dataclass
class PhotoList:
  """What `list_photos` found: photos (in order) and files passed over."""

  photos: list[tuple[str, str]]  # (path, folder relative to the argument it was found under)
  not_photos: list[str]  # files inside folders without a photo extension


def list_photos(paths: Iterable[str | os.PathLike]) -> PhotoList:
  """Files as given, and every photo under each folder (recursively, sorted; hidden skipped).

  A file named on the command line is always tried, whatever its extension; inside folders only
  files with a photo extension are, the rest are counted in `not_photos`. A missing path is an
  `ImageError` (a usage error: nothing was read yet).
  """
  photos, not_photos = [], []
  for given in paths:
    path = os.fspath(given)
    if uri_paths.is_file(path):
      photos.append((path, ''))
      continue
    if not uri_paths.is_dir(path):
      raise ImageError(f'{path}: no such file or folder')
    for root, dirs, files in _walk(path):
      dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
      relative = os.path.relpath(root, path)
      relative = '' if relative == os.curdir else relative
      for name in sorted(files):
        if name.startswith('.'):
          continue
        full = uri_paths.join(root, name)
        if name.lower().endswith(PHOTO_EXTENSIONS):
          photos.append((full, relative))
        else:
          not_photos.append(full)
  return PhotoList(photos, not_photos)


def _walk(top: str) -> Iterable[tuple[str, list[str], list[str]]]:
  """`os.walk` (top-down: `dirs` may be pruned in place) locally, `epath` listings for a URI."""
  if not uri_paths.is_remote(top):
    yield from os.walk(top)
    return
  pending = [top]
  while pending:
    root = pending.pop(0)
    entries = uri_paths.list_dir(root)
    dirs = [name for name, is_dir, _ in entries if is_dir]
    yield root, dirs, [name for name, is_dir, _ in entries if not is_dir]
    pending[:0] = [uri_paths.join(root, name) for name in dirs]


def describe(image: ImageInput, index: int | None = None) -> str:
  """How to name an input in messages and JSON: its path, or `array[i]`."""
  if isinstance(image, (str, os.PathLike)):
    return os.fspath(image)
  return 'array' if index is None else f'array[{index}]'
