"""The verification protocol behind published LFW / CFP-FP / AgeDB numbers (REFERENCE §4).

Embeddings arrive in pair order (2N, D) and are L2-normalised here; the distance is the squared L2
distance of a pair (0..4), and a pair is accepted as "same" when distance < threshold.

* Accuracy: thresholds 0, 0.01, ..., 3.99; 10 contiguous folds without shuffling (the first
  N mod 10 folds get one extra pair, as scikit-learn's KFold(shuffle=False) does); on each fold the
  threshold with the best accuracy on the other nine folds (the smallest on ties) scores the
  held-out fold. Reported: mean and std of the fold accuracies, mean of the chosen thresholds.
* TAR@FAR (the reference's "VAL"): on each fold the threshold whose false-accept rate on the other
  nine folds equals the target, interpolated on a 0.001 grid, scores the held-out fold's positives.
* ROC: true/false accept rates at every threshold of the 0.01 grid, each the mean over the held-out
  folds (as the reference averages them).

Nothing here loops over thresholds or pairs: each fold's accepted counts at every threshold come
from one `searchsorted` over its sorted distances, so 6,000 pairs take a few milliseconds.
"""
from __future__ import annotations

from typing import Any

import numpy as np

THRESHOLDS = np.arange(0.0, 4.0, 0.01)
# The reference interpolates the TAR@FAR threshold on a finer grid than the accuracy search.
FAR_THRESHOLDS = np.arange(0.0, 4.0, 0.001)


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
  """Squared L2 distance between the L2-normalised members of each pair, (N,)."""
  e = np.asarray(embeddings, np.float64)
  if e.ndim != 2 or len(e) % 2:
    raise ValueError(f'embeddings must be (2N, D) in pair order, got shape {e.shape}')
  e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
  return np.sum((e[0::2] - e[1::2]) ** 2, axis=1)


def contiguous_folds(num_pairs: int, nfolds: int) -> list[np.ndarray]:
  """Index arrays of `nfolds` contiguous folds; the first num_pairs % nfolds get one extra."""
  if not 2 <= nfolds <= num_pairs:
    raise ValueError(f'nfolds={nfolds} must be between 2 and the number of pairs ({num_pairs})')
  return np.array_split(np.arange(num_pairs), nfolds)


def _accepted_counts(dist: np.ndarray, folds: list[np.ndarray], thresholds: np.ndarray
                     ) -> np.ndarray:
  """(nfolds, T): how many distances of each fold are strictly below each threshold."""
  return np.stack([np.searchsorted(np.sort(dist[f]), thresholds, side='left') for f in folds])


def _far_threshold(far_by_threshold: np.ndarray, thresholds: np.ndarray,
                   far_target: float) -> float:
  """The threshold whose false-accept rate is far_target, linearly interpolated.

  FAR is a step function of the threshold, so many thresholds share one FAR value. Each distinct
  value is represented by the largest threshold that reaches it (the most permissive operating
  point with that FAR, which is also where the reference's interpolation lands), so a plateau of
  FAR 0 does not pull the threshold to 0. Below the target everywhere: threshold 0 (the reference).
  """
  if far_by_threshold.max() < far_target:
    return 0.0
  reversed_far = far_by_threshold[::-1]
  far_unique, first_in_reversed = np.unique(reversed_far, return_index=True)
  last = len(far_by_threshold) - 1 - first_in_reversed
  return float(np.interp(far_target, far_unique, thresholds[last]))


def evaluate(embeddings: np.ndarray, issame: np.ndarray, nfolds: int = 10,
             far_target: float = 1e-3) -> dict[str, Any]:
  """Scores pair-ordered embeddings (2N, D) against issame (N,) with the 10-fold protocol.

  Returns a dict: `accuracy` (mean of the fold accuracies), `std`, `fold_accuracies` (nfolds,),
  `threshold` (mean best threshold), `best_thresholds` (nfolds,), `tar_at_far` (mean over folds,
  at `far_target`), `tar_at_far_std`, `far_achieved` (mean held-out FAR at those thresholds),
  `far_target`, and the ROC: `thresholds` (T,), `tar` and `far` (T,) (aliases `tpr`, `fpr`).
  """
  issame = np.asarray(issame, bool)
  dist = pair_distances(embeddings)
  if issame.ndim != 1 or len(dist) != len(issame):
    raise ValueError(f'{len(dist)} pairs of embeddings but {issame.size} issame labels')
  folds = contiguous_folds(len(issame), nfolds)
  fold_pos = np.array([issame[f].sum() for f in folds])  # (F,)
  fold_neg = np.array([len(f) for f in folds]) - fold_pos
  pos_dist, neg_dist = np.where(issame, dist, np.inf), np.where(issame, np.inf, dist)

  # Accuracy at every threshold: accepted positives plus rejected negatives, per fold.
  tp = _accepted_counts(pos_dist, folds, THRESHOLDS)  # (F, T)
  fp = _accepted_counts(neg_dist, folds, THRESHOLDS)
  correct = tp + (fold_neg[:, None] - fp)
  train_correct = correct.sum(0)[None, :] - correct  # the other folds, (F, T)
  best = np.argmax(train_correct, axis=1)  # argmax takes the first (smallest) on ties
  fold_sizes = fold_pos + fold_neg
  accuracies = correct[np.arange(len(folds)), best] / fold_sizes

  # ROC: per-fold rates on the held-out fold, averaged over folds (0 where a fold lacks a class).
  tar = np.mean(np.divide(tp, fold_pos[:, None], out=np.zeros(tp.shape),
                          where=fold_pos[:, None] > 0), axis=0)
  far = np.mean(np.divide(fp, fold_neg[:, None], out=np.zeros(fp.shape),
                          where=fold_neg[:, None] > 0), axis=0)

  # TAR at the FAR target: threshold from the training folds' FAR, scored on the held-out fold.
  fp_fine = _accepted_counts(neg_dist, folds, FAR_THRESHOLDS)  # (F, T_fine)
  train_neg = fold_neg.sum() - fold_neg
  tars, fars = [], []
  for k, test in enumerate(folds):
    far_train = (fp_fine.sum(0) - fp_fine[k]) / max(train_neg[k], 1)
    threshold = _far_threshold(far_train, FAR_THRESHOLDS, far_target)
    accepted = dist[test] < threshold
    same = issame[test]
    tars.append(accepted[same].mean() if same.any() else 0.0)
    fars.append(accepted[~same].mean() if (~same).any() else 0.0)
  return {
      'accuracy': float(np.mean(accuracies)),
      'std': float(np.std(accuracies)),
      'fold_accuracies': accuracies,
      'threshold': float(np.mean(THRESHOLDS[best])),
      'best_thresholds': THRESHOLDS[best],
      'tar_at_far': float(np.mean(tars)),
      'tar_at_far_std': float(np.std(tars)),
      'far_achieved': float(np.mean(fars)),
      'far_target': float(far_target),
      'thresholds': THRESHOLDS,
      'tar': tar,
      'far': far,
      'tpr': tar,
      'fpr': far,
  }
