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

import os
from typing import Any, Protocol, Sequence

import ml_collections
import numpy as np

from arcface_jax.data.decode import decode_image
from arcface_jax.data.errors import CorruptSampleError, DatasetError

SOURCES = ('synthetic', 'recordio', 'folder', 'tfds', 'digits')


class Source(Protocol):
  """What the input pipeline needs from a dataset."""
  num_classes: int

  def __len__(self) -> int:
    ...

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    ...


class TfdsSource:
  """The source protocol over a TFDS data_source whose records have `image` and `label`.

  With `encoded=True` the data source was opened with TFDS's image decoding skipped: records hold
  the stored PNG/JPEG bytes, decoded here with OpenCV (about twice as fast as TFDS's PIL path),
  and `labels` reads every label without decoding any image.
  """

  def __init__(self, data_source: Sequence[dict[str, Any]], num_classes: int, name: str = 'tfds',
               encoded: bool = False):
    self._source = data_source
    self.num_classes = int(num_classes)
    self._name = name
    self._encoded = encoded
    self._labels: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self._source)

  @property
  def labels(self) -> np.ndarray:
    """Every label in index order (records are deserialised; images decoded only if stored raw)."""
    if self._labels is None:
      self._labels = np.array([int(self._source[i]['label']) for i in range(len(self))],
                              np.int64)
    return self._labels

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    index = int(index)
    key = f'{self._name}[{index}]'
    try:
      record = self._source[index]
    except (IndexError, KeyError):
      raise
    except Exception as e:  # the decoder's own error types vary (PIL, cv2, protobuf)
      raise CorruptSampleError(key, f'{type(e).__name__}: {e}') from e
    if self._encoded:
      return decode_image(record['image'], key), int(record['label'])
    image = np.asarray(record['image'])
    if image.ndim == 2:
      image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
      raise CorruptSampleError(key, f'image of shape {image.shape} is not (H, W, 3) or (H, W, 1)')
    if image.shape[-1] == 1:  # grey datasets: the backbones expect three channels
      image = np.repeat(image, 3, axis=-1)
    return image, int(record['label'])


def open_tfds(name: str, data_dir: str, split: str, num_classes: int,
              image_feature: Any = None) -> TfdsSource:
  """`tfds.data_source` as a TfdsSource; PNG/JPEG `Image` features are left encoded for OpenCV."""
  import tensorflow_datasets as tfds
  encoded = (isinstance(image_feature, tfds.features.Image)
             and image_feature.encoding_format in (None, 'png', 'jpeg'))
  decoders = {'image': tfds.decode.SkipDecoding()} if encoded else None
  data_source = tfds.data_source(name, data_dir=data_dir, split=split, download=False,
                                 decoders=decoders)
  return TfdsSource(data_source, num_classes=num_classes, name=f'{name}/{split}', encoded=encoded)


def _require_path(data_config: ml_collections.ConfigDict) -> str:
  path = data_config.path
  if not path:
    raise DatasetError(f'config.data.source={data_config.source!r} needs a dataset directory: '
                       'set --config.data.path=/path/to/dataset')
  if not os.path.exists(path):
    raise DatasetError(f'config.data.path={path!r} does not exist: point --config.data.path at '
                       f'the {data_config.source} dataset directory')
  return path


def load_tfds(name: str, data_dir: str, split: str = 'train',
              num_classes: int = 0) -> TfdsSource:
  """A prepared TFDS dataset (array_record format) as a source; never downloads."""
  import tensorflow_datasets as tfds
  fix = (f'prepare it first with `tfds build {name} --data_dir={data_dir} '
         '--file_format=array_record`, or set --config.data.data_dir to where it was built')
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError and friends: the name itself is wrong
    raise DatasetError(f'config.data.path={name!r} is not a known TFDS dataset '
                       f'({type(e).__name__}); use a registered name such as '
                       '"synthetic_faces/demo"') from None
  if not builder.is_prepared():
    raise DatasetError(f'TFDS dataset {name!r} is not prepared in {data_dir!r}: {fix}')
  features = builder.info.features
  if 'image' not in features or 'label' not in features:
    raise DatasetError(f'TFDS dataset {name!r} has features {sorted(features)}; the training '
                       "source needs 'image' and 'label'")
  if not num_classes:
    num_classes = getattr(features['label'], 'num_classes', None) or 0
  if not num_classes:
    raise DatasetError(f'TFDS dataset {name!r}: its label feature does not say how many classes '
                       'there are; set --config.data.num_classes')
  try:
    return open_tfds(name, data_dir, split, num_classes, features['image'])
  except Exception as e:  # e.g. prepared as tfrecord, which data_source cannot read
    raise DatasetError(f'TFDS dataset {name!r} split {split!r} cannot be opened for random '
                       f'access ({type(e).__name__}: {e}); {fix}') from None


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
    raise DatasetError(f'config.data.source={source!r} is not a known source; valid choices: '
                       f'{", ".join(SOURCES)}')
  if split != 'train' and source not in ('folder', 'tfds'):
    raise DatasetError(f'config.data.source={source!r} has no {split!r} split; held-out splits '
                       'come from folder trees (config.data.val_fraction / test_fraction) or '
                       'TFDS datasets')
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
    return FolderDataset(path, split=split, split_by=data_config.split_by,
                         val_fraction=data_config.val_fraction,
                         test_fraction=data_config.test_fraction, seed=data_config.split_seed)
  if not data_config.path:
    raise DatasetError('config.data.source=tfds needs the dataset name: set '
                       '--config.data.path=<tfds name>, e.g. synthetic_faces/demo')
  # A val/test split has its own class count (open-set splits relabel 0..K−1): read it.
  return load_tfds(data_config.path, data_config.data_dir, split,
                   num_classes=data_config.num_classes if split == 'train' else 0)


def source_labels(source: Source) -> np.ndarray:
  """Every label of `source` in index order: its `labels` array if it has one, else read."""
  labels = getattr(source, 'labels', None)
  if labels is not None:
    return np.asarray(labels)
  return np.array([source[i][1] for i in range(len(source))], np.int64)
