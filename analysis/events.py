"""Scalars from TensorBoard event files, read with tensorboardX's own protobufs.

The runs write event files with tensorboardX (no TensorFlow), so they are read back with the same
package rather than adding `tensorboard` as a dependency. An event file is a TFRecord stream:
uint64 length, masked CRC-32C of the length, the serialised `Event`, masked CRC-32C of the data.
A record cut short at the end (a run still writing) ends the file quietly; a record whose length
checksum fails means the file is corrupt, and reading stops there with a warning.
"""

from __future__ import annotations

import os
import struct
import warnings

import numpy as np
from etils import epath

Scalars = dict[str, tuple[np.ndarray, np.ndarray]]  # tag → (steps int64, values float64)


def _masked_crc(data: bytes) -> int:
  from tensorboardX.crc32c import crc32c

  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path: str) -> list[bytes]:
  """The payloads of one TFRecord file."""
  records = []
  data = epath.Path(path).read_bytes()  # local or gs://
  pos = 0
  while pos + 12 <= len(data):
    header = data[pos : pos + 8]
    (length,), (length_crc,) = (
      struct.unpack('<Q', header),
      struct.unpack('<I', data[pos + 8 : pos + 12]),
    )
    if _masked_crc(header) != length_crc:
      warnings.warn(f'{path}: corrupt record header at byte {pos}; reading stops there')
      break
    end = pos + 12 + length + 4
    if end > len(data):
      break  # the writer has not finished this record
    records.append(data[pos + 12 : pos + 12 + length])
    pos = end
  return records


def _tree(root: epath.Path) -> list[epath.Path]:
  """Every file under `root` (epath's `**` glob is refused on object stores: walked by hand)."""
  found: list[epath.Path] = []
  pending = [root]
  while pending:
    for child in pending.pop().iterdir():
      (pending if child.is_dir() else found).append(child)
  return found


def event_files(workdir: str | os.PathLike) -> list[str]:
  """Event files of a run: under <workdir>/tensorboard (or `workdir` itself), in write order."""
  root = epath.Path(workdir) / 'tensorboard'
  root = root if root.is_dir() else epath.Path(workdir)
  files = [path for path in _tree(root) if 'tfevents' in path.name]

  # Names are events.out.tfevents.<unix time>.<host>...: sorting by the time field keeps the
  # order of a resumed run's files, so a step written twice keeps its latest value.
  def written(path: epath.Path) -> tuple[float, str]:
    parts = path.name.split('.')
    try:
      return float(parts[3]), os.fspath(path)
    except (IndexError, ValueError):
      return path.stat().mtime, os.fspath(path)

  return [os.fspath(path) for path in sorted(files, key=written)]


def read_scalars(workdir: str) -> Scalars:
  """Every scalar tag of a run → (steps, values), sorted by step, last write of a step wins."""
  from tensorboardX.proto import event_pb2

  by_tag: dict[str, dict[int, float]] = {}
  for path in event_files(workdir):
    for record in read_records(path):
      event = event_pb2.Event.FromString(record)
      if not event.HasField('summary'):
        continue
      for value in event.summary.value:
        if value.HasField('simple_value'):
          by_tag.setdefault(value.tag, {})[int(event.step)] = float(value.simple_value)
        elif value.HasField('tensor') and value.tensor.float_val:
          by_tag.setdefault(value.tag, {})[int(event.step)] = float(value.tensor.float_val[0])
  scalars = {}
  for tag, points in by_tag.items():
    steps = np.array(sorted(points), np.int64)
    scalars[tag] = steps, np.array([points[s] for s in steps], np.float64)
  return scalars
