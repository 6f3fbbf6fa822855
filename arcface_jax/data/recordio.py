"""MXNet RecordIO (train.rec + train.idx), read without mxnet: `RecordDataset`.

The bytes (chunks, payload header) are in `data/recordio_format.py`; writing is
`data/recordio_writer.py`, whose names (`write_records`, `RecordWriter`, `pack_payload`, ...)
are importable from here too.

The face layout (MS1M, Glint360K, WebFace) has record 0 as a header whose labels are [N+1, N+K+1),
images at keys 1..N and identity ranges [start, end) at N+1..N+K; im2rec-style files have no
header and every key is an image. A `property` file `num_classes,height,width` may sit beside
(parsed, with the index, in `data/recordio_index.py`).

The directory may be local or a URI (`gs://bucket/ms1m`). Reads go through
`data/random_access.RandomAccessFile`: `os.pread` on a descriptor opened lazily in each process
for a local file, a per-thread `epath` stream for a URI; so one dataset object serves many
threads, and pickles (without descriptors) into grain's worker processes.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from arcface_jax import paths
from arcface_jax.data.decode import decode_image
from arcface_jax.data.errors import CorruptSampleError, DatasetError
from arcface_jax.data.random_access import RandomAccessFile
from arcface_jax.data.recordio_format import (
  CHUNK_HEAD,
  LENGTH_MASK,
  MAGIC,
  MAGIC_BYTES,
  pack_payload,
  split_payload,
  unpack_payload,
)
from arcface_jax.data.recordio_index import read_index, read_property, record_extents
from arcface_jax.data.recordio_writer import RecordWriter, write_property, write_records

__all__ = [
  'MAGIC',
  'RecordDataset',
  'RecordWriter',
  'pack_payload',
  'read_index',
  'split_payload',
  'unpack_payload',
  'write_property',
  'write_records',
]

# One pread usually fetches a whole record (its extent is known from the next offset); records
# longer than this are read in a second call rather than trusting a huge extent.
_FIRST_READ = 1 << 20


class RecordDataset:
  """Random access to the images of a RecordIO directory: `ds[i] → (RGB uint8 HWC, label)`.

  Attributes: `num_classes`; `keys` (record key of each image, int64); `has_header` (face layout);
  `image_size` ((height, width) from the property file, or None). `raw(i)` gives the encoded
  bytes and label without decoding. Bad records raise `CorruptSampleError`.
  """

  def __init__(self, directory: paths.PathLike, name: str = 'train'):
    self.directory = directory = os.fspath(directory)
    self.rec_path = paths.join(directory, name + '.rec')
    idx_path = paths.join(directory, name + '.idx')
    for path in (self.rec_path, idx_path):
      if not paths.is_file(path):
        raise DatasetError(
          f'{path} not found: a RecordIO dataset needs {name}.rec and '
          f'{name}.idx (pack a folder with python -m arcface_jax.data.pack)'
        )
    self._file = RandomAccessFile(self.rec_path)
    try:
      file_size = self._file.size()
      self._file.open()
    except OSError as e:
      raise DatasetError(
        f'{self.rec_path} cannot be opened ({e.strerror or e}); check that it exists and is '
        'readable'
      ) from None
    all_keys, all_offsets = read_index(idx_path)
    # Each record's extent ends where the next one (in file order) starts, so one pread reads it.
    all_ends = record_extents(all_offsets, file_size)
    order = np.argsort(all_keys)
    all_keys, all_offsets, all_ends = all_keys[order], all_offsets[order], all_ends[order]
    # Probe the records at the start, middle and end of the file: if none parses, the pair is not
    # RecordIO (or the .idx belongs to another .rec); one damaged record is a bad sample only.
    by_offset = np.argsort(all_offsets)
    probes = sorted({int(by_offset[0]), int(by_offset[len(by_offset) // 2]), int(by_offset[-1])})
    errors = []
    for position in probes:
      try:
        self._read_payload(
          int(all_offsets[position]), int(all_ends[position]), int(all_keys[position])
        )
      except CorruptSampleError as e:
        errors.append(f'record {e.key}: {e.reason}')
    if len(errors) == len(probes):
      raise DatasetError(
        f'{self.rec_path} is not a RecordIO file matching {idx_path} '
        f'({errors[0]}); re-copy or re-pack the dataset'
      )
    # The header, when there is one, is key 0 (our writer puts it at the end of the file).
    read = {}
    if all_keys[0] == 0:
      try:
        read[0] = self._read_payload(int(all_offsets[0]), int(all_ends[0]), 0)
      except CorruptSampleError as e:
        # Key 0 is the header of the face layout or an im2rec image; unreadable, it cannot tell
        # which, so every key counts as an image (identity records then fail as bad samples).
        logging.warning(
          '%s: record 0 is unreadable (%s); reading every record as an image. If '
          'this is a face-layout file its header is damaged: re-copy it',
          self.rec_path,
          e.reason,
        )
    self.has_header = 0 in read and _is_header(*read[0])
    identities = None
    if self.has_header:
      identity_start, identity_end = (int(x) for x in np.asarray(read[0][0])[:2])
      images = (all_keys >= 1) & (all_keys < identity_start)
      identities = identity_end - identity_start
      if images.sum() != identity_start - 1:
        logging.warning(
          '%s: header announces %d images, the index lists %d',
          idx_path,
          identity_start - 1,
          images.sum(),
        )
      self._identity_keys = np.arange(identity_start, identity_end)
    else:
      images = np.ones(len(all_keys), bool)
      self._identity_keys = np.zeros(0, np.int64)
    # Arrays, not dicts: MS1M's 5.8M entries pickle into every grain worker.
    self._other = (all_keys[~images], all_offsets[~images], all_ends[~images])
    self.keys = all_keys[images]
    self._offsets, self._ends = all_offsets[images], all_ends[images]
    if len(self.keys) == 0:
      raise DatasetError(f'{idx_path} lists no image records')
    past_end = int((self._offsets >= file_size).sum())
    if past_end == len(self.keys):
      raise DatasetError(
        f'{self.rec_path} ({file_size} bytes) ends before every image record '
        f'in {idx_path}; the file is truncated, re-copy it'
      )
    if past_end:
      logging.warning(
        '%s is truncated: %d of %d image records lie past its end and will be skipped as corrupt',
        self.rec_path,
        past_end,
        len(self.keys),
      )

    num_classes, self.image_size = read_property(directory)
    if num_classes is not None and identities is not None and num_classes != identities:
      logging.warning(
        '%s/property says %d classes, the header record %d; using the property',
        directory,
        num_classes,
        identities,
      )
    self.num_classes = num_classes or identities or self._scan_classes()

  def _scan_classes(self) -> int:
    """max label + 1 over every image record (an im2rec file without a property file)."""
    logging.info(
      '%s has no property file: scanning %d labels for the class count',
      self.rec_path,
      len(self.keys),
    )
    largest = int(self._labels_from_records().max())
    if largest < 0:
      raise DatasetError(f'{self.rec_path}: no record has a readable non-negative label')
    return largest + 1

  @property
  def labels(self) -> np.ndarray:
    """int32 label of every image, −1 where unreadable; no image is decoded. The face layout's
    identity records give them in one read per identity, other files one read per image."""
    if getattr(self, '_labels', None) is None:
      labels = None
      if self.has_header:
        try:
          labels = self._labels_from_ranges()
        except CorruptSampleError as e:
          logging.warning(
            '%s: identity record %s unreadable (%s); reading every image label',
            self.rec_path,
            e.key,
            e.reason,
          )
      self._labels = self._labels_from_records() if labels is None else labels
      unreadable = int((self._labels < 0).sum())
      if unreadable:
        logging.warning(
          '%s: %d of %d image records have no readable label (e.g. keys %s)',
          self.rec_path,
          unreadable,
          len(self.keys),
          self.keys[self._labels < 0][:5].tolist(),
        )
    return self._labels

  def _labels_from_ranges(self) -> np.ndarray:
    labels = np.full(len(self.keys), -1, np.int32)
    ranges = self.identity_ranges()
    first = np.searchsorted(self.keys, ranges[:, 0])
    last = np.searchsorted(self.keys, ranges[:, 1])
    for label, (start, stop) in enumerate(zip(first.tolist(), last.tolist())):
      labels[start:stop] = label
    return labels

  def _labels_from_records(self) -> np.ndarray:
    labels = np.full(len(self.keys), -1, np.int32)
    for i in range(len(self.keys)):
      try:
        labels[i] = self._label(self.read_payload(i)[0], int(self.keys[i]))
      except CorruptSampleError:
        continue  # counted when the pipeline meets it
    return labels

  def close(self) -> None:
    """Closes this process's descriptor or streams (reads reopen them)."""
    file = getattr(self, '_file', None)  # absent when __init__ failed before opening
    if file is not None:
      file.close()

  def _read_payload(
    self, offset: int, end: int, key: object
  ) -> tuple[np.ndarray | float, memoryview]:
    """(label, image bytes) of the record at `offset`, parts rejoined with the magic."""
    pread = self._file.pread
    try:
      buffer = pread(max(8, min(end - offset, _FIRST_READ)), offset)
    except OSError as e:
      raise CorruptSampleError(key, f'read failed at byte {offset}: {e.strerror or e}') from None
    parts: list[memoryview] = []
    position = 0
    while True:
      stop = position + 8
      if stop > len(buffer):
        buffer += pread(stop - len(buffer), offset + len(buffer))
        if stop > len(buffer):
          raise CorruptSampleError(
            key, f'record truncated at byte {offset + len(buffer)} of {self.rec_path}'
          )
      magic, lrec = CHUNK_HEAD.unpack_from(buffer, position)
      if magic != MAGIC:
        raise CorruptSampleError(key, f'wrong magic {magic:#010x} at byte {offset + position}')
      cflag, length = lrec >> 29, lrec & LENGTH_MASK
      if (cflag in (0, 1)) != (not parts) or cflag > 3:
        raise CorruptSampleError(
          key, f'chunk flag {cflag} out of sequence at byte {offset + position}'
        )
      start, stop = stop, stop + length
      if stop > len(buffer):
        buffer += pread(stop - len(buffer), offset + len(buffer))
        if stop > len(buffer):
          raise CorruptSampleError(
            key, f'record truncated at byte {offset + len(buffer)} of {self.rec_path}'
          )
      parts.append(memoryview(buffer)[start:stop])
      position = stop + (-length % 4)
      if cflag in (0, 3):
        break
    payload = parts[0] if len(parts) == 1 else MAGIC_BYTES.join(parts)
    try:
      return unpack_payload(payload)
    except ValueError as e:
      raise CorruptSampleError(key, str(e)) from None

  def read_payload(self, index: int) -> tuple[np.ndarray | float, memoryview]:
    """(raw label: a float or the float32 labels, encoded image bytes) of image `index`."""
    return self._read_payload(
      int(self._offsets[index]), int(self._ends[index]), int(self.keys[index])
    )

  def read_record(self, key: int) -> tuple[np.ndarray | float, bytes]:
    """(raw label, payload body) of any record by key (header and identity records included)."""
    for keys, offsets, ends in ((self.keys, self._offsets, self._ends), self._other):
      position = int(np.searchsorted(keys, key))
      if position < len(keys) and keys[position] == key:
        label, body = self._read_payload(int(offsets[position]), int(ends[position]), key)
        return label, bytes(body)
    raise KeyError(f'{self.rec_path} has no record {key}')

  def identity_ranges(self) -> np.ndarray:
    """(K, 2) int64 [start, end) image-key ranges of the face layout's identity records."""
    if not self.has_header:
      raise ValueError(f'{self.rec_path} has no header record, hence no identity records')
    return np.array(
      [np.ravel(self.read_record(int(k))[0])[:2] for k in self._identity_keys], np.int64
    ).reshape(-1, 2)

  @staticmethod
  def _label(label: np.ndarray | float, key: object) -> int:
    value = float(np.ravel(label)[0]) if np.ndim(label) else float(label)
    if not np.isfinite(value) or value != int(value) or value < 0:
      raise CorruptSampleError(key, f'label {value} is not a non-negative integer')
    return int(value)

  def _checked(self, index: int) -> tuple[memoryview, int, int]:
    """(image bytes, label, key) of image `index`, the label checked against num_classes."""
    index = int(index)
    if not -len(self.keys) <= index < len(self.keys):
      raise IndexError(f'index {index} out of range for {len(self.keys)} images')
    key = int(self.keys[index])
    label, body = self.read_payload(index)
    label = self._label(label, key)
    if label >= self.num_classes:
      raise CorruptSampleError(key, f'label {label} outside [0, {self.num_classes})')
    return body, label, key

  def raw(self, index: int) -> tuple[bytes, int]:
    """(encoded image bytes, label) of image `index`, checked but not decoded."""
    body, label, _ = self._checked(index)
    return bytes(body), label

  def __len__(self) -> int:
    return len(self.keys)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    body, label, key = self._checked(index)
    return decode_image(body, key), label


def _is_header(label: np.ndarray | float, body: memoryview) -> bool:
  """Record 0 of the face layout: no image, labels [N+1, N+K+1) with N, K ≥ 0 integers."""
  if not isinstance(label, np.ndarray) or label.ndim == 0 or len(label) < 2 or len(body):
    return False
  start, end = float(label[0]), float(label[1])
  return start == int(start) and end == int(end) and 1 <= start <= end
