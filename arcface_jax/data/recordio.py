"""MXNet RecordIO (train.rec + train.idx), read and written without mxnet (REFERENCE §3).

A record is one or more chunks: uint32 magic 0xced7230a, uint32 lrec (cflag = lrec >> 29,
length = lrec & (2^29 − 1)), the payload zero-padded to 4 bytes. A payload containing the magic
at a 4-byte-aligned offset is split there into parts (cflag 1 = first, 2 = middle, 3 = last) with
the magic removed; the reader puts it back. The payload is an `<IfQQ` header (flag, label, id,
id2); flag n > 0 means n float32 labels follow; then the image bytes.

The face layout (MS1M, Glint360K, WebFace) has record 0 as a header whose labels are [N+1, N+K+1),
images at keys 1..N and identity ranges at N+1..N+K; im2rec-style files have no header and every
key is an image.
"""
from __future__ import annotations

import os
import struct
from typing import Iterable

import cv2
import numpy as np
from absl import logging

from arcface_jax.data.errors import CorruptSampleError, DatasetError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack('<I', MAGIC)
_HEADER = struct.Struct('<IfQQ')
_LENGTH_MASK = (1 << 29) - 1


def pack_payload(label: float | Iterable[float], image_bytes: bytes, key: int = 0) -> bytes:
  """Header + (labels) + image bytes, as im2rec writes them."""
  if np.ndim(label) == 0:
    return _HEADER.pack(0, float(label), key, 0) + image_bytes
  labels = np.asarray(label, np.float32)
  return _HEADER.pack(len(labels), 0.0, key, 0) + labels.tobytes() + image_bytes


def unpack_payload(payload: bytes) -> tuple[np.ndarray | float, bytes]:
  """(label: a float, or the float32 labels when flag > 0, image bytes)."""
  if len(payload) < _HEADER.size:
    raise ValueError(f'payload of {len(payload)} bytes is shorter than the 24-byte header')
  flag, label, _, _ = _HEADER.unpack_from(payload)
  body = payload[_HEADER.size:]
  if flag > 0:
    if len(body) < 4 * flag:
      raise ValueError(f'header announces {flag} labels but the payload is too short')
    return np.frombuffer(body[:4 * flag], np.float32).copy(), body[4 * flag:]
  return label, body


def _chunks(payload: bytes) -> list[tuple[int, bytes]]:
  """Splits a payload at 4-byte-aligned occurrences of the magic (which are dropped)."""
  parts, start = [], 0
  position = payload.find(_MAGIC_BYTES)
  while position != -1:
    if position % 4 == 0:
      parts.append(payload[start:position])
      start = position + 4
      position = payload.find(_MAGIC_BYTES, start)
    else:
      position = payload.find(_MAGIC_BYTES, position + 1)
  parts.append(payload[start:])
  if len(parts) == 1:
    return [(0, parts[0])]
  return [(1 if i == 0 else 3 if i == len(parts) - 1 else 2, p) for i, p in enumerate(parts)]


