"""The bytes of MXNet RecordIO (REFERENCE §3): chunk framing and the im2rec payload.

A record is one or more chunks: uint32 magic 0xced7230a, uint32 lrec (cflag = lrec >> 29,
length = lrec & (2^29 − 1)), the payload zero-padded to 4 bytes. A payload containing the magic
at a 4-byte-aligned offset is split there into parts (cflag 1 = first, 2 = middle, 3 = last) with
the magic removed; the reader puts it back. The payload is an `<IfQQ` header (flag, label, id,
id2); flag n > 0 means n float32 labels follow; then the image bytes.

Shared by the reader (`data/recordio.py`) and the writer (`data/recordio_writer.py`).
"""

from __future__ import annotations

import struct
from typing import Iterable

import numpy as np

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack('<I', MAGIC)
CHUNK_HEAD = struct.Struct('<II')  # (magic, lrec) before each chunk
HEADER = struct.Struct('<IfQQ')  # (flag, label, id, id2) at the start of each payload
LENGTH_MASK = (1 << 29) - 1  # the length bits of lrec; the top three are cflag


def pack_payload(label: float | Iterable[float], image_bytes: bytes, key: int = 0) -> bytes:
  """Header + (labels) + image bytes, as im2rec writes them.

  A scalar label goes in the header (flag 0); a sequence of n labels sets flag n and follows it.
  """
  labels = np.asarray(label, np.float32)
  if labels.ndim == 0:  # packed as float32 either way, so converting first changes no bit
    return HEADER.pack(0, float(labels), key, 0) + bytes(image_bytes)
  labels = labels.reshape(-1)
  return HEADER.pack(len(labels), 0.0, key, 0) + labels.tobytes() + bytes(image_bytes)


def unpack_payload(payload: bytes | memoryview) -> tuple[np.ndarray | float, memoryview]:
  """(label: a float, or the float32 labels when flag > 0, image bytes). ValueError if short."""
  if len(payload) < HEADER.size:
    raise ValueError(f'payload of {len(payload)} bytes is shorter than the 24-byte header')
  flag, label, _, _ = HEADER.unpack_from(payload)
  body = memoryview(payload)[HEADER.size :]
  if flag > 0:
    if len(body) < 4 * flag:
      raise ValueError(f'header announces {flag} labels but the payload is too short')
    return np.frombuffer(body[: 4 * flag], np.float32).copy(), body[4 * flag :]
  return label, body


def split_payload(payload: bytes) -> list[tuple[int, bytes]]:
  """[(cflag, part)]: the payload cut at 4-byte-aligned occurrences of the magic (dropped)."""
  parts, start = [], 0
  position = payload.find(MAGIC_BYTES)
  while position != -1:
    if position % 4 == 0:
      parts.append(payload[start:position])
      start = position + 4
      position = payload.find(MAGIC_BYTES, start)
    else:
      position = payload.find(MAGIC_BYTES, position + 1)
  parts.append(payload[start:])
  if len(parts) == 1:
    return [(0, parts[0])]
  return [(1 if i == 0 else 3 if i == len(parts) - 1 else 2, p) for i, p in enumerate(parts)]
