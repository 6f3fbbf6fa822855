"""The verification protocol behind published LFW / CFP-FP / AgeDB numbers (REFERENCE §4).

Embeddings arrive in pair order (2N, D) and are L2-normalised here; the distance is the squared L2
distance of a pair (0..4); thresholds 0, 0.01, ..., 3.99; 10 contiguous folds without shuffling
(the first N mod 10 folds get one extra pair, as scikit-learn's KFold does); on each fold the
threshold with the best accuracy on the other nine folds scores the held-out fold. Every
threshold is scored in one broadcast pass, so 6,000 pairs take milliseconds.
"""
from __future__ import annotations

import numpy as np

THRESHOLDS = np.arange(0.0, 4.0, 0.01)


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
  """Squared L2 distance between the L2-normalised members of each pair, (N,)."""
  e = np.asarray(embeddings, np.float64)
  if e.ndim != 2 or len(e) % 2:
    raise ValueError(f'embeddings must be (2N, D) in pair order, got shape {e.shape}')
  e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
  return np.sum((e[0::2] - e[1::2]) ** 2, axis=1)


def contiguous_folds(num_pairs: int, nfolds: int) -> list[np.ndarray]:
  if not 2 <= nfolds <= num_pairs:
    raise ValueError(f'nfolds={nfolds} must be between 2 and the number of pairs ({num_pairs})')
  return np.array_split(np.arange(num_pairs), nfolds)


def _far_threshold(far_by_threshold: np.ndarray, far_target: float) -> float:
  """The threshold whose false-accept rate is far_target, linearly interpolated.

  Each distinct FAR value is represented by the largest threshold that reaches it (the most
  permissive operating point with that FAR), so a plateau of FAR 0 does not pull the threshold to 0.
  """
  if far_by_threshold.max() < far_target:
    return 0.0
  reversed_far = far_by_threshold[::-1]
  far_unique, first_in_reversed = np.unique(reversed_far, return_index=True)
  last = len(far_by_threshold) - 1 - first_in_reversed
  return float(np.interp(far_target, far_unique, THRESHOLDS[last]))


def evaluate(embeddings: np.ndarray, issame: np.ndarray, nfolds: int = 10,
             far_target: float = 1e-3) -> dict:
  """accuracy (mean of folds), std, threshold (mean best), tar_at_far, and the ROC arrays."""
  issame = np.asarray(issame, bool)
  dist = pair_distances(embeddings)
  if len(dist) != len(issame):
    raise ValueError(f'{len(dist)} pairs of embeddings but {len(issame)} issame labels')
  accept = dist[None, :] < THRESHOLDS[:, None]  # (T, N)
  correct = accept == issame[None, :]
  accuracies, best_thresholds, tars, fars = [], [], [], []
  for test in contiguous_folds(len(issame), nfolds):
    train = np.ones(len(issame), bool)
    train[test] = False
    best = int(np.argmax(correct[:, train].mean(axis=1)))
    best_thresholds.append(THRESHOLDS[best])
    accuracies.append(correct[best, test].mean())
    # TAR at the FAR target: threshold interpolated on the training folds, scored on the test fold.
    negatives_train = train & ~issame
    far_train = accept[:, negatives_train].mean(axis=1) if negatives_train.any() else \
        np.zeros(len(THRESHOLDS))
    threshold = _far_threshold(far_train, far_target)
    accepted = dist[test] < threshold
    same_test = issame[test]
    tars.append(accepted[same_test].mean() if same_test.any() else 0.0)
    fars.append(accepted[~same_test].mean() if (~same_test).any() else 0.0)
  positives, negatives = issame.sum(), (~issame).sum()
  tpr = accept[:, issame].sum(axis=1) / max(positives, 1)
  fpr = accept[:, ~issame].sum(axis=1) / max(negatives, 1)
  return {
      'accuracy': float(np.mean(accuracies)),
      'std': float(np.std(accuracies)),
      'fold_accuracies': np.array(accuracies),
      'threshold': float(np.mean(best_thresholds)),
      'tar_at_far': float(np.mean(tars)),
      'far': float(np.mean(fars)),
      'thresholds': THRESHOLDS,
      'tpr': tpr,
      'fpr': fpr,
  }
