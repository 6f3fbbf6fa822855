"""Training sources by name: every one is random access, `src[i] -> (RGB uint8 HWC, label)`.

`get_train_source(config.data)` picks by `config.data.source`: 'synthetic' (embedded, generated
on first use), 'recordio' (train.rec + train.idx), 'folder' (a sub-folder per identity) or
'tfds' (any TFDS dataset with `image` and `label` features, read through `tfds.data_source`);
'digits' is scikit-learn's ten-class toy of the analysis figures (`data/digits.py`).
`config.data.exclude` leaves listed images out of the training split of any of them.

The protocol every source follows (and the input pipeline relies on): `len(src)`, `src[i]` →
(image uint8 (H, W, 3) RGB, int label), `src.num_classes`; one unreadable sample raises
`CorruptSampleError(key, reason)`, a dataset unusable as a whole raises `DatasetError`.
"""

from __future__ import annotations

from typing import Protocol

import ml_collections
import numpy as np
from etils import epath

from arcface_jax.data.errors import DatasetError
from arcface_jax.data.tfds_source import load_tfds

SOURCES = ('synthetic', 'recordio', 'folder', 'tfds', 'digits')


class Source(Protocol):
  """What the input pipeline needs from a dataset."""

  num_classes: int

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]: ...


def _require_path(data_config: ml_collections.ConfigDict) -> str:
  path = data_config.path
  if not path:
    raise DatasetError(
      f'config.data.source={data_config.source!r} needs a dataset directory: '
      'set --config.data.path=/path/to/dataset'
    )
  try:
    found = epath.Path(path).exists()
  except ImportError as e:  # no filesystem package for the URI's scheme (gcsfs for gs://)
    raise DatasetError(
      f'config.data.path={path!r} cannot be reached ({e}); a gs:// dataset needs '
      "`pip install 'arcface_jax[gcs]'`"
    ) from None
  if not found:
    raise DatasetError(
      f'config.data.path={path!r} does not exist: point --config.data.path at '
      f'the {data_config.source} dataset directory (a local path or a gs:// URI)'
    )
  return path


def get_train_source(data_config: ml_collections.ConfigDict) -> Source:
  """The training split named by `data_config` (`config.data`), without the images listed in
  `config.data.exclude` (see `data/exclude.py`) when it names a file."""
  source = get_source(data_config, 'train')
  exclude = data_config.get('exclude', '')  # configs saved before the key existed lack it
  if exclude:
    from arcface_jax.data.exclude import exclude_images

    source = exclude_images(source, exclude)
  return source


def get_source(data_config: ml_collections.ConfigDict, split: str = 'train') -> Source:
  """Split `split` of the dataset named by `data_config`.

  Only folder trees (split by `data_config.split_by` and the fractions) and TFDS datasets have
  splits other than 'train'; RecordIO files hold one, and the synthetic and digits sources keep
  their held-out data for their own verification pairs.
  """
  source = data_config.source
  if source not in SOURCES:
    raise DatasetError(
      f'config.data.source={source!r} is not a known source; valid choices: {", ".join(SOURCES)}'
    )
  if split != 'train' and source not in ('folder', 'tfds'):
    raise DatasetError(
      f'config.data.source={source!r} has no {split!r} split; held-out splits '
      'come from folder trees (config.data.val_fraction / test_fraction) or '
      'TFDS datasets'
    )
  if source == 'digits':  # scikit-learn's digits, the analysis toy (configs/toy.py)
    from arcface_jax.data.digits import DigitsSource

    return DigitsSource('train', data_config.image_size, data_config.num_classes or 10)
  if source == 'synthetic':
    from arcface_jax.data import synthetic

    return synthetic.load_synthetic(data_config.synthetic_variant, data_config.data_dir, 'train')
  if source == 'recordio':
    path = _require_path(data_config)
    from arcface_jax.data.recordio import RecordDataset

    return RecordDataset(path)
  if source == 'folder':
    path = _require_path(data_config)
    from arcface_jax.data.folder import FolderDataset

    return FolderDataset(
      path,
      split=split,
      split_by=data_config.split_by,
      val_fraction=data_config.val_fraction,
      test_fraction=data_config.test_fraction,
      seed=data_config.split_seed,
    )
  if not data_config.path:
    raise DatasetError(
      'config.data.source=tfds needs the dataset name: set '
      '--config.data.path=<tfds name>, e.g. synthetic_faces/demo'
    )
  # A val/test split has its own class count (open-set splits relabel 0..K−1): read it.
  return load_tfds(
    data_config.path,
    data_config.data_dir,
    split,
    num_classes=data_config.num_classes if split == 'train' else 0,
  )


def source_labels(source: Source) -> np.ndarray:
  """Every label of `source` in index order: its `labels` array if it has one, else read."""
  labels = getattr(source, 'labels', None)
  if labels is not None:
    return np.asarray(labels)
  return np.array([source[i][1] for i in range(len(source))], np.int64)
