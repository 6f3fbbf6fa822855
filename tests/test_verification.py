"""The LFW protocol on constructed embeddings whose answers are known by hand."""

import numpy as np
import pytest

from arcface_jax.evaluation import verification


def _pairs_at_distances(distances):
  """Unit 2-d embeddings, pair i at squared-L2 distance distances[i] (angle from 2 - 2cos)."""
  angles = np.arccos(1 - np.asarray(distances, np.float64) / 2)
  first = np.stack([np.ones_like(angles), np.zeros_like(angles)], 1)
  second = np.stack([np.cos(angles), np.sin(angles)], 1)
  out = np.empty((2 * len(angles), 2))
  out[0::2], out[1::2] = first, second
  return out


def _brute_force(dist, issame, nfolds):
  """The protocol written as plainly as possible: loops over folds and thresholds."""
  folds = np.array_split(np.arange(len(dist)), nfolds)
  accs, best_ts, tprs, fprs = [], [], [], []
  for test in folds:
    train = np.setdiff1d(np.arange(len(dist)), test)
    train_acc = [np.mean((dist[train] < t) == issame[train]) for t in verification.THRESHOLDS]
    best = verification.THRESHOLDS[int(np.argmax(train_acc))]
    best_ts.append(best)
    accs.append(np.mean((dist[test] < best) == issame[test]))
    tprs.append([np.mean(dist[test][issame[test]] < t) for t in verification.THRESHOLDS])
    fprs.append([np.mean(dist[test][~issame[test]] < t) for t in verification.THRESHOLDS])
  return np.array(accs), np.array(best_ts), np.mean(tprs, 0), np.mean(fprs, 0)


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
  distances = np.where(issame, 0.405, 1.6)
  distances[0] = 3.9
  result = verification.evaluate(_pairs_at_distances(distances), issame, nfolds=10)
  np.testing.assert_allclose(result['fold_accuracies'], [0.5] + [1.0] * 9)
  assert result['accuracy'] == pytest.approx(0.95)
  assert result['std'] == pytest.approx(np.std([0.5] + [1.0] * 9))
  # Every fold's best threshold is the first that accepts the 0.405 positives: 0.41.
  np.testing.assert_allclose(result['best_thresholds'], 0.41)


def test_a_hard_negative_costs_only_its_own_fold():
  # 4 folds of 4 pairs. Positives at 0.305, negatives at 1.0, except one negative at 0.205 in
  # fold 3. Folds 0-2 train on data containing it: any threshold accepting the positives accepts
  # it too, and rejecting the 6 positives costs more, so the threshold is 0.31 (train 11/12).
  # Fold 3 trains on clean data: 0.31 too. The 0.205 negative is misjudged only in fold 3: 3/4.
  issame = np.array([True, False] * 8)
  distances = np.where(issame, 0.305, 1.0)
  distances[15] = 0.205
  result = verification.evaluate(_pairs_at_distances(distances), issame, nfolds=4)
  np.testing.assert_allclose(result['fold_accuracies'], [1, 1, 1, 0.75])
  np.testing.assert_allclose(result['best_thresholds'], 0.31)


def test_matches_a_brute_force_protocol_on_random_pairs():
  rng = np.random.default_rng(0)
  n = 203  # not a multiple of 10: uneven folds
  issame = rng.uniform(size=n) < 0.5
  emb = rng.normal(size=(2 * n, 8))
  emb[1::2][issame] = emb[0::2][issame] + rng.normal(0, 0.8, size=(issame.sum(), 8))
  result = verification.evaluate(emb, issame, nfolds=10)
  accs, best_ts, tpr, fpr = _brute_force(verification.pair_distances(emb), issame, 10)
  np.testing.assert_allclose(result['fold_accuracies'], accs)
  np.testing.assert_allclose(result['best_thresholds'], best_ts)
  np.testing.assert_allclose(result['tar'], tpr)
  np.testing.assert_allclose(result['far'], fpr)
  assert result['accuracy'] == pytest.approx(accs.mean())


