"""Writing MXNet RecordIO: train.rec + train.idx (+ property), in the face layout or im2rec's.

`write_records(out_dir, samples)` writes (label, encoded image) pairs; with `header` (the face
layout of MS1M, Glint360K, WebFace) record 0 is a header and the identity ranges follow the
images, as `data/recordio.py` documents and reads. `RecordWriter` appends raw records.
The output directory may be local or a URI (`gs://...`): files are written through `epath`.
"""

from __future__ import annotations

import array
from typing import Iterable

import numpy as np
from etils import epath

from arcface_jax import paths
from arcface_jax.data.decode import decode_image
from arcface_jax.data.recordio_format import (
  CHUNK_HEAD,
  LENGTH_MASK,
  MAGIC,
  pack_payload,
  split_payload,
)


class RecordWriter:
  """Writes `rec_path` and `idx_path`; `write(key, payload)` appends one record.

  The index is written sorted by key on `close`, so a header record written last (its counts are
  known only at the end) still comes first in the .idx, and an interrupted run leaves no index
  that would pass for a complete dataset.
  """

  def __init__(self, rec_path: paths.PathLike, idx_path: paths.PathLike):
    self._rec = epath.Path(rec_path).open('wb')
    self._idx_path = idx_path
    self._keys = array.array('q')
    self._offsets = array.array('q')

  def write(self, key: int, payload: bytes) -> None:
    self._keys.append(int(key))
    self._offsets.append(self._rec.tell())
    for cflag, part in split_payload(bytes(payload)):
      if len(part) > LENGTH_MASK:
        raise ValueError(f'record {key}: a part of {len(part)} bytes exceeds the 2^29 limit')
      self._rec.write(CHUNK_HEAD.pack(MAGIC, (cflag << 29) | len(part)) + part)
      self._rec.write(b'\0' * (-len(part) % 4))

  def close(self) -> None:
    if self._rec.closed:
      return
    self._rec.close()
    keys, offsets = np.asarray(self._keys), np.asarray(self._offsets)
    if len(np.unique(keys)) != len(keys):
      raise ValueError(f'{self._idx_path}: duplicate record keys')
    order = np.argsort(keys, kind='stable')
    epath.Path(self._idx_path).write_text(
      ''.join(f'{k}\t{o}\n' for k, o in zip(keys[order].tolist(), offsets[order].tolist()))
    )

  def __enter__(self) -> 'RecordWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def write_property(directory: paths.PathLike, num_classes: int, height: int, width: int) -> None:
  """The `property` file insightface's tools read: `num_classes,height,width`."""
  epath.Path(directory, 'property').write_text(f'{num_classes},{height},{width}\n')


def write_records(
  out_dir: paths.PathLike,
  samples: Iterable[tuple[int, bytes]],
  *,
  header: bool = True,
  num_classes: int | None = None,
  image_size: tuple[int, int] | None = None,
  name: str = 'train',
) -> int:
  """Writes out_dir/{name}.rec, {name}.idx and property from (label, encoded image) pairs.

  With `header` (the face layout), labels must arrive grouped in non-decreasing order so that each
  identity is one contiguous key range. `num_classes` defaults to max label + 1 and `image_size`
  (height, width) to the first image's. Returns the number of images written.
  """
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
  ranges: list[tuple[int, int, int]] = []  # (label, first key, one past the last key)
  key = 1 if header else 0
  first_key = key
  max_label = -1
  with RecordWriter(
    paths.join(out_dir, name + '.rec'), paths.join(out_dir, name + '.idx')
  ) as writer:
    for label, image_bytes in samples:
      label = int(label)
      if label < 0:
        raise ValueError(f'record {key}: negative label {label}')
      if header and ranges and label < ranges[-1][0]:
        raise ValueError(
          f'record {key}: label {label} after {ranges[-1][0]}; the face layout '
          'needs samples grouped by label in increasing order'
        )
      if image_size is None:
        height, width = decode_image(image_bytes, key).shape[:2]
        image_size = (height, width)
      if not ranges or ranges[-1][0] != label:
        ranges.append((label, key, key))
      writer.write(key, pack_payload(float(label), image_bytes, key))
      key += 1
      ranges[-1] = (ranges[-1][0], ranges[-1][1], key)
      max_label = max(max_label, label)
    num_images = key - first_key
    if num_images == 0:
      raise ValueError(f'no samples to write into {out_dir}')
    assert image_size is not None  # set from the first sample, and there was one
    num_classes = max_label + 1 if num_classes is None else int(num_classes)
    if max_label >= num_classes:
      raise ValueError(f'label {max_label} does not fit num_classes={num_classes}')
    if header:
      # One identity record per class; a class with no images gets an empty range.
      by_label = {label: (start, stop) for label, start, stop in ranges}
      identity_start = key
      for label in range(num_classes):
        start, stop = by_label.get(label, (key, key))
        writer.write(key, pack_payload([start, stop], b'', key))
        key += 1
      writer.write(0, pack_payload([identity_start, key], b'', 0))
  write_property(out_dir, num_classes, *image_size)
  return num_images
