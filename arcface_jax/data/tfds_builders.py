"""TFDS builders (array_record format, no TensorFlow) for image folders and RecordIO directories.

Convert once, then read with random access through `tfds.data_source` (and so through the
'tfds' training source, `--config.data.source=tfds --config.data.path=face_folder/casia`):

  python -m arcface_jax.data.tfds_builders folder ROOT --data_dir data --name casia \
      [--split_by identity --val_fraction 0.05 --test_fraction 0.05 --seed 0]
  python -m arcface_jax.data.tfds_builders recordio DIR --data_dir data --name ms1mv3

Features: `image` (the original encoded bytes: TFDS's own numpy → JPEG encoder needs TensorFlow,
and re-encoding would lose quality anyway), `label` (ClassLabel) and `identity` (folder name, or
the label as text for RecordIO). The builders are not registered by name: what is built is read
back from its files (features and splits come from dataset_info.json), so reading needs no code
from here and works in any process.

Splits: a folder gives 'train' and, when its fractions ask for them, 'val' and 'test' (the same
deterministic splits as `FolderDataset`; with split_by='identity' labels are 0..K−1 within each
split, so `label.num_classes` is the largest split's count). RecordIO gives 'train'. Unreadable
files and records are skipped, counted and logged while converting. The source and `--data_dir`
may be local or URIs (`gs://...`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, Callable, Iterator, Sequence

import tensorflow_datasets as tfds
from absl import app, logging
from absl.flags import argparse_flags

from arcface_jax import paths
from arcface_jax.data.decode import looks_like_image
from arcface_jax.data.errors import CorruptSampleError, DatasetError
from arcface_jax.data.folder import FolderDataset
from arcface_jax.data.recordio import RecordDataset

_LOGGED_EXAMPLES = 5


def _features(num_classes: int) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict(
    {
      # shape (None, None, 3): face datasets mix sizes; the bytes pass through unchanged.
      'image': tfds.features.Image(shape=(None, None, 3)),
      'label': tfds.features.ClassLabel(num_classes=max(num_classes, 1)),
      'identity': tfds.features.Text(),
    }
  )


def _examples(
  dataset: FolderDataset | RecordDataset,
  keys: Sequence[Any],
  origin: str,
  identity: Callable[[int], str],
) -> Iterator[tuple[Any, dict[str, Any]]]:
  """(key, example) for every image of `dataset` (`raw(i)` → (bytes, label)) that reads and
  starts like a JPEG/PNG/BMP; the others are skipped, counted and logged."""
  skipped = []
  for index, key in enumerate(keys):
    try:
      data, label = dataset.raw(index)
      if not looks_like_image(data[:16]):
        raise CorruptSampleError(key, 'not a JPEG, PNG or BMP image')
    except CorruptSampleError as e:
      skipped.append(f'{key} ({e.reason})')
      continue
    yield key, {'image': data, 'label': label, 'identity': identity(label)}
  if skipped:
    logging.warning(
      '%s: skipped %d unreadable samples while converting (e.g. %s)',
      origin,
      len(skipped),
      skipped[:_LOGGED_EXAMPLES],
    )


# tfds.core.RegisteredDataset.__init_subclass__ takes skip_registration, which mypy does not see
# through tfds (it reports object.__init_subclass__).
class FaceFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):  # type: ignore[call-arg]
  """A folder-per-identity tree (see `arcface_jax.data.folder`) as a TFDS dataset."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}

  def __init__(
    self,
    *,
    root: paths.PathLike,
    name: str = 'default',
    split_by: str = 'identity',
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    seed: int = 0,
    **kwargs: Any,
  ):
    self._splits = {}
    for split in ('train', 'val', 'test'):
      if split == 'train' or (val_fraction if split == 'val' else test_fraction) > 0:
        self._splits[split] = FolderDataset(
          root, split, split_by, val_fraction, test_fraction, seed
        )
    self._root = os.fspath(root)
    config = tfds.core.BuilderConfig(
      name=name,
      description=f'{root} split_by={split_by} val_fraction={val_fraction} '
      f'test_fraction={test_fraction} seed={seed}',
    )
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    classes = max(ds.num_classes for ds in self._splits.values())
    return self.dataset_info_from_configs(
      features=_features(classes), supervised_keys=('image', 'label')
    )

  def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
    del dl_manager
    return {split: self._generate_examples(ds) for split, ds in self._splits.items()}

  def _generate_examples(self, ds: FolderDataset) -> Iterator[tuple[str, dict[str, Any]]]:
    # Keys relative to the root: string arithmetic, the same for a local path and a URI.
    keys = [os.path.relpath(path, self._root) for path in ds.paths]
    return _examples(ds, keys, self._root, ds.identities.__getitem__)


