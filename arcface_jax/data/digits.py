"""scikit-learn's handwritten digits as a ten-class toy source for the analysis figures.

The 1,797 8×8 digit images ship inside scikit-learn (nothing is downloaded). A 2- or 3-d
embedding of ten classes is what the loss figures need: features on the circle or sphere make
each margin visible (configs/toy.py). Images are scaled from 0..16 to 0..255, upsampled
bilinearly to `image_size` (16 by default) and repeated to three channels.

Splits are deterministic and stratified: within each class, every fifth image (in the dataset's
order) is held out as `test`, the rest is `train`. Held-out images of the same ten classes make
closed-set verification pairs (`digits_verification_pairs`), LFW-style.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from arcface_jax.data.errors import DatasetError

NUM_CLASSES = 10
TEST_EVERY = 5  # every TEST_EVERY-th image of a class is held out


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
  try:
    from sklearn.datasets import load_digits
  except ImportError:
    raise DatasetError(
      "config.data.source='digits' needs scikit-learn: pip install "
      "'arcface_jax[analysis]' (or scikit-learn)"
    ) from None
  digits = load_digits()
  return digits.images.astype(np.float32), digits.target.astype(np.int64)


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
  """Indices of `split` ('train' or 'test') in the dataset's order, stratified by class."""
  if split not in ('train', 'test'):
    raise DatasetError(f'digits split {split!r}: expected "train" or "test"')
  rank = np.zeros(len(labels), np.int64)  # position of each image within its class
  for c in np.unique(labels):
    members = np.nonzero(labels == c)[0]
    rank[members] = np.arange(len(members))
  held_out = rank % TEST_EVERY == TEST_EVERY - 1
  return np.nonzero(held_out if split == 'test' else ~held_out)[0]


def to_rgb_uint8(image: np.ndarray, image_size: int) -> np.ndarray:
  """An 8×8 digit with values 0..16 → uint8 (image_size, image_size, 3)."""
  grey: np.ndarray = np.clip(np.rint(image * (255.0 / 16.0)), 0, 255).astype(np.uint8)
  if grey.shape[0] != image_size:
    grey = cv2.resize(grey, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
  return np.repeat(grey[..., None], 3, axis=-1)


class DigitsSource:
  """The source protocol: `len`, `src[i]` → (uint8 (S, S, 3), label), `num_classes`.

  `num_classes` < 10 keeps only the digits 0..num_classes−1 (the paper's toy has 8 classes).
  """

  def __init__(self, split: str = 'train', image_size: int = 16, num_classes: int = NUM_CLASSES):
    if not 2 <= num_classes <= NUM_CLASSES:
      raise DatasetError(f'digits: num_classes={num_classes} must lie in [2, {NUM_CLASSES}]')
    images, labels = _raw()
    index = split_indices(labels, split)
    index = index[labels[index] < num_classes]  # the first num_classes digits, 0..n−1
    # The whole split is about 1 MB at 16×16: convert once, serve by reference.
    self._images = np.stack([to_rgb_uint8(images[i], image_size) for i in index])
    self._labels = labels[index]
    self.num_classes = int(num_classes)
    self.split = split

  def __len__(self) -> int:
    return len(self._labels)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    index = int(index)
    if not -len(self) <= index < len(self):
      raise IndexError(f'digits/{self.split}[{index}] out of range (size {len(self)})')
    return self._images[index], int(self._labels[index])

  @property
  def labels(self) -> np.ndarray:
    return self._labels


def digits_verification_pairs(
  num_pairs: int, image_size: int = 16, seed: int = 0, num_classes: int = NUM_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (2N, S, S, 3), issame (N,)) from the held-out split; pair i = rows 2i, 2i+1.

  Each of 10 contiguous folds is half positive, half negative, as the synthetic pairs are.
  """
  from arcface_jax.data.pairs import verification_pairs

  source = DigitsSource('test', image_size, num_classes)
  return verification_pairs(source, source.labels, num_pairs, seed)
