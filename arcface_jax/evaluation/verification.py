"""The verification protocol behind published LFW / CFP-FP / AgeDB numbers (REFERENCE §4).

Embeddings arrive in pair order (2N, D) and are L2-normalised here; the distance is the squared L2
distance of a pair (0..4), and a pair is accepted as "same" when distance < threshold.

* Accuracy: thresholds 0, 0.01, ..., 3.99; 10 contiguous folds without shuffling (the first
  N mod 10 folds get one extra pair, as scikit-learn's KFold(shuffle=False) does); on each fold the
  threshold with the best accuracy on the other nine folds (the smallest on ties) scores the
  held-out fold. Reported: mean and std of the fold accuracies, mean of the chosen thresholds.
* TAR@FAR (the reference's "VAL"): on each fold the threshold whose false-accept rate on the other
  nine folds equals the target, interpolated on a 0.001 grid exactly as the reference's
  `interp1d(kind='slinear')` does (see `_far_threshold`), scores the held-out fold's positives.
* ROC: true/false accept rates at every threshold of the 0.01 grid, each the mean over the held-out
  folds (as the reference averages them).

Nothing here loops over thresholds or pairs: each fold's accepted counts at every threshold come
from one `searchsorted` over its sorted distances, so 6,000 pairs take a few milliseconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from absl import logging

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


def one_class_folds(issame: np.ndarray, nfolds: int) -> tuple[list[int], list[int]]:
  """(folds holding only matched pairs, folds holding only mismatched pairs), 1-based."""
  issame = np.asarray(issame, bool)
  folds = contiguous_folds(len(issame), nfolds)
  only_matched = [k + 1 for k, f in enumerate(folds) if issame[f].all()]
  only_mismatched = [k + 1 for k, f in enumerate(folds) if not issame[f].any()]
  return only_matched, only_mismatched


def fold_balance_warning(issame: np.ndarray, nfolds: int, name: str) -> str | None:
  """The warning for a set whose consecutive folds hold one kind of pair only, else None.

  The protocol keeps insightface's consecutive folds so numbers compare with published ones; on
  a set stored with all matched pairs first (e.g. one LFW set written in pairs.txt order) a fold
  then picks its threshold on the other folds' mix and is scored on one class only: accuracy is
  skewed and TAR@FAR is computed on a fold without negatives.
  """
  only_matched, only_mismatched = one_class_folds(issame, nfolds)
  if not (only_matched or only_mismatched):
    return None
  parts = []
  if only_matched:
    parts.append(f'fold(s) {only_matched} hold only matched pairs')
  if only_mismatched:
    parts.append(f'fold(s) {only_mismatched} hold only mismatched pairs')
  return (
    f'verification set {name!r}: {" and ".join(parts)} of its {nfolds} consecutive folds, '
    'so its accuracy and TAR@FAR are skewed and do not compare with published numbers. '
    'Store the pairs so that every tenth of the file mixes matched and mismatched pairs '
    '(as insightface\'s lfw.bin does: 300 matched then 300 mismatched per tenth), e.g. '
    'reorder the lines of the pairs list given to `python -m arcface_jax.data.'
    'verification_bin make`.'
  )


def _accepted_counts(
  dist: np.ndarray, folds: list[np.ndarray], thresholds: np.ndarray
) -> np.ndarray:
  """(nfolds, T): how many distances of each fold are strictly below each threshold."""
  return np.stack([np.searchsorted(np.sort(dist[f]), thresholds, side='left') for f in folds])


def _far_threshold(
  far_by_threshold: np.ndarray, thresholds: np.ndarray, far_target: float
) -> float:
  """The reference's TAR@FAR threshold: `interp1d(far, thresholds, kind='slinear')(far_target)`.

  The reference (insightface's verification `calculate_val`) interpolates with scipy's
  first-order spline, which scipy ≤ 1.8 built on knots (x0, x0, x1, …, x_last, x_last) without
  rejecting repeated x (current scipy raises on them); this is that evaluation, in closed form.
  FAR is a step function of the threshold, so thresholds form plateaus of equal FAR. The spline's
  interval is the last knot x_j ≤ far_target (j capped at len − 2), so:
  * a target between two plateaus interpolates from the LARGEST threshold of the lower plateau
    to the SMALLEST threshold of the upper one;
  * a target equal to a plateau's FAR gives that plateau's largest threshold;
  * a target equal to the top plateau's FAR, held by two or more thresholds, falls in a
    zero-width interval, which the B-spline evaluates to 0 (threshold 0: nothing accepted);
  * a target above every FAR: threshold 0 (the reference's `else` branch).
  `far_by_threshold` must be non-decreasing in the threshold (it is: a larger threshold accepts
  more), so the reference's stable sort leaves the order as is.
  """
  far = np.asarray(far_by_threshold, np.float64)
  if far.max() < far_target:
    return 0.0
  if far_target < far[0]:
    raise ValueError(f'far_target={far_target} lies below the smallest FAR {far[0]}')
  j = min(int(np.searchsorted(far, far_target, side='right')) - 1, len(far) - 2)
  lo, hi = far[j], far[j + 1]
  if hi == lo:
    return 0.0
  # De Boor's recursion for degree 1, in the reference's order of operations.
  w = 1.0 / (hi - lo)
  return float(
    thresholds[j] * (w * (hi - far_target)) + thresholds[j + 1] * (w * (far_target - lo))
  )


def evaluate(
  embeddings: np.ndarray,
  issame: np.ndarray,
  nfolds: int = 10,
  far_target: float = 1e-3,
  name: str | None = None,
) -> dict[str, Any]:
  """Scores pair-ordered embeddings (2N, D) against issame (N,) with the 10-fold protocol.

  Returns a dict: `accuracy` (mean of the fold accuracies), `std`, `fold_accuracies` (nfolds,),
  `threshold` (mean best threshold), `best_thresholds` (nfolds,), `tar_at_far` (mean over folds,
  at `far_target`), `tar_at_far_std`, `tar_at_far_thresholds` (nfolds,: each fold's threshold,
  chosen on the other folds), `far_achieved` (mean held-out FAR at those thresholds),
  `far_target`, and the ROC: `thresholds` (T,), `tar` and `far` (T,) (aliases `tpr`, `fpr`).
  A set whose folds hold one kind of pair only is scored all the same, with a warning naming it
  (`name`) and saying how to store it (`fold_balance_warning`).
  """
  issame = np.asarray(issame, bool)
  dist = pair_distances(embeddings)
  if issame.ndim != 1 or len(dist) != len(issame):
    raise ValueError(f'{len(dist)} pairs of embeddings but {issame.size} issame labels')
  folds = contiguous_folds(len(issame), nfolds)
  warning = fold_balance_warning(issame, nfolds, name or 'verification set')
  if warning:
    logging.warning('%s', warning)
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
  tar = np.mean(
    np.divide(tp, fold_pos[:, None], out=np.zeros(tp.shape), where=fold_pos[:, None] > 0), axis=0
  )
  far = np.mean(
    np.divide(fp, fold_neg[:, None], out=np.zeros(fp.shape), where=fold_neg[:, None] > 0), axis=0
  )

  # TAR at the FAR target: threshold from the training folds' FAR, scored on the held-out fold.
  fp_fine = _accepted_counts(neg_dist, folds, FAR_THRESHOLDS)  # (F, T_fine)
  train_neg = fold_neg.sum() - fold_neg
  if far_target < 0:
    raise ValueError(f'far_target={far_target} must be >= 0')
  tars, fars, far_thresholds = [], [], []
  for k, test in enumerate(folds):
    far_train = (fp_fine.sum(0) - fp_fine[k]) / max(train_neg[k], 1)
    threshold = _far_threshold(far_train, FAR_THRESHOLDS, far_target)
    far_thresholds.append(threshold)
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
    'tar_at_far_thresholds': np.array(far_thresholds),
    'far_achieved': float(np.mean(fars)),
    'far_target': float(far_target),
    'thresholds': THRESHOLDS,
    'tar': tar,
    'far': far,
    'tpr': tar,
    'fpr': far,
  }
