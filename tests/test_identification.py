"""Closed-set rank-k and open-set DIR@FAR on constructed galleries with known answers."""

import cv2
import numpy as np
import pytest

from arcface_jax.evaluation import identification


def _unit(degrees):
  r = np.deg2rad(np.asarray(degrees, np.float64))
  return np.stack([np.cos(r), np.sin(r)], -1)


def test_enrollment_averages_unit_vectors_per_identity():
  # 'b' has (10, 0) and (0, 1): normalised first, so the template is at 45 degrees, not ~6.
  ids, templates = identification.enroll(np.array([[10.0, 0], [0, 1], [0, -3]]), ['b', 'b', 'a'])
  np.testing.assert_array_equal(ids, ['a', 'b'])
  np.testing.assert_allclose(templates, [[0, -1], [np.sqrt(0.5), np.sqrt(0.5)]])


def test_closed_set_ranks_by_hand():
  # Identities 0..5 at 0, 60, ..., 300 degrees. Probes:
  #   at 0 (id 0): rank 1.   at 65 (id 1): rank 1.
  #   at 100 labelled id 3 (at 180): 120 (20 deg away) and 60 (40) are nearer than 180 (80): rank 3.
  #   at 350 labelled id 3: 180 is 170 deg away, the farthest of the six: rank 6.
  gallery = _unit(np.arange(6) * 60)
  probes = _unit([0, 65, 100, 350])
  result = identification.evaluate_identification(
    gallery, np.arange(6), probes, [0, 1, 3, 3], ranks=(1, 3, 5, 6)
  )
  assert result['rank1'] == 0.5 and result['rank3'] == 0.75 and result['rank5'] == 0.75
  assert result['rank6'] == 1.0
  assert result['num_mated'] == 4 and result['num_nonmated'] == 0 and 'dir_at_far' not in result


def test_open_set_dir_at_far_by_hand():
  # 3-d: identity 0 on x, identity 1 on y; what is left of a unit probe goes on z, so each cosine
  # below is exact. Non-mated probes (id 9) best-score 0.9, 0.5, 0.2, 0.1 (all with id 0).
  # Mated: id 0 at 0.95 and 0.7; id 1 at 0.99; and one id-1 probe closer to id 0 (0.75 vs 0.6),
  # so it is misidentified at rank 1.
  def probe(x, y):
    return [x, y, np.sqrt(1 - x * x - y * y)]

  gallery = np.array([[1.0, 0, 0], [0, 1.0, 0]])
  probes = np.array(
    [
      probe(0.9, 0),
      probe(0.5, 0),
      probe(0.2, 0),
      probe(0.1, 0),
      probe(0.95, 0),
      probe(0.7, 0),
      probe(0, 0.99),
      probe(0.75, 0.6),
    ]
  )
  labels = [9, 9, 9, 9, 0, 0, 1, 1]
  scores, true, _ = identification.score_probes(gallery, [0, 1], probes, labels)
  np.testing.assert_array_equal(true, [-1, -1, -1, -1, 0, 0, 1, 1])
  result = identification.dir_at_far(scores, true, fars=(0.25, 0.5, 1.0))
  # FAR 0.25 of 4 non-mated allows one above the threshold: threshold 0.5. Mated probes correctly
  # identified above 0.5: 0.95, 0.7, 0.99 (the 0.75 one is misidentified): 3/4.
  assert result[0.25]['threshold'] == pytest.approx(0.5)
  assert result[0.25]['dir'] == 0.75 and result[0.25]['far_achieved'] == 0.25
  # FAR 0.5 allows two: threshold 0.2; the same three. FAR 1: no threshold, still 3/4 (rank 1).
  assert result[0.5]['dir'] == 0.75 and result[1.0]['dir'] == 0.75
  strict = identification.dir_at_far(scores, true, fars=(0.0,))
  # FAR 0: threshold at the best non-mated score 0.9: only 0.95 and 0.99 pass.
  assert strict[0.0]['dir'] == 0.5 and strict[0.0]['far_achieved'] == 0.0


def test_refusals():
  gallery = _unit([0, 90])
  with pytest.raises(ValueError, match='no probe identity'):
    identification.evaluate_identification(gallery, [0, 1], _unit([10]), [5])
  scores, true, _ = identification.score_probes(gallery, [0, 1], _unit([10]), [0])
  with pytest.raises(ValueError, match='non-mated'):
    identification.dir_at_far(scores, true)


def test_read_identity_folder(tmp_path):
  for name, value in (('ann', 10), ('bob', 200)):
    (tmp_path / name).mkdir()
    for i in range(2):
      cv2.imwrite(str(tmp_path / name / f'{i}.png'), np.full((8, 8, 3), value + i, np.uint8))
  images, labels = identification.read_identity_folder(str(tmp_path), image_size=4)
  assert images.shape == (4, 4, 4, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, ['ann', 'ann', 'bob', 'bob'])
  np.testing.assert_array_equal(images[:, 0, 0, 0], [10, 11, 200, 201])


def test_read_identity_folder_crops_non_square_images(tmp_path):
  """A wide photo loses its sides (as in training folders), it is not squeezed."""
  (tmp_path / 'ann').mkdir()
  wide = np.zeros((8, 16, 3), np.uint8)
  wide[:, 4:12] = 255  # the centre square is white, the sides black
  cv2.imwrite(str(tmp_path / 'ann' / 'wide.png'), wide)
  images, _ = identification.read_identity_folder(str(tmp_path), image_size=4)
  np.testing.assert_array_equal(images[0], np.full((4, 4, 3), 255, np.uint8))
