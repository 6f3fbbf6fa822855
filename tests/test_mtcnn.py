"""The MTCNN detector on its own: weights, padding invariance, real photos, bad and odd inputs.

Side by side with the reference implementation: tests/test_mtcnn_reference.py.
"""

from __future__ import annotations

import dataclasses
import sys

import cv2
import face_photos
import jax
import numpy as np
import pytest

from arcface_jax.faces import mtcnn as mtcnn_lib
from arcface_jax.faces import mtcnn_nets
from arcface_jax.faces.mtcnn import MTCNN, Detection


@pytest.fixture(scope='module')
def detector() -> MTCNN:
  return MTCNN()


@pytest.fixture(scope='module')
def astronaut_faces(detector):
  return detector.detect(face_photos.astronaut())


def test_weights_are_read_without_tensorflow_torch_or_importing_mtcnn():
  before = set(sys.modules)
  variables = mtcnn_nets.load_weights('onet')['params']
  added = {name.split('.')[0] for name in set(sys.modules) - before}
  assert not added & {'mtcnn', 'tensorflow', 'torch', 'keras'}
  assert variables['conv1']['kernel'].shape == (3, 3, 3, 32)
  assert variables['dense5']['kernel'].shape == (1152, 256)
  assert variables['landmarks']['kernel'].shape == (256, 10)
  assert variables['prelu5']['alpha'].shape == (256,)


def test_missing_weights_name_what_to_install(tmp_path):
  with pytest.raises(mtcnn_nets.MTCNNWeightsError, match=r"pnet\.lz4 is missing.*pip install"):
    MTCNN(weights_dir=str(tmp_path))
  (tmp_path / 'pnet.lz4').write_bytes(b'not a joblib file')
  with pytest.raises(mtcnn_nets.MTCNNWeightsError, match=r'cannot read MTCNN weight file'):
    mtcnn_nets.load_weights('pnet', str(tmp_path))


