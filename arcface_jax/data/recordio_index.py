"""The side files of a RecordIO dataset: the `.idx` index and the `property` file.

`read_index` parses `key<TAB>offset` lines into arrays, `record_extents` turns the offsets into
where each record ends (so one read fetches a whole record), and `read_property` parses
`num_classes[,height,width]`. Paths may be local or URIs (`gs://...`).
"""

from __future__ import annotations

import numpy as np

from arcface_jax import paths
from arcface_jax.data.errors import DatasetError


def read_index(idx_path: paths.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """(keys, offsets) int64 from a `key<TAB>offset` file; DatasetError naming a bad line."""
  try:
    data = paths.read_bytes(idx_path)
  except OSError as e:
    raise DatasetError(
      f'{idx_path} cannot be read ({e.strerror or e}); check its permissions'
    ) from None
  tokens = data.split()
  try:
    # Fast path (MS1M's index has millions of lines): numpy parses the tokens in C.
    if len(tokens) % 2:
      raise ValueError
    pairs = np.array(tokens).astype(np.int64).reshape(-1, 2)
  except ValueError:
    for line_number, line in enumerate(data.decode('utf-8', 'replace').splitlines(), 1):
      fields = line.split()
      if fields and (len(fields) != 2 or not all(x.isdigit() for x in fields)):
        raise DatasetError(
          f'{idx_path}:{line_number}: expected "key<TAB>offset", got '
          f'{line.strip()[:60]!r}; is this a RecordIO index?'
        ) from None
    raise DatasetError(f'{idx_path}: not a RecordIO index') from None
  if len(pairs) == 0:
    raise DatasetError(
      f'{idx_path} lists no records; re-create it with python -m arcface_jax.data.pack'
    )
  if len(np.unique(pairs[:, 0])) != len(pairs):
    raise DatasetError(f'{idx_path} lists a key twice; the index is damaged, re-create it')
  return pairs[:, 0], pairs[:, 1]


def record_extents(offsets: np.ndarray, file_size: int) -> np.ndarray:
  """Where each record ends: the next record's offset in file order, or the end of the file."""
  file_order = np.unique(np.append(offsets, file_size))
  return file_order[np.minimum(np.searchsorted(file_order, offsets, 'right'), len(file_order) - 1)]


def read_property(directory: paths.PathLike) -> tuple[int | None, tuple[int, int] | None]:
  """(num_classes, (height, width) or None) from `directory/property`; (None, None) if absent."""
  path = paths.join(directory, 'property')
  if not paths.is_file(path):
    return None, None
  text = paths.read_text(path).strip()
  try:
    fields = [int(x) for x in text.split(',')]
    if len(fields) not in (1, 3) or min(fields) < 1:
      raise ValueError
  except ValueError:
    raise DatasetError(
      f'{path} holds {text[:60]!r}; expected "num_classes,height,width" '
      '(e.g. 85742,112,112); fix or delete it'
    ) from None
  return fields[0], (fields[1], fields[2]) if len(fields) == 3 else None