def test_tar_at_far_interpolates_between_plateaus():
  # 2 folds of 20 pairs, identical in layout: negatives at 1.0007, 1.1007, ..., 1.9007, so the
  # training FAR is 0 for grid thresholds up to 1.000, 0.1 from 1.001 to 1.100 and 0.2 from 1.101
  # to 1.200. Positives: 0.5 x5, 1.05 x2, 1.12, 1.5 x2.
  negatives = 1.0007 + 0.1 * np.arange(10)
  positives = np.array([0.5] * 5 + [1.05] * 2 + [1.12] + [1.5] * 2)
  fold = np.concatenate([positives, negatives])
  distances = np.concatenate([fold, fold])
  issame = np.concatenate([np.arange(20) < 10] * 2)
  emb = _pairs_at_distances(distances)
  at_01 = verification.evaluate(emb, issame, nfolds=2, far_target=0.1)
  # A target on a plateau takes its largest threshold, 1.100: 7 of 10 positives, 1 of 10 negatives.
  assert at_01['tar_at_far'] == pytest.approx(0.7) and at_01['tar_at_far_std'] == 0.0
  assert at_01['far_achieved'] == pytest.approx(0.1)
  np.testing.assert_allclose(at_01['tar_at_far_thresholds'], [1.1, 1.1], atol=1e-9)
  # Target 0.15 lies half-way between the plateaus: from the largest threshold of the lower one
  # (1.100) to the smallest of the upper one (1.101), so 1.1005, which still rejects the 1.12
  # positive and the 1.1007 negative. (The largest of the upper plateau, 1.200, would give 1.15:
  # TAR 0.8 at FAR 0.2, a looser operating point than the one asked for.)
  at_015 = verification.evaluate(emb, issame, nfolds=2, far_target=0.15)
  np.testing.assert_allclose(at_015['tar_at_far_thresholds'], [1.1005, 1.1005], atol=1e-9)
  assert at_015['tar_at_far'] == pytest.approx(0.7)
  assert at_015['far_achieved'] == pytest.approx(0.1)
  # Target 0 maps to the most permissive threshold with no false accept on the training fold,
  # 1.000, not to 0: the five 0.5 positives are accepted.
  at_0 = verification.evaluate(emb, issame, nfolds=2, far_target=0.0)
  assert at_0['tar_at_far'] == pytest.approx(0.5) and at_0['far_achieved'] == 0.0
  np.testing.assert_allclose(at_0['tar_at_far_thresholds'], [1.0, 1.0], atol=1e-9)


def _reference_slinear(x, y, x_new):
  """scipy ≤ 1.8 `interp1d(x, y, kind='slinear')(x_new)`, ported step by step: a stable sort,
  `make_interp_spline(k=1)` = B-spline on knots (x0, x0, x1, …, x_last, x_last) with coefficients
  y, evaluated by `find_interval` and de Boor's recursion (`_bspl.pyx`); out of bounds raises."""
  order = np.argsort(x, kind='mergesort')
  x, y = np.asarray(x, np.float64)[order], np.asarray(y, np.float64)[order]
  if x_new < x[0] or x_new > x[-1]:
    raise ValueError('A value in x_new is out of the interpolation range.')
  k = 1
  t = np.r_[x[0], x, x[-1]]
  n = len(t) - k - 1
  interval = k  # find_interval: t[l] <= x_new < t[l + 1], l in [k, n - 1]
  while x_new >= t[interval + 1] and interval + 1 != n:
    interval += 1
  h = [1.0, 0.0]
  for j in range(1, k + 1):
    hh = h[:j]
    h[0] = 0.0
    for m in range(1, j + 1):
      xb, xa = t[interval + m], t[interval + m - j]
      if xb == xa:
        h[m] = 0.0
        continue
      w = hh[m - 1] / (xb - xa)
      h[m - 1] += w * (xb - x_new)
      h[m] = w * (x_new - xa)
  return sum(y[interval - k + a] * h[a] for a in range(k + 1))


def _reference_calculate_val(dist, issame, far_target, nfolds):
  """insightface's `calculate_val` on squared distances, with loops as the reference writes it."""
  thresholds = np.arange(0, 4, 0.001)
  vals, fars, chosen = [], [], []

  def val_far(threshold, d, same):
    accept = d < threshold
    return (np.sum(accept & same) / np.sum(same), np.sum(accept & ~same) / np.sum(~same))

  for test in np.array_split(np.arange(len(dist)), nfolds):  # KFold(shuffle=False)
    train = np.setdiff1d(np.arange(len(dist)), test)
    # val_far at every threshold at once (the reference loops; the counts are the same integers).
    accept = dist[train][None, :] < thresholds[:, None]
    far_train = np.sum(accept & ~issame[train], 1) / np.sum(~issame[train])
    threshold = (
      _reference_slinear(far_train, thresholds, far_target)
      if far_train.max() >= far_target
      else 0.0
    )
    chosen.append(threshold)
    val, far = val_far(threshold, dist[test], issame[test])
    vals.append(val)
    fars.append(far)
  return np.mean(vals), np.std(vals), np.mean(fars), np.array(chosen)


