"""Training sources by name: every one is random access, `src[i] -> (RGB uint8 HWC, label)`.

`get_train_source(config.data)` picks by `config.data.source`: 'synthetic' (embedded, generated
on first use), 'recordio' (train.rec + train.idx), 'folder' (a sub-folder per identity) or
'tfds' (any TFDS dataset with `image` and `label` features, read through `tfds.data_source`).
"""
from __future__ import annotations

import os

import ml_collections

from arcface_jax.data.errors import DatasetError

SOURCES = ('synthetic', 'recordio', 'folder', 'tfds')


def _require_path(data_config: ml_collections.ConfigDict) -> str:
  path = data_config.path
  if not path or not os.path.exists(path):
    raise DatasetError(f'config.data.path={path!r} does not exist: point --config.data.path at '
                       f'the {data_config.source} dataset directory')
  return path


def get_train_source(data_config: ml_collections.ConfigDict):
  """The training split named by `data_config`."""
  source = data_config.source
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
    return FolderDataset(path, split='train',
                         split_by=data_config.split_by, val_fraction=data_config.val_fraction,
                         test_fraction=data_config.test_fraction, seed=0)
  if source == 'tfds':
    import tensorflow_datasets as tfds
    from arcface_jax.data.synthetic import TfdsSource
    if not data_config.path:
      raise DatasetError('config.data.source=tfds needs the dataset name in config.data.path')
    builder = tfds.builder(data_config.path, data_dir=data_config.data_dir)
    num_classes = data_config.num_classes or builder.info.features['label'].num_classes
    return TfdsSource(builder.as_data_source(split='train'), num_classes=num_classes)
  raise DatasetError(f'config.data.source={source!r}: expected one of {SOURCES}')
