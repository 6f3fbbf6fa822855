"""LFW-style verification pairs drawn from any labelled source (held-out identities or images).

The synthetic, digits and folder sources all hold out a split; these functions turn that split into
`(images (2N, S, S, 3), issame (N,))` in the layout of the `.bin` sets, so the 10-fold protocol and
the evaluator treat every set the same way. Pair i is (images[2i], images[2i + 1]); the folds are
balanced (`balanced_fold_labels`) and the draw is a pure function of (labels, num_pairs, seed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from arcface_jax.data.decode import resize
from arcface_jax.data.errors import CorruptSampleError, DatasetError

if TYPE_CHECKING:
  from arcface_jax.data.sources import Source

_LOGGED_EXAMPLES = 5


def balanced_fold_labels(num_pairs: int, nfolds: int = 10) -> np.ndarray:
  """issame (num_pairs,) with each contiguous fold half positive, half negative (LFW's layout).

  Folds are numpy.array_split's (as the verification protocol cuts them); within a fold the
  positives come first. A fold of odd size gets the extra pair positive and negative in turn, so
  the whole list is balanced to within one pair.
  """
  issame = np.zeros(num_pairs, bool)
  extra = 1
  for fold in np.array_split(np.arange(num_pairs), min(nfolds, max(num_pairs, 1))):
    positives = len(fold) // 2
    if len(fold) % 2:
      positives += extra
      extra = 1 - extra
    issame[fold[:positives]] = True
  return issame


def sample_pair_indices(
  labels: np.ndarray, num_pairs: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """(pairs int64 (N, 2) of indices into `labels`, issame bool (N,)).

  Positive pairs are two different images of one identity (drawn among identities with at least
  two images), negative pairs one image each of two identities.
  """
  if num_pairs < 1:
    raise ValueError(f'num_pairs={num_pairs} must be positive')
  labels = np.asarray(labels)
  classes = np.unique(labels)
  by_label = [np.nonzero(labels == c)[0] for c in classes]
  repeated = [members for members in by_label if len(members) >= 2]
  if not repeated or len(by_label) < 2:
    raise DatasetError(
      f'{len(labels)} images of {len(by_label)} identities cannot make '
      'verification pairs: they need two identities and one identity with two '
      'images; hold out more data'
    )
  rng = np.random.default_rng(seed)
  issame = balanced_fold_labels(num_pairs)
  pairs = np.empty((num_pairs, 2), np.int64)
  for k, same in enumerate(issame):
    if same:
      pairs[k] = rng.choice(repeated[rng.integers(len(repeated))], 2, replace=False)
    else:
      first, second = rng.choice(len(by_label), 2, replace=False)
      pairs[k] = rng.choice(by_label[first]), rng.choice(by_label[second])
  return pairs, issame


def verification_pairs(
  source: Source, labels: np.ndarray, num_pairs: int, seed: int = 0, image_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (2N, S, S, 3), issame (N,)) from `source[i] → (image, label)`.

  `labels` are the source's labels in index order (read without decoding). Images that fail to
  decode are left out and the pairs drawn again without them, so one corrupt file in a held-out
  split changes which pairs are drawn but never stops the evaluation. Images are resized to
  `image_size` when given.
  """
  labels = np.asarray(labels)
  usable = np.ones(len(labels), bool)
  bad: list[str] = []
  while True:
    indices = np.nonzero(usable)[0]
    pairs, issame = sample_pair_indices(labels[indices], num_pairs, seed)
    pairs = indices[pairs]
    images, failed = {}, []
    for index in np.unique(pairs).tolist():
      try:
        image = np.asarray(source[index][0])
        images[index] = image if image_size is None else resize(image, (image_size, image_size))
      except CorruptSampleError as e:
        failed.append(index)
        bad.append(f'{e.key} ({e.reason})')
    if not failed:
      break
    usable[failed] = False
  if bad:
    from absl import logging

    logging.warning(
      'verification pairs: left out %d unreadable images (e.g. %s)',
      len(bad),
      bad[:_LOGGED_EXAMPLES],
    )
  return np.stack([images[i] for i in pairs.reshape(-1).tolist()]), issame
