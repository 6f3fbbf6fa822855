"""faces.images.load_image and list_photos on real files of every awkward kind, written here."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
from PIL import Image

from arcface_jax.faces.images import ImageError, list_photos, load_image

ORIENTATION = 0x0112  # the EXIF tag


def _pattern(height=40, width=64):
  """An asymmetric RGB image of flat blocks (survives JPEG almost unchanged)."""
  image = np.zeros((height, width, 3), np.uint8)
  image[: height // 2, : width // 4] = (255, 0, 0)
  image[height // 2 :, width // 2 :] = (0, 0, 255)
  image[: height // 4, width // 2 :] = (0, 255, 0)
  return image


@pytest.mark.parametrize(
  'orientation, upright',
  [
    (3, lambda a: np.rot90(a, 2)),  # stored upside down
    (6, lambda a: np.rot90(a, -1)),  # stored needing a 90° clockwise turn
    (8, lambda a: np.rot90(a, 1)),  # 90° counter-clockwise
    (2, lambda a: a[:, ::-1]),  # mirrored
  ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, upright):
  stored = _pattern()
  exif = Image.Exif()
  exif[ORIENTATION] = orientation
  path = tmp_path / 'phone.jpg'
  Image.fromarray(stored).save(path, quality=95, exif=exif)
  loaded = load_image(str(path))
  expected = upright(stored)
  assert loaded.shape == expected.shape and loaded.dtype == np.uint8
  assert np.abs(loaded.astype(int) - expected).mean() < 4  # JPEG rounding only


def test_grey_rgba_16bit_and_palette_files(tmp_path):
  grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
  cv2.imwrite(str(tmp_path / 'grey.png'), grey)
  np.testing.assert_array_equal(
    load_image(str(tmp_path / 'grey.png')), np.repeat(grey[..., None], 3, axis=2)
  )

  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[..., 0] = 200
  rgba[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'rgba.png')
  loaded = load_image(str(tmp_path / 'rgba.png'))
  np.testing.assert_array_equal(loaded[:2], np.broadcast_to([200, 0, 0], (2, 4, 3)))
  np.testing.assert_array_equal(loaded[2:], np.full((2, 4, 3), 255))  # over white

  deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 20) * 257  # 16-bit grey
  cv2.imwrite(str(tmp_path / 'deep.png'), deep)
  np.testing.assert_array_equal(load_image(str(tmp_path / 'deep.png'))[..., 0], deep // 257)

  deep_rgb = np.stack([deep, deep // 2, deep // 4], axis=2)  # 16-bit colour (BGR on disk)
  cv2.imwrite(str(tmp_path / 'deep_rgb.png'), deep_rgb[..., ::-1])
  loaded = load_image(str(tmp_path / 'deep_rgb.png')).astype(int)
  assert np.abs(loaded - deep_rgb // 257).max() <= 1

  palette = Image.fromarray(_pattern()).convert('P', palette=Image.Palette.ADAPTIVE, colors=4)
  palette.save(tmp_path / 'palette.gif')
  np.testing.assert_array_equal(load_image(str(tmp_path / 'palette.gif')), _pattern())


def test_arrays_are_taken_as_rgb_and_converted():
  rgb = _pattern()
  np.testing.assert_array_equal(load_image(rgb), rgb)
  np.testing.assert_array_equal(load_image(rgb[..., 0]), np.repeat(rgb[..., :1], 3, axis=2))
  rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
  np.testing.assert_array_equal(load_image(rgba), rgb)
  np.testing.assert_array_equal(load_image(rgb.astype(np.uint16) * 257), rgb)
  with pytest.raises(ImageError, match='float32'):
    load_image(rgb.astype(np.float32))
  with pytest.raises(ImageError, match='shape'):
    load_image(np.zeros((4, 4, 2), np.uint8))


def test_bad_files_are_errors_naming_them(tmp_path):
  good = tmp_path / 'good.jpg'
  Image.fromarray(_pattern(200, 300)).save(good, quality=90)
  data = good.read_bytes()
  (tmp_path / 'truncated.jpg').write_bytes(data[: len(data) // 3])
  (tmp_path / 'notes.jpg').write_text('this is text, not a photo')
  (tmp_path / 'empty.png').write_bytes(b'')
  for name, reason in [
    ('truncated.jpg', 'corrupt'),
    ('notes.jpg', 'not an image'),
    ('empty.png', 'not an image'),
    ('missing.png', 'no such file'),
  ]:
    with pytest.raises(ImageError, match=f'{name}: {reason}'):
      load_image(str(tmp_path / name))
  with pytest.raises(ImageError, match='is a folder'):
    load_image(str(tmp_path))


def test_very_large_photos(tmp_path, monkeypatch):
  big = np.zeros((3000, 4000, 3), np.uint8)  # 12 megapixels: kept at full resolution
  big[1000:2000, 1500:2500] = 255
  cv2.imwrite(str(tmp_path / 'big.png'), big)
  loaded = load_image(str(tmp_path / 'big.png'))
  assert loaded.shape == (3000, 4000, 3) and loaded[1500, 2000].tolist() == [255, 255, 255]
  # Beyond Pillow's decompression-bomb guard (lowered here): refused, with what to do.
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1_000_000)
  with pytest.raises(ImageError, match='big.png: too large.*downscale'):
    load_image(str(tmp_path / 'big.png'))


def test_list_photos_recursive_skips_hidden_and_counts_other_files(tmp_path):
  for relative in [
    'alice/1.jpg',
    'alice/trip/2.PNG',
    'bob/3.jpeg',
    '.hidden/4.jpg',
    'bob/.5.jpg',
    'bob/readme.txt',
    'top.bmp',
  ]:
    os.makedirs(tmp_path / os.path.dirname(relative), exist_ok=True)
    (tmp_path / relative).write_bytes(b'x')
  listing = list_photos([str(tmp_path), str(tmp_path / 'bob' / 'readme.txt')])
  found = [(os.path.relpath(p, tmp_path), r) for p, r in listing.photos]
  assert found == [
    ('top.bmp', ''),
    ('alice/1.jpg', 'alice'),
    ('alice/trip/2.PNG', 'alice/trip'),
    ('bob/3.jpeg', 'bob'),
    ('bob/readme.txt', ''),
  ]
  assert listing.not_photos == [str(tmp_path / 'bob' / 'readme.txt')]
  with pytest.raises(ImageError, match='nowhere: no such file or folder'):
    list_photos([str(tmp_path / 'nowhere')])