def test_max_pool_ceil_matches_a_float64_loop():
  x = np.random.default_rng(0).normal(size=(2, 7, 10, 3))
  for window, stride in [(2, 2), (3, 2)]:
    got = np.asarray(mtcnn_nets.max_pool_ceil(x.astype(np.float32), window, stride))
    rows, cols = -(-(7 - window) // stride) + 1, -(-(10 - window) // stride) + 1
    want = np.empty((2, rows, cols, 3))
    for i in range(rows):
      for j in range(cols):  # a window over the edge takes the pixels it covers
        rows_, cols_ = (
          slice(i * stride, i * stride + window),
          slice(j * stride, j * stride + window),
        )
        want[:, i, j] = x[:, rows_, cols_].max((1, 2))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_pnet_on_a_packed_canvas_equals_each_image_alone():
  """Images side by side on a canvas of noise: every output cell of each equals its own run."""
  rng = np.random.default_rng(0)
  variables = mtcnn_nets.load_weights('pnet')
  images = {(0, 0): (37, 53), (0, 54): (12, 12), (38, 0): (30, 61)}
  canvas = rng.uniform(0, 255, (1, 96, 128, 3)).astype(np.float32)
  valid = np.zeros((1, 94, 126), bool)
  for (top, left), (height, width) in images.items():
    valid[0, top : top + height - 2, left : left + width - 2] = True
  packed = [np.asarray(a)[0] for a in mtcnn_nets.pnet_forward(variables, canvas, valid)]
  run_alone = jax.jit(lambda v, x: mtcnn_nets.PNet().apply(v, mtcnn_nets.normalise(x)))
  for (top, left), (height, width) in images.items():
    image = canvas[:, top : top + height, left : left + width]
    alone = run_alone(variables, image)
    rows, cols = alone[1].shape[1:3]
    assert (rows, cols) == (-(-(height - 2) // 2) - 4, -(-(width - 2) // 2) - 4)
    for want, got in zip(alone, packed):
      np.testing.assert_allclose(
        got[top // 2 : top // 2 + rows, left // 2 : left // 2 + cols],
        np.asarray(want)[0],
        rtol=1e-5,
        atol=1e-6,
      )


def test_pyramid_levels_are_packed_without_overlap():
  scales = mtcnn_lib.pyramid_scales(480, 640, 20, 0.709)
  sizes = [(int(480 * s + 1), int(640 * s + 1)) for s in scales]
  origins, (height, width) = mtcnn_lib.pack_levels(sizes)
  taken = np.zeros((height, width), int)
  for (top, left), (h, w) in zip(origins, sizes):
    assert top % 2 == 0 and left % 2 == 0
    taken[top : top + h, left : left + w] += 1
  assert taken.max() == 1 and taken.sum() == sum(h * w for h, w in sizes)
  assert height % 32 == 0 and width % 32 == 0 and height * width < 1.5 * taken.sum()


def test_detections_do_not_depend_on_the_packing(detector, monkeypatch):
  image = cv2.resize(face_photos.astronaut(), (150, 170), interpolation=cv2.INTER_AREA)
  bucketed = detector.detect(image)
  monkeypatch.setattr(mtcnn_lib, 'PACK_LEVELS', False)  # every level alone at its own size
  lines = []
  monkeypatch.setattr(mtcnn_lib.compilation, 'log_compile', lines.append)
  exact = detector.detect(image)
  assert detector.detect(image)[0].score == exact[0].score
  assert len(lines) == 1 and 'compiling P-Net for' in lines[0]  # one line, first time only
  assert len(bucketed) == len(exact) == 1
  np.testing.assert_allclose(bucketed[0].box, exact[0].box, atol=1e-3)
  np.testing.assert_allclose(bucketed[0].landmarks, exact[0].landmarks, atol=1e-3)
  assert bucketed[0].score == pytest.approx(exact[0].score, abs=1e-6)


def test_astronaut_face_box_and_landmarks(astronaut_faces):
  assert len(astronaut_faces) == 1
  face = astronaut_faces[0]
  assert isinstance(face, Detection) and 0.99 < face.score <= 1.0
  assert face.box.dtype == np.float32 and face.box.shape == (4,)
  assert face.landmarks.dtype == np.float32 and face.landmarks.shape == (5, 2)
  x1, y1, x2, y2 = face.box
  # The face of the portrait is around (220, 115), about 90 px wide.
  assert 170 < x1 < 200 and 230 < x2 < 280 and 40 < y1 < 90 and 150 < y2 < 190
  left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
  assert left_eye[0] < nose[0] < right_eye[0]  # left/right as seen in the image
  assert mouth_left[0] < mouth_right[0]
  assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
  assert np.all((face.landmarks >= [x1, y1]) & (face.landmarks <= [x2, y2]))
  with pytest.raises(dataclasses.FrozenInstanceError):
    face.score = 0.5


def test_several_faces_sorted_by_score(detector):
  faces = detector.detect(face_photos.group())
  scores = [f.score for f in faces]
  assert scores == sorted(scores, reverse=True)
  centres = [((f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2) for f in faces]
  per_photo = [
    sum(x1 <= x < x2 and y1 <= y < y2 for x, y in centres)
    for x1, y1, x2, y2 in face_photos.group_regions()
  ]
  assert per_photo == [1, 1, 1, 1] and len(faces) == 4


def test_greyscale_photo_still_finds_the_face(detector, astronaut_faces):
  grey = cv2.cvtColor(face_photos.astronaut(), cv2.COLOR_RGB2GRAY)
  faces = detector.detect(np.repeat(grey[:, :, None], 3, axis=2))
  assert len(faces) == 1
  assert face_photos.iou(faces[0].box, astronaut_faces[0].box) > 0.85


def test_no_face_and_tiny_images_give_empty_lists(detector):
  import skimage.data  # pylint: disable=import-outside-toplevel

  coffee = cv2.resize(skimage.data.coffee(), (512, 512), interpolation=cv2.INTER_AREA)
  assert detector.detect(coffee) == []
  assert detector.detect(np.full((512, 512, 3), 128, np.uint8)) == []
  assert detector.detect(np.zeros((19, 30, 3), np.uint8)) == []  # < 12 px after 12/20 scaling
  assert detector.detect(np.zeros((1, 1, 3), np.uint8)) == []


def test_very_large_photo_is_downscaled_and_mapped_back(astronaut_faces):
  big = cv2.resize(face_photos.astronaut(), (4000, 4000), interpolation=cv2.INTER_CUBIC)
  faces = MTCNN(max_side=512).detect(big)  # the same pyramid as the 512 px original
  assert len(faces) == 1
  scale = 4000 / 512
  assert face_photos.iou(faces[0].box, astronaut_faces[0].box * scale) > 0.9
  np.testing.assert_allclose(
    faces[0].landmarks, astronaut_faces[0].landmarks * scale, atol=0.02 * scale * 90
  )


@pytest.mark.parametrize(
  'bad,words',
  [
    (np.zeros((32, 32, 3), np.float32), 'dtype float32'),
    (np.zeros((32, 32), np.uint8), r'shape \(32, 32\)'),
    (np.zeros((32, 32, 4), np.uint8), r'shape \(32, 32, 4\)'),
    ([[0, 0, 0]], 'got list'),
  ],
)
def test_bad_input_is_a_value_error_naming_it(detector, bad, words):
  with pytest.raises(ValueError, match=words):
    detector.detect(bad)


@pytest.mark.parametrize(
  'options,words',
  [
    ({'thresholds': (0.6, 0.7)}, 'thresholds'),
    ({'scale_factor': 1.2}, 'scale_factor'),
    ({'min_face_size': 0}, 'min_face_size'),
    ({'max_side': 5}, 'max_side'),
  ],
)
def test_bad_options_are_value_errors(options, words):
  with pytest.raises(ValueError, match=words):
    MTCNN(**options)
