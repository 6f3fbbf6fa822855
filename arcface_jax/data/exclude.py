"""Training without a listed set of images: `config.data.exclude = 'path/to/list'`.

The list names images of the training source (`sources.get_train_source`) to leave out, e.g. the
images sub-center ArcFace's cleaning step (`python -m arcface_jax.subcenter_clean`) set aside as
likely label noise. One entry per line, `#` starts a comment:
  - an integer: the image's index in the training source (every source: folder, RecordIO, TFDS,
    synthetic, digits), as in the `index` column of the cleaning step's flagged.tsv (a TSV whose
    header has an `index` column is read by that column);
  - for folder datasets also a file path, relative to config.data.path or absolute (or a URI).
The list itself may be local or a URI (`gs://...`).
Labels and the class count are unchanged (a class may keep no image), so class indices still
match a checkpoint's or the cleaning step's centres. An entry that is not in the dataset is an
error, not a warning: the list was made for another dataset or split, and training on the wrong
exclusion silently would be worse than stopping.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from absl import logging

from arcface_jax import paths as uri_paths
from arcface_jax.data.errors import DatasetError


class ExcludedSource:
  """A training source without some of its images: `src[i]` is the base's `src[kept[i]]`."""

  def __init__(self, base: Any, kept: np.ndarray, path: str):
    self.base = base
    self.kept = np.asarray(kept, np.int64)
    self.path = path
    self.num_classes = base.num_classes
    self._labels: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.kept)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    return self.base[int(self.kept[int(index)])]

  @property
  def labels(self) -> np.ndarray:
    if self._labels is None:
      base_labels = getattr(self.base, 'labels', None)
      if base_labels is not None:
        self._labels = np.asarray(base_labels)[self.kept]
      else:  # a source without a label array: read only the samples kept
        self._labels = np.array([self.base[int(i)][1] for i in self.kept], np.int64)
    return self._labels


def read_exclusion_list(path: uri_paths.PathLike, source: Any) -> np.ndarray:
  """The sorted unique source indices `path` lists; DatasetError naming the file when it fails."""
  path = os.fspath(path)
  if not uri_paths.is_file(path):
    raise DatasetError(
      f'config.data.exclude={path!r}: no such file; point it at a list of '
      'images to leave out (e.g. the flagged.tsv of python -m '
      "arcface_jax.subcenter_clean), or set --config.data.exclude=''"
    )
  lines = [line.split('#', 1)[0].strip() for line in uri_paths.read_text(path).splitlines()]
  entries = [(number, line) for number, line in enumerate(lines, 1) if line]
  if entries and 'index' in entries[0][1].split('\t'):  # a TSV: read its index column
    column = entries[0][1].split('\t').index('index')
    entries = [
      (number, (line.split('\t') + [''] * column)[column] or line) for number, line in entries[1:]
    ]  # a short row is reported whole
  paths = getattr(source, 'paths', None)
  root = getattr(source, 'root', None)
  # normpath is a comparison key only (it folds gs:// into gs:/, on both sides alike).
  position = {os.path.normpath(p): i for i, p in enumerate(paths)} if paths is not None else {}
  indices, unknown = [], []
  for number, entry in entries:
    if entry.lstrip('-').isdigit():
      index = int(entry)
      if 0 <= index < len(source):
        indices.append(index)
      else:
        unknown.append(f'line {number}: index {index} (the source has {len(source)} images)')
      continue
    candidate = os.path.normpath(
      entry
      if os.path.isabs(entry) or uri_paths.is_remote(entry) or root is None
      else uri_paths.join(root, entry)
    )
    if candidate in position:
      indices.append(position[candidate])
    else:
      unknown.append(
        f'line {number}: {entry!r}'
        + ('' if paths is not None else ' (only folder datasets take file paths)')
      )
  if unknown:
    shown = '; '.join(unknown[:5]) + (f'; and {len(unknown) - 5} more' if len(unknown) > 5 else '')
    raise DatasetError(
      f'config.data.exclude={path!r} names {len(unknown)} images not in the '
      f'training set: {shown}. Was the list made for another dataset or split?'
    )
  return np.unique(np.asarray(indices, np.int64))


def exclude_images(source: Any, path: uri_paths.PathLike) -> ExcludedSource:
  """`source` without the images listed in `path`; logs how many were left out."""
  path = os.fspath(path)
  excluded = read_exclusion_list(path, source)
  kept = np.setdiff1d(np.arange(len(source), dtype=np.int64), excluded)
  if not len(kept):
    raise DatasetError(f'config.data.exclude={path!r} lists all {len(source)} training images')
  logging.info('data: excluding %d of %d images listed in %s', len(excluded), len(source), path)
  return ExcludedSource(source, kept, path)