class RecordWriter:
  """Writes train.rec and train.idx; `write(key, payload)` appends one record."""

  def __init__(self, rec_path: str, idx_path: str):
    self._rec = open(rec_path, 'wb')
    self._idx = open(idx_path, 'w')

  def write(self, key: int, payload: bytes) -> None:
    self._idx.write(f'{key}\t{self._rec.tell()}\n')
    for cflag, part in _chunks(payload):
      self._rec.write(_MAGIC_BYTES + struct.pack('<I', (cflag << 29) | len(part)) + part)
      self._rec.write(b'\0' * (-len(part) % 4))

  def close(self) -> None:
    self._rec.close()
    self._idx.close()

  def __enter__(self) -> 'RecordWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def decode_image(data: bytes, key: object) -> np.ndarray:
  """JPEG/PNG bytes → RGB uint8 (OpenCV decodes about twice as fast as PIL on small JPEGs)."""
  image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
  if image is None:
    raise CorruptSampleError(key, 'image bytes do not decode')
  return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class RecordDataset:
  """Random access to the images of a RecordIO directory: `ds[i] → (RGB uint8 HWC, label)`."""

  def __init__(self, directory: str, rec_name: str = 'train'):
    self.rec_path = os.path.join(directory, rec_name + '.rec')
    idx_path = os.path.join(directory, rec_name + '.idx')
    for path in (self.rec_path, idx_path):
      if not os.path.isfile(path):
        raise DatasetError(f'{path} not found: a RecordIO dataset needs {rec_name}.rec and '
                           f'{rec_name}.idx (pack a folder with python -m arcface_jax.data.pack)')
    self._offsets = self._read_index(idx_path)
    self._fd: int | None = None
    self._pid = -1
    labels, _ = self._read_record(min(self._offsets))
    first = min(self._offsets)
    if isinstance(labels, np.ndarray) and len(labels) >= 2 and first == 0:
      end = int(labels[0])  # face layout: images are keys 1 .. N, identities N+1 .. N+K
      self.keys = [k for k in range(1, end) if k in self._offsets]
      num_identities = int(labels[1]) - int(labels[0])
    else:
      self.keys = sorted(self._offsets)
      num_identities = None
    self.num_classes = self._read_property(directory) or num_identities or self._scan_classes()

  @staticmethod
  def _read_index(idx_path: str) -> dict[int, int]:
    offsets = {}
    with open(idx_path) as f:
      for line_number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          key, offset = line.split('\t')
          offsets[int(key)] = int(offset)
        except ValueError:
          raise DatasetError(f'{idx_path}:{line_number}: expected "key<TAB>offset", got '
                             f'{line.strip()[:60]!r}') from None
    if not offsets:
      raise DatasetError(f'{idx_path} lists no records')
    return offsets

  @staticmethod
  def _read_property(directory: str) -> int | None:
    path = os.path.join(directory, 'property')
    if not os.path.isfile(path):
      return None
    with open(path) as f:
      return int(f.read().strip().split(',')[0])

  def _scan_classes(self) -> int:
    logging.info('%s has no property file: scanning labels for the class count', self.rec_path)
    return int(max(float(np.ravel(self._read_record(self._offsets[k])[0])[0])
                   for k in self.keys)) + 1

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_fd'], state['_pid'] = None, -1  # each process opens its own descriptor
    return state

  def _file(self) -> int:
    if self._fd is None or self._pid != os.getpid():
      self._fd = os.open(self.rec_path, os.O_RDONLY)
      self._pid = os.getpid()
    return self._fd

  def _read_record(self, offset: int, key: object = None) -> tuple[np.ndarray | float, bytes]:
    """pread-based (thread-safe) read of the record starting at `offset`."""
    fd = self._file()
    parts = []
    while True:
      head = os.pread(fd, 8, offset)
      if len(head) < 8:
        raise CorruptSampleError(key, f'record truncated at byte {offset} of {self.rec_path}')
      magic, lrec = struct.unpack('<II', head)
      if magic != MAGIC:
        raise CorruptSampleError(key, f'wrong magic {magic:#x} at byte {offset}')
      cflag, length = lrec >> 29, lrec & _LENGTH_MASK
      data = os.pread(fd, length, offset + 8)
      if len(data) < length:
        raise CorruptSampleError(key, f'record truncated at byte {offset} of {self.rec_path}')
      parts.append(data)
      offset += 8 + length + (-length % 4)
      if cflag in (0, 3):
        break
    try:
      return unpack_payload(_MAGIC_BYTES.join(parts))
    except ValueError as e:
      raise CorruptSampleError(key, str(e)) from None

  def __len__(self) -> int:
    return len(self.keys)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    key = self.keys[index]
    label, image_bytes = self._read_record(self._offsets[key], key)
    label = int(np.ravel(label)[0])
    if not 0 <= label < self.num_classes:
      raise CorruptSampleError(key, f'label {label} outside [0, {self.num_classes})')
    return decode_image(image_bytes, key), label
