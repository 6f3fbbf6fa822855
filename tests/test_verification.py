"""The LFW protocol on constructed embeddings whose answers are known by hand."""
import numpy as np
import pytest

from arcface_jax.evaluation import verification


def _pairs_at_distances(distances):
  """Unit 2-d embeddings, pair i at squared-L2 distance distances[i] (angle from 2 - 2cos)."""
  angles = np.arccos(1 - np.asarray(distances) / 2)
  first = np.stack([np.ones_like(angles), np.zeros_like(angles)], 1)
  second = np.stack([np.cos(angles), np.sin(angles)], 1)
  out = np.empty((2 * len(angles), 2))
  out[0::2], out[1::2] = first, second
  return out


def test_separable_pairs_score_one_with_threshold_in_the_gap():
  # Positives at distance 0.505, negatives at 1.5: any threshold in (0.505, 1.5] is perfect; the
  # first such on the grid is 0.51.
  issame = np.arange(100) % 2 == 0
  emb = _pairs_at_distances(np.where(issame, 0.505, 1.5))
  result = verification.evaluate(emb * 3.0, issame)  # scale must not matter
  assert result['accuracy'] == 1.0 and result['std'] == 0.0
  assert result['threshold'] == pytest.approx(0.51)
  assert result['tar_at_far'] == 1.0


def test_fold_accuracies_known_by_hand():
  # 20 pairs, 10 folds of 2. Pair 0 (a positive) is hopelessly far (3.9): every threshold that
  # gets the rest right misses it. Fold 0 holds pairs 0 and 1, so its accuracy is 1/2; the
  # others are perfect.
  issame = np.arange(20) % 2 == 0
  distances = np.where(issame, 0.4, 1.6)
  distances[0] = 3.9
  result = verification.evaluate(_pairs_at_distances(distances), issame, nfolds=10)
  np.testing.assert_allclose(result['fold_accuracies'], [0.5] + [1.0] * 9)
  assert result['accuracy'] == pytest.approx(0.95)
  assert result['std'] == pytest.approx(np.std([0.5] + [1.0] * 9))


def test_folds_are_contiguous_and_uneven_like_kfold():
  folds = verification.contiguous_folds(23, 10)
  assert [len(f) for f in folds] == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
  np.testing.assert_array_equal(np.concatenate(folds), np.arange(23))


def test_roc_arrays_are_monotone_and_bounded():
  rng = np.random.default_rng(0)
  issame = rng.uniform(size=300) < 0.5
  emb = _pairs_at_distances(np.clip(np.where(issame, 0.8, 1.4) + rng.normal(0, 0.3, 300),
                                    0, 4))
  result = verification.evaluate(emb, issame)
  assert np.all(np.diff(result['tpr']) >= 0) and np.all(np.diff(result['fpr']) >= 0)
  assert 0.7 < result['accuracy'] < 1.0


def test_bad_shapes_are_refused():
  with pytest.raises(ValueError, match='pair order'):
    verification.evaluate(np.zeros((5, 3)), np.zeros(2, bool))
  with pytest.raises(ValueError, match='issame'):
    verification.evaluate(np.ones((6, 3)), np.zeros(2, bool))
