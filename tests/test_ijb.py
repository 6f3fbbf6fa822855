"""IJB-B/C 1:1 metrics on a tiny template set computed by hand, and the file layout end to end."""

import json
import os
import sys
import types

import cv2
import numpy as np
import pytest

from arcface_jax.data.errors import DatasetError
from arcface_jax.evaluation import ijb

# Template 1: media 10 holds (2, 0) and (0, 2) -> mean (1, 1); media 11 holds (0, 3); sum (1, 4).
# Template 2: one image (4, 0) -> (1, 0). Template 3 reuses media id 10 for (0, 1): its own group.
EMB = np.array([[2, 0], [0, 2], [0, 3], [4, 0], [0, 1]], np.float64)
TEMPLATES = np.array([1, 1, 1, 2, 3])
MEDIAS = np.array([10, 10, 11, 12, 10])


def test_template_pooling_averages_media_then_sums():
  ids, features = ijb.template_features(EMB, TEMPLATES, MEDIAS)
  np.testing.assert_array_equal(ids, [1, 2, 3])
  np.testing.assert_allclose(features, [[1 / np.sqrt(17), 4 / np.sqrt(17)], [1, 0], [0, 1]])
  # Pooling over all images alike would give (2, 5)/3 for template 1: a different direction.
  scores = ijb.pair_scores(ids, features, np.array([1, 1, 2]), np.array([2, 3, 3]))
  np.testing.assert_allclose(scores, [1 / np.sqrt(17), 4 / np.sqrt(17), 0], rtol=1e-6)


def test_pairs_naming_unknown_templates_are_refused():
  ids, features = ijb.template_features(EMB, TEMPLATES, MEDIAS)
  with pytest.raises(DatasetError, match='template 7'):
    ijb.pair_scores(ids, features, np.array([1]), np.array([7]))


def test_tar_at_far_by_hand():
  impostor = np.array([0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, -0.1, -0.2, -0.3])
  genuine = np.array([0.95, 0.6, 0.5, 0.45])
  scores = np.r_[genuine, impostor]
  labels = np.r_[np.ones(4), np.zeros(10)]
  # FAR 0.1 allows one false accept: threshold 0.5 (accept > 0.5): 0.95 and 0.6 pass.
  assert ijb.threshold_at_far(impostor, 0.1) == 0.5
  table = ijb.tar_at_far(scores, labels, fars=(0.05, 0.1, 0.3, 1.0))
  assert table == {0.05: 0.25, 0.1: 0.5, 0.3: 1.0, 1.0: 1.0}


def test_roc_curve_steps_through_distinct_scores():
  scores = np.array([0.9, 0.8, 0.8, 0.1])
  labels = np.array([1, 1, 0, 0])
  far, tar = ijb.roc_curve(scores, labels)
  np.testing.assert_allclose(far, [0, 0, 0.5, 1.0])
  np.testing.assert_allclose(tar, [0, 0.5, 1.0, 1.0])


def _write_layout(root, colours, templates, medias, det_scores, pairs):
  os.makedirs(os.path.join(root, 'meta'))
  os.makedirs(os.path.join(root, 'loose_crop'))
  with (
    open(os.path.join(root, 'meta', 'ijbc_face_tid_mid.txt'), 'w') as faces,
    open(os.path.join(root, 'meta', 'ijbc_name_5pts_score.txt'), 'w') as points,
  ):
    for i, (colour, t, m, s) in enumerate(zip(colours, templates, medias, det_scores)):
      name = f'{i + 1}.jpg'
      # PNG bytes under a .jpg name: OpenCV sniffs the format, and PNG keeps colours exact.
      ok, data = cv2.imencode('.png', np.full((20, 20, 3), colour[::-1], np.uint8))
      with open(os.path.join(root, 'loose_crop', name), 'wb') as f:
        f.write(data.tobytes())
      faces.write(f'{name} {t} {m}\n')
      points.write(name + ' ' + ' '.join(['5.0'] * 10) + f' {s}\n')
  with open(os.path.join(root, 'meta', 'ijbc_template_pair_label.txt'), 'w') as f:
    f.writelines(f'{a} {b} {label}\n' for a, b, label in pairs)


def test_layout_end_to_end_with_detector_scores(tmp_path, monkeypatch):
  calls = []
  fake_align = types.ModuleType('arcface_jax.data.align')

  def align_face(image, landmarks, size=112):
    calls.append(np.asarray(landmarks).shape)
    return cv2.resize(image, (size, size))

  fake_align.align_face = align_face
  monkeypatch.setitem(sys.modules, 'arcface_jax.data.align', fake_align)
  # Each image's embedding is its (red, green) mean: the colours below encode EMB (x 50).
  colours = [(int(50 * x), int(50 * y), 0) for x, y in EMB]
  pairs = [(1, 2, 0), (1, 3, 1), (2, 3, 0)]
  root = str(tmp_path / 'IJBC')
  _write_layout(root, colours, TEMPLATES, MEDIAS, [1.0, 1.0, 0.5, 1.0, 1.0], pairs)
  embed = lambda images: images[..., :2].reshape(len(images), -1, 2).mean(1) / 50.0
  out = str(tmp_path / 'out')
  result = ijb.evaluate_ijb(
    embed, root, 'IJBC', out_dir=out, image_size=16, chunk=2, fars=(0.5, 1.0)
  )
  assert calls == [(5, 2)] * 5
  # The detector score halves (0, 3): template 1 = (1, 1) + (0, 1.5) = (1, 2.5).
  t1 = np.array([1, 2.5]) / np.linalg.norm([1, 2.5])
  scores = np.load(os.path.join(out, 'IJBC_scores.npy'))
  np.testing.assert_allclose(scores, [t1[0], t1[1], 0], rtol=1e-5)
  np.testing.assert_array_equal(np.load(os.path.join(out, 'IJBC_labels.npy')), [0, 1, 0])
  # Impostors score 0.371 and 0: FAR 0.5 allows one, threshold 0; the genuine 0.928 passes.
  assert result['tar_at_far'] == {0.5: 1.0, 1.0: 1.0}
  assert result['num_templates'] == 3 and result['num_images'] == 5
  with open(os.path.join(out, 'IJBC_tar_at_far.json')) as f:
    assert json.load(f) == {'0.5': 1.0, '1': 1.0}
  assert os.path.getsize(os.path.join(out, 'IJBC_roc.png')) > 1000
  assert 'TAR (%)' in ijb.format_table(result['tar_at_far'], 'IJBC')


def test_missing_meta_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='ijbb_face_tid_mid.txt'):
    ijb.read_ijb(str(tmp_path), 'IJBB')
  with pytest.raises(ValueError, match='IJBB or IJBC'):
    ijb.read_ijb(str(tmp_path), 'IJBA')
