"""1:N identification: closed-set rank-k accuracy and open-set DIR at FAR.

The gallery is enrolled as one template per identity (its embeddings L2-normalised, averaged and
normalised again); a probe's score against an identity is the cosine with that template.

* Closed set: over the probes whose identity is enrolled ("mated"), the fraction whose true
  identity is among the k best-scoring identities. An identity tying the true one does not push
  it down (rank = number of identities scoring strictly higher).
* Open set (IJB-C 1:N style): the threshold for a FAR is set on the probes whose identity is not
  enrolled ("non-mated"): at most FAR x #non-mated of their best scores may exceed it. DIR is the
  fraction of mated probes whose best-scoring identity is the true one and scores above it.

Gallery and probe folders (one sub-folder per identity, aligned crops) are read by
`read_identity_folder`; everything else is NumPy on embeddings and labels.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from arcface_jax import paths
from arcface_jax.evaluation.ijb import threshold_at_far

RANKS = (1, 5)
FARS = (1e-3, 1e-2, 1e-1)


def _normalise(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def enroll(embeddings: np.ndarray, labels: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  """(identities (K,) sorted, templates (K, D) L2-normalised): per-identity mean of unit vectors."""
  identities, index = np.unique(np.asarray(labels), return_inverse=True)
  templates = np.zeros((len(identities), np.shape(embeddings)[1]))
  np.add.at(templates, index.reshape(-1), _normalise(embeddings))
  return identities, _normalise(templates)


def score_probes(
  gallery_embeddings: np.ndarray,
  gallery_labels: npt.ArrayLike,
  probe_embeddings: np.ndarray,
  probe_labels: npt.ArrayLike,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(scores (P, K) cosine, true column (P,) or -1 for non-mated probes, identities (K,))."""
  identities, templates = enroll(gallery_embeddings, gallery_labels)
  scores = _normalise(probe_embeddings) @ templates.T
  probe_array = np.asarray(probe_labels)
  column = np.clip(np.searchsorted(identities, probe_array), 0, len(identities) - 1)
  true = np.where(identities[column] == probe_array, column, -1)
  return scores, true, identities


def closed_set_accuracy(
  scores: np.ndarray, true: np.ndarray, ranks: Sequence[int] = RANKS
) -> dict[int, float]:
  """{k: fraction of mated probes whose identity is within the top k}; non-mated are ignored."""
  mated = true >= 0
  if not mated.any():
    raise ValueError('no probe identity is enrolled in the gallery: closed-set rank undefined')
  s = scores[mated]
  true_score = s[np.arange(len(s)), true[mated]]
  rank = np.sum(s > true_score[:, None], axis=1)  # 0 = best
  return {int(k): float(np.mean(rank < k)) for k in ranks}


def dir_at_far(
  scores: np.ndarray, true: np.ndarray, fars: Sequence[float] = FARS
) -> dict[float, dict[str, float]]:
  """{far: {'dir', 'threshold', 'far_achieved'}}: detection and identification rate at rank 1."""
  mated = true >= 0
  if mated.all() or not mated.any():
    raise ValueError(
      'open-set DIR needs both mated and non-mated probes '
      f'({int(mated.sum())} mated, {int((~mated).sum())} non-mated)'
    )
  best = np.argmax(scores, axis=1)
  best_score = scores[np.arange(len(scores)), best]
  nonmated_best = best_score[~mated]
  identified = best[mated] == true[mated]
  results = {}
  for far in fars:
    threshold = threshold_at_far(nonmated_best, far)
    results[float(far)] = {
      'dir': float(np.mean(identified & (best_score[mated] > threshold))),
      'threshold': float(threshold),
      'far_achieved': float(np.mean(nonmated_best > threshold)),
    }
  return results


def evaluate_identification(
  gallery_embeddings: np.ndarray,
  gallery_labels: npt.ArrayLike,
  probe_embeddings: np.ndarray,
  probe_labels: npt.ArrayLike,
  *,
  ranks: Sequence[int] = RANKS,
  fars: Sequence[float] = FARS,
) -> dict[str, Any]:
  """Closed-set rank-k over mated probes and, when some probes are non-mated, DIR at each FAR."""
  scores, true, identities = score_probes(
    gallery_embeddings, gallery_labels, probe_embeddings, probe_labels
  )
  mated = int((true >= 0).sum())
  result: dict[str, Any] = {
    'num_identities': int(len(identities)),
    'num_mated': mated,
    'num_nonmated': int(len(true) - mated),
  }
  result.update({f'rank{k}': v for k, v in closed_set_accuracy(scores, true, ranks).items()})
  if 0 < mated < len(true):
    result['dir_at_far'] = dir_at_far(scores, true, fars)
  return result


def read_identity_folder(root: paths.PathLike, image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 RGB (M, S, S, 3), identity names (M,)) from a folder of identity folders.

  A non-square image is centre-cropped to a square before resizing, as training folders are
  (`decode.center_crop_square`): never stretched."""
  from arcface_jax.data.decode import center_crop_square, resize
  from arcface_jax.data.errors import DatasetError
  from arcface_jax.data.folder import list_identities
  from arcface_jax.data.verification_bin import decode_image

  images, labels = [], []
  for name, files in list_identities(root):
    for path in files:
      image = decode_image(paths.read_bytes(path))
      if image is None:
        raise DatasetError(f'{path} cannot be decoded as an image')
      images.append(resize(center_crop_square(image), (image_size, image_size)))
      labels.append(name)
  return np.stack(images), np.array(labels)
