"""Image folders as a training source: one sub-folder per identity (CASIA-WebFace, VGGFace2 style).

  root/<identity>/<image>.{jpg,jpeg,png,bmp}      (extensions case-insensitive)

Identities are sorted by folder name. Files that are not images by extension, nested folders and
hidden entries are skipped when indexing, as are identity folders left with no image; both are
counted (`skipped_files`, `empty_identities`) and logged once. A file that has an image extension
but does not decode raises `CorruptSampleError` when read, for the pipeline to skip and count.
Non-square photos are centre-cropped to a square when read (logged once per tree), not stretched.

Splits are deterministic in `seed` and stable as a dataset grows: each identity (or image) is
ranked by a hash of the seed and its name, not by a shuffled position, so adding one identity
moves at most one other across a split boundary.

`root` may be local or a URI (`gs://bucket/casia`): listing and reads go through `paths`
(os.scandir / open locally, `epath` for a URI), and images decode from their bytes.
- split_by='identity' (open-set, like LFW): whole identities go to val / test; labels are
  re-indexed 0..K_split−1 within each split, in folder-name order.
- split_by='image' (closed-set): each identity's images are split by the fractions (its expected
  share, rounded up or down by a hash so the totals come out right on average); every identity
  keeps at least one training image, and labels are shared across splits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os

import numpy as np
from absl import logging

from arcface_jax import paths as uri_paths
from arcface_jax.data.decode import center_crop_square, decode_image
from arcface_jax.data.errors import CorruptSampleError, DatasetError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')
SPLITS = ('train', 'val', 'test', 'all')
_LOGGED_EXAMPLES = 5


@dataclasses.dataclass
class FolderScan:
  """What indexing a folder tree found."""

  identities: list[tuple[str, list[str]]]  # (name, sorted image paths), non-empty, sorted by name
  skipped_files: list[str]  # entries inside identity folders that are not image files
  empty_identities: list[str]  # identity folders with no image file


def scan_identities(root: uri_paths.PathLike) -> FolderScan:
  """Indexes `root`; DatasetError if it is not a directory or holds no identity with images."""
  root = os.fspath(root)
  if not uri_paths.is_dir(root):
    raise DatasetError(
      f'{root} is not a directory; expected a folder with one sub-folder of images per identity'
    )
  identities, skipped, empty = [], [], []
  folders = [
    name for name, is_dir, _ in uri_paths.list_dir(root) if is_dir and not name.startswith('.')
  ]
  for name in folders:
    folder = uri_paths.join(root, name)
    images = []
    for entry, _, is_file in uri_paths.list_dir(folder):
      path = uri_paths.join(folder, entry)
      if is_file and not entry.startswith('.') and entry.lower().endswith(IMAGE_EXTENSIONS):
        images.append(path)
      else:
        skipped.append(path)
    if images:
      identities.append((name, sorted(images)))
    else:
      empty.append(folder)
  if skipped or empty:
    logging.warning(
      '%s: skipped %d non-image entries (e.g. %s) and %d identity folders without images (e.g. %s)',
      root,
      len(skipped),
      sorted(skipped)[:_LOGGED_EXAMPLES],
      len(empty),
      empty[:_LOGGED_EXAMPLES],
    )
  if not identities:
    raise DatasetError(
      f'{root} has no identity sub-folders with images '
      f'({", ".join(IMAGE_EXTENSIONS)}); expected root/<identity>/<image>'
    )
  return FolderScan(identities, sorted(skipped), empty)


def list_identities(root: uri_paths.PathLike) -> list[tuple[str, list[str]]]:
  """[(identity name, sorted image paths)] for every non-empty sub-folder, sorted by name."""
  return scan_identities(root).identities


def _rank(seed: int, text: str) -> int:
  """A stable pseudo-random rank (Python's hash() is salted per process, so not that)."""
  return int.from_bytes(hashlib.sha256(f'{seed}\0{text}'.encode()).digest()[:8], 'little')


def _uniform(seed: int, text: str) -> float:
  return _rank(seed, text) / 2.0**64


def _identity_share(total: int, fraction: float) -> int:
  """Identities held out for a fraction: at least one when the fraction asks for any."""
  return 0 if fraction <= 0 else max(1, int(round(fraction * total)))


def _image_share(count: int, fraction: float, u: float) -> int:
  """floor(fraction × count), plus one with probability equal to the remainder (drawn as u)."""
  expected = fraction * count
  return int(math.floor(expected)) + (1 if u < expected - math.floor(expected) else 0)


def split_identities(
  names: list[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[str]]:
  """{'train', 'val', 'test'}: disjoint sets of identity names (each sorted)."""
  order = sorted(names, key=lambda n: (_rank(seed, n), n))
  n_test = _identity_share(len(names), test_fraction)
  n_val = _identity_share(len(names), val_fraction)
  if n_test + n_val >= len(names):
    raise DatasetError(
      f'{len(names)} identities cannot be split into val_fraction='
      f'{val_fraction} and test_fraction={test_fraction} with any left for '
      'training; lower the fractions or add identities'
    )
  return {
    'test': sorted(order[:n_test]),
    'val': sorted(order[n_test : n_test + n_val]),
    'train': sorted(order[n_test + n_val :]),
  }


def split_images(
  name: str, paths: list[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[str]]:
  """{'train', 'val', 'test'}: one identity's images, at least one kept for training."""
  order = sorted(paths, key=lambda p: (_rank(seed, f'{name}/{os.path.basename(p)}'), p))
  n_test = _image_share(len(paths), test_fraction, _uniform(seed, f'test\0{name}'))
  n_val = _image_share(len(paths), val_fraction, _uniform(seed, f'val\0{name}'))
  excess = n_test + n_val - (len(paths) - 1)
  if excess > 0:  # the identity must stay in train (closed set): give back val first, then test
    taken = min(excess, n_val)
    n_val -= taken
    n_test -= excess - taken
  return {
    'test': sorted(order[:n_test]),
    'val': sorted(order[n_test : n_test + n_val]),
    'train': sorted(order[n_test + n_val :]),
  }


class FolderDataset:
  """A folder-per-identity tree: `len`, `ds[i] → (RGB uint8 HWC, label)`, `num_classes`.

  Attributes: `paths` and `labels` of this split's images, `identities` (name of each label),
  `skipped_files` and `empty_identities` (what indexing passed over, over the whole tree).
  """

  def __init__(
    self,
    root: uri_paths.PathLike,
    split: str = 'train',
    split_by: str = 'identity',
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    seed: int = 0,
  ):
    if split not in SPLITS:
      raise ValueError(f'split={split!r}: expected one of {SPLITS}')
    if split_by not in ('identity', 'image'):
      raise ValueError(f"split_by={split_by!r}: expected 'identity' or 'image'")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
      raise ValueError(
        f'val_fraction={val_fraction} and test_fraction={test_fraction} must be '
        'in [0, 1) and sum to less than 1'
      )
    self.root, self.split, self.split_by = os.fspath(root), split, split_by
    scan = scan_identities(root)
    self.skipped_files, self.empty_identities = scan.skipped_files, scan.empty_identities
    by_name = dict(scan.identities)
    names = [name for name, _ in scan.identities]

    if split == 'all':
      chosen = [(name, by_name[name]) for name in names]
    elif split_by == 'identity':
      members = split_identities(names, val_fraction, test_fraction, seed)[split]
      chosen = [(name, by_name[name]) for name in members]
    else:
      chosen = [
        (name, split_images(name, by_name[name], val_fraction, test_fraction, seed)[split])
        for name in names
      ]
    if split_by == 'identity' or split == 'all':
      self.identities = [name for name, _ in chosen]
    else:
      self.identities = names  # closed set: one label space shared by all splits
    label_of = {name: label for label, name in enumerate(self.identities)}
    self.paths = [path for _, paths in chosen for path in paths]
    self.labels = np.array([label_of[name] for name, paths in chosen for _ in paths], np.int64)
    self.num_classes = len(self.identities)
    if not self.paths:
      raise DatasetError(
        f'{root}: split {split!r} (split_by={split_by!r}, val_fraction='
        f'{val_fraction}, test_fraction={test_fraction}) holds no images; '
        'raise its fraction'
      )

  @property
  def num_skipped_files(self) -> int:
    return len(self.skipped_files)

  @property
  def num_empty_identities(self) -> int:
    return len(self.empty_identities)

  def __len__(self) -> int:
    return len(self.paths)

  def raw(self, index: int) -> tuple[bytes, int]:
    """(encoded file bytes, label) of image `index`, not decoded."""
    path = self.paths[index]
    try:
      return uri_paths.read_bytes(path), int(self.labels[index])
    except OSError as e:
      raise CorruptSampleError(path, f'cannot be read ({e.strerror or e})') from None

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    """(RGB uint8 (S, S, 3), label): a non-square photo is centre-cropped to a square (see
    `decode.center_crop_square`), never stretched; the first one is logged."""
    data, label = self.raw(int(index))
    image = decode_image(data, self.paths[int(index)])
    if image.shape[0] != image.shape[1]:
      _log_first_crop(self.root, self.paths[int(index)], image.shape)
      image = center_crop_square(image)
    return image, label


_cropped_roots: set[str] = set()


def _log_first_crop(root: str, path: str, shape: tuple[int, ...]) -> None:
  """One line per folder tree and process: the first non-square photo and what is done to it."""
  if root in _cropped_roots:
    return
  _cropped_roots.add(root)
  logging.warning(
    '%s holds non-square photos (e.g. %s, %dx%d): they are centre-cropped to a square '
    '(not stretched) before resizing; align raw photos to 112x112 first for best '
    'results',
    root,
    path,
    shape[1],
    shape[0],
  )