def test_reference_slinear_port_on_plateaus():
  # The port itself, on a hand-checked step function: plateaus 0 (t=0,1), 0.5 (t=2,3), 1 (t=4,5).
  x, y = [0, 0, 0.5, 0.5, 1, 1], [0, 1, 2, 3, 4, 5]
  assert _reference_slinear(x, y, 0.0) == 1.0  # largest threshold of the plateau
  assert _reference_slinear(x, y, 0.25) == 1.5  # from 1 (top of lower) to 2 (bottom of upper)
  assert _reference_slinear(x, y, 0.5) == 3.0
  assert _reference_slinear(x, y, 1.0) == 0.0  # zero-width last interval
  assert _reference_slinear([0, 0.5, 1], [0, 1, 2], 1.0) == 2.0


@pytest.mark.parametrize('far_target', [1e-3, 0.1, 0.0])
def test_tar_at_far_matches_the_reference_protocol_in_float64(far_target):
  rng = np.random.default_rng(1)
  n = 600  # 300 negatives per 10 folds: FAR steps of 1/270 on the training folds, many plateaus
  issame = np.arange(n) % 2 == 0
  emb = rng.normal(size=(2 * n, 16))
  emb[1::2][issame] = emb[0::2][issame] + rng.normal(0, 0.9, size=(issame.sum(), 16))
  dist = verification.pair_distances(emb)
  ref_tar, ref_std, ref_far, ref_thresholds = _reference_calculate_val(dist, issame, far_target, 10)
  result = verification.evaluate(emb, issame, nfolds=10, far_target=far_target)
  np.testing.assert_allclose(result['tar_at_far_thresholds'], ref_thresholds, rtol=0, atol=1e-12)
  assert result['tar_at_far'] == pytest.approx(ref_tar, abs=1e-12)
  assert result['tar_at_far_std'] == pytest.approx(ref_std, abs=1e-12)
  assert result['far_achieved'] == pytest.approx(ref_far, abs=1e-12)


def test_far_threshold_edge_cases_follow_the_reference():
  thresholds = np.arange(6.0)
  for far, target in (
    ([0, 0, 0.5, 0.5, 1, 1], 0.25),
    ([0, 0, 0.5, 0.5, 1, 1], 1.0),
    ([0, 0, 0.5, 0.5, 1, 1], 0.5),
    ([0, 0.1, 0.2, 0.3, 0.4, 0.5], 0.5),
    ([0, 0, 0, 0, 0, 0], 0.0),
  ):
    expected = _reference_slinear(np.array(far, float), thresholds, target)
    assert verification._far_threshold(np.array(far, float), thresholds, target) == expected
  # Above every FAR: threshold 0, as the reference's else branch.
  assert verification._far_threshold(np.array([0, 0.1, 0.2]), np.arange(3.0), 0.5) == 0.0


def test_folds_are_contiguous_and_uneven_like_kfold():
  folds = verification.contiguous_folds(23, 10)
  assert [len(f) for f in folds] == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
  np.testing.assert_array_equal(np.concatenate(folds), np.arange(23))


def test_roc_arrays_are_monotone_and_bounded():
  rng = np.random.default_rng(0)
  issame = rng.uniform(size=300) < 0.5
  emb = _pairs_at_distances(np.clip(np.where(issame, 0.8, 1.4) + rng.normal(0, 0.3, 300), 0, 4))
  result = verification.evaluate(emb, issame)
  assert np.all(np.diff(result['tar']) >= 0) and np.all(np.diff(result['far']) >= 0)
  assert result['tar'][0] == 0.0 and result['far'][0] == 0.0
  assert result['tar'][-1] == 1.0 and result['far'][-1] == 1.0
  assert 0.7 < result['accuracy'] < 1.0


def test_bad_shapes_are_refused():
  with pytest.raises(ValueError, match='pair order'):
    verification.evaluate(np.zeros((5, 3)), np.zeros(2, bool))
  with pytest.raises(ValueError, match='issame'):
    verification.evaluate(np.ones((6, 3)), np.zeros(2, bool))
  with pytest.raises(ValueError, match='nfolds'):
    verification.evaluate(np.ones((6, 3)), np.zeros(3, bool), nfolds=10)


def test_folds_of_one_kind_of_pair_are_named_in_a_warning():
  # 40 pairs in LFW pairs.txt order for one set: 20 matched, then 20 mismatched.
  issame = np.repeat([True, False], 20)
  only_matched, only_mismatched = verification.one_class_folds(issame, 10)
  assert (only_matched, only_mismatched) == ([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
  message = verification.fold_balance_warning(issame, 10, 'my_lfw')
  assert "'my_lfw'" in message and 'verification_bin' in message
  # The same pairs with each tenth mixed (insightface's lfw.bin layout): nothing to say.
  mixed = np.tile(np.repeat([True, False], 2), 10)
  assert verification.fold_balance_warning(mixed, 10, 'lfw') is None
