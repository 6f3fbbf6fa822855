"""Packs a folder-per-identity tree into MS1M-style RecordIO (train.rec, train.idx, property).

  python -m arcface_jax.data.pack IMAGE_DIR OUT_DIR [--no_header]

Identities are the sub-folders, labelled 0.. in sorted name order; images keep their original
encoded bytes (no re-encoding loss). The default layout has the header record and per-identity
ranges that MS1M/Glint360K files have; --no_header writes im2rec-style files (every key an image).
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

import cv2
import numpy as np
from absl import app, flags

from arcface_jax.data.errors import DatasetError
from arcface_jax.data.recordio import RecordWriter, pack_payload

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')


def list_identities(root: str) -> list[tuple[str, list[str]]]:
  """[(identity name, sorted image paths)] for every non-empty sub-folder, sorted by name."""
  if not os.path.isdir(root):
    raise DatasetError(f'{root} is not a directory of identity folders')
  identities = []
  for name in sorted(os.listdir(root)):
    folder = os.path.join(root, name)
    if not os.path.isdir(folder):
      continue
    images = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                    if f.lower().endswith(IMAGE_EXTENSIONS))
    if images:
      identities.append((name, images))
  if not identities:
    raise DatasetError(f'{root} has no identity sub-folders with images '
                       f'({", ".join(IMAGE_EXTENSIONS)})')
  return identities


def pack_folder(image_dir: str, out_dir: str, *, header: bool = True) -> int:
  """Writes the RecordIO files; returns the number of images packed."""
  identities = list_identities(image_dir)
  os.makedirs(out_dir, exist_ok=True)
  first_image = cv2.imread(identities[0][1][0])
  height, width = first_image.shape[:2] if first_image is not None else (112, 112)
  num_images = sum(len(images) for _, images in identities)
  with RecordWriter(os.path.join(out_dir, 'train.rec'),
                    os.path.join(out_dir, 'train.idx')) as writer:
    key = 1 if header else 0
    if header:
      end = num_images + 1
      writer.write(0, pack_payload([end, end + len(identities)], b''))
    ranges = []
    for label, (_, images) in enumerate(identities):
      start = key
      for path in images:
        with open(path, 'rb') as f:
          writer.write(key, pack_payload(float(label), f.read(), key))
        key += 1
      ranges.append((start, key))
    if header:
      for start, stop in ranges:
        writer.write(key, pack_payload([start, stop], b'', key))
        key += 1
  with open(os.path.join(out_dir, 'property'), 'w') as f:
    f.write(f'{len(identities)},{height},{width}\n')
  return num_images


_NO_HEADER = flags.DEFINE_boolean('no_header', False, 'Write im2rec-style files without the '
                                  'header record and identity ranges.')


def main(argv: Sequence[str]) -> None:
  if len(argv) != 3:
    raise app.UsageError('usage: python -m arcface_jax.data.pack IMAGE_DIR OUT_DIR')
  try:
    count = pack_folder(argv[1], argv[2], header=not _NO_HEADER.value)
  except DatasetError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(f'packed {count} images into {argv[2]}')


if __name__ == '__main__':
  app.run(main)