# skip_registration: as for FaceFolder.
class FaceRecordIO(tfds.core.GeneratorBasedBuilder, skip_registration=True):  # type: ignore[call-arg]
  """The images of a RecordIO directory (train.rec, train.idx) as a TFDS dataset."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}

  def __init__(self, *, directory: paths.PathLike, name: str = 'default', **kwargs: Any):
    self._records = RecordDataset(directory)
    config = tfds.core.BuilderConfig(name=name, description=f'{directory}')
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=_features(self._records.num_classes), supervised_keys=('image', 'label')
    )

  def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
    del dl_manager
    return {'train': self._generate_examples()}

  def _generate_examples(self) -> Iterator[tuple[int, dict[str, Any]]]:
    return _examples(self._records, self._records.keys.tolist(), self._records.rec_path, str)


def _prepare(builder: tfds.core.GeneratorBasedBuilder) -> str:
  builder.download_and_prepare(file_format='array_record')
  return f'{builder.name}/{builder.builder_config.name}'


def build_folder(
  root: paths.PathLike,
  data_dir: paths.PathLike,
  *,
  name: str = 'default',
  split_by: str = 'identity',
  val_fraction: float = 0.0,
  test_fraction: float = 0.0,
  seed: int = 0,
) -> str:
  """Converts an identity-folder tree; returns the TFDS name to read it by ('face_folder/NAME')."""
  return _prepare(
    FaceFolder(
      root=root,
      name=name,
      split_by=split_by,
      val_fraction=val_fraction,
      test_fraction=test_fraction,
      seed=seed,
      data_dir=os.fspath(paths.resolve(data_dir)),
    )
  )


def build_recordio(
  directory: paths.PathLike, data_dir: paths.PathLike, *, name: str = 'default'
) -> str:
  """Converts a RecordIO directory; returns the TFDS name to read it by ('face_record_io/NAME')."""
  data_dir = os.fspath(paths.resolve(data_dir))
  return _prepare(FaceRecordIO(directory=directory, name=name, data_dir=data_dir))


def _parse(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse_flags.ArgumentParser(
    prog='python -m arcface_jax.data.tfds_builders',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument('kind', choices=('folder', 'recordio'))
  parser.add_argument('path', help='identity-folder root, or RecordIO directory')
  parser.add_argument('--data_dir', required=True, help='where TFDS datasets live')
  parser.add_argument('--name', default='default', help='builder config name')
  parser.add_argument('--split_by', choices=('identity', 'image'), default='identity')
  parser.add_argument('--val_fraction', type=float, default=0.0)
  parser.add_argument('--test_fraction', type=float, default=0.0)
  parser.add_argument('--seed', type=int, default=0)
  return parser.parse_args(argv[1:])


def main(args: argparse.Namespace) -> None:
  # Under `python -m` this file is `__main__`, where TFDS cannot find a package for the builder
  # classes; use them from the imported module instead.
  builders = importlib.import_module('arcface_jax.data.tfds_builders')
  try:
    if args.kind == 'folder':
      name = builders.build_folder(
        args.path,
        args.data_dir,
        name=args.name,
        split_by=args.split_by,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
      )
    else:
      name = builders.build_recordio(args.path, args.data_dir, name=args.name)
  except DatasetError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(
    f'built {name} in {args.data_dir}: tfds.data_source({name!r}, '
    f'data_dir={args.data_dir!r}) or --config.data.source=tfds --config.data.path={name} '
    f'--config.data.data_dir={args.data_dir}'
  )


if __name__ == '__main__':
  app.run(main, flags_parser=_parse)
