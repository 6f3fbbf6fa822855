"""arcface_jax.faces on real photos: detection, alignment, identify and verify, and the grid.

The photos are real and licensed (tests/face_photos.py, tests/data/README), among them one with
two people. The embedder is the tiny synthetic recipe's backbone at random initialisation,
exported with a model info that declares photo input: these tests check what is done with the
faces (which face, which box, which crop, which name), not how well a model tells people apart,
so nothing needs training here.
"""

from __future__ import annotations

import dataclasses
import json
import os

import cv2
import jax
import numpy as np
import pytest
from faces_support import PEOPLE_SEED, write_people

from arcface_jax import export, model_info, models
from arcface_jax.config_files import load_config
from arcface_jax.faces import (
  CalibrationError,
  FaceRecognizer,
  Gallery,
  NoFaceError,
  cli,
  grid,
  thresholds,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def face_model(tmp_path_factory):
  """The tiny recipe's backbone (random init), exported as a model of detected, aligned faces."""
  config = load_config(os.path.join(REPO, 'configs', 'synthetic.py:tiny'))
  model = models.from_config(config)
  variables = models.init_variables(model, jax.random.key(0), config.data.image_size)
  info = dataclasses.replace(model_info.from_config(config, variables), detect_faces=True)
  path = str(tmp_path_factory.mktemp('export') / 'faces.jax_export')
  export.save(path, model, variables, info.image_size, platforms=('cpu',), info=info)
  return path


@pytest.fixture(scope='module')
def recognizer(face_model):
  return FaceRecognizer.load(face_model)


def _cli(capsys, *argv):
  code = cli.main([str(a) for a in argv])
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def test_detect_real_photos_and_no_face(recognizer):
  from face_photos import astronaut

  from arcface_jax.data.align import align_face

  photo = astronaut()
  (face,) = recognizer.detect(photo)
  assert face.score > 0.99 and face.crop.shape == (16, 16, 3)
  np.testing.assert_array_equal(face.crop, align_face(photo, face.landmarks, 16))
  x1, y1, x2, y2 = face.box  # Eileen Collins' face, upper middle of the portrait
  assert 150 < x1 < x2 < 300 and 40 < y1 < y2 < 200
  (grey,) = recognizer.detect(photo.mean(axis=2).astype(np.uint8))  # (H, W) greyscale array
  np.testing.assert_allclose(grey.box, face.box, atol=6)
  assert recognizer.detect(np.full((300, 200, 3), 127, np.uint8)) == []
  with pytest.raises(NoFaceError, match=r'array\[1\]: no face found'):
    recognizer.verify(photo, np.full((300, 200, 3), 127, np.uint8), threshold=0.5)
  itself = recognizer.verify(photo, photo, threshold=0.5)
  assert itself.same and itself.score == pytest.approx(1.0, abs=1e-5)
  from face_photos import group

  several = recognizer.verify(photo, group(), threshold=0.5)  # the group's largest face is used
  assert several.faces[1].area == max(f.area for f in recognizer.detect(group()))


def test_identify_every_face_of_a_group_photo(recognizer):
  from face_photos import astronaut, grace_hopper, group, group_regions

  gallery = Gallery.enroll(recognizer, {'eileen': [astronaut()], 'grace': [grace_hopper()]})
  assert gallery.threshold is None  # an export without --calibrate: no "unknown" threshold
  with pytest.raises(CalibrationError, match='--calibrate'):
    recognizer.identify(group(), gallery)
  answers = recognizer.identify(group(), gallery, threshold=-1.0)
  assert len(answers) == 4
  for answer in answers:
    assert answer.name in ('eileen', 'grace') and answer.threshold.kind == 'given'
    assert {answer.name, answer.runner_up} == {'eileen', 'grace'}
    x1, y1, x2, y2 = answer.box
    centre = ((x1 + x2) / 2, (y1 + y2) / 2)
    assert (
      sum(
        left <= centre[0] <= right and top <= centre[1] <= bottom
        for left, top, right, bottom in group_regions()
      )
      == 1
    )


def test_cli_detect_real_photos_exif_and_layout(capsys, tmp_path):
  from face_photos import astronaut, iou
  from PIL import Image

  raw = tmp_path / 'raw'
  (raw / 'eileen').mkdir(parents=True)
  photo = astronaut()
  exif = Image.Exif()
  exif[0x0112] = 6  # stored sideways, "turn 90° clockwise to view", as phones write it
  Image.fromarray(np.rot90(photo, 1)).save(raw / 'eileen' / 'phone.jpg', quality=95, exif=exif)
  Image.fromarray(photo).save(raw / 'eileen' / 'upright.png')
  Image.fromarray(np.full((120, 90, 3), 200, np.uint8)).save(raw / 'eileen' / 'wall.png')
  (raw / 'eileen' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 cut short')
  code, out, err = _cli(capsys, 'detect', raw, '--out', tmp_path / 'crops', '--json')
  assert code == 0
  results = {os.path.basename(r['photo']): r['faces'] for r in json.loads(out)}
  assert set(results) == {'phone.jpg', 'upright.png', 'wall.png'} and results['wall.png'] == []
  assert iou(results['phone.jpg'][0]['box'], results['upright.png'][0]['box']) > 0.9
  assert sorted(os.listdir(tmp_path / 'crops' / 'eileen')) == ['phone_0.png', 'upright_0.png']
  assert cv2.imread(str(tmp_path / 'crops' / 'eileen' / 'phone_0.png')).shape == (112, 112, 3)
  assert '1 skipped' in err and 'broken.jpg' in err


def test_cli_verify_and_identify_with_detection(capsys, face_model, tmp_path):
  from face_photos import astronaut, grace_hopper
  from PIL import Image

  (tmp_path / 'people' / 'eileen').mkdir(parents=True)
  (tmp_path / 'people' / 'grace').mkdir()
  Image.fromarray(astronaut()).save(tmp_path / 'people' / 'eileen' / 'a.png')
  Image.fromarray(grace_hopper()).save(tmp_path / 'people' / 'grace' / 'g.jpg')
  a, g = tmp_path / 'people' / 'eileen' / 'a.png', tmp_path / 'people' / 'grace' / 'g.jpg'
  code, _, err = _cli(capsys, 'verify', '--model', face_model, a, g)
  assert code == 2 and '--threshold' in err and len(err.strip().splitlines()) <= 4
  code, out, _ = _cli(capsys, 'verify', '--model', face_model, '--json', '--threshold', '0.5', a, a)
  assert code == 0 and json.loads(out)['same'] is True
  code, _, err = _cli(
    capsys,
    'enroll',
    '--model',
    face_model,
    '--photos',
    tmp_path / 'people',
    '--out',
    tmp_path / 'two.gallery',
  )
  assert code == 0 and 'identify will need --threshold' in err
  code, out, _ = _cli(
    capsys,
    'identify',
    '--model',
    face_model,
    '--gallery',
    tmp_path / 'two.gallery',
    '--threshold',
    '0.5',
    '--json',
    a,
  )
  (face,) = json.loads(out)[0]['faces']
  assert face['name'] == 'eileen' and face['score'] == pytest.approx(1.0, abs=1e-4)


# ------------------------------------------------------------------ a real photo of two people


def test_two_people_in_one_real_photo(capsys, recognizer, tmp_path):
  from face_photos import TWO_PEOPLE, two_people

  photo = two_people()
  faces = recognizer.detect(photo)
  assert len(faces) == 2 and all(face.score > 0.99 for face in faces)
  left, right = sorted(faces, key=lambda face: face.box[0])
  assert left.box[2] < 320 < right.box[0]  # one face in each half of the photo
  for face in faces:
    eye_l, eye_r, nose, mouth_l, mouth_r = face.landmarks  # as seen in the image
    assert eye_l[0] < nose[0] < eye_r[0] and mouth_l[0] < mouth_r[0]
    assert max(eye_l[1], eye_r[1]) < nose[1] < min(mouth_l[1], mouth_r[1])
    x1, y1, x2, y2 = face.box
    assert np.all((face.landmarks >= (x1, y1)) & (face.landmarks <= (x2, y2)))
  # Who is in this photo: each person enrolled from their own half of it.
  gallery = Gallery.enroll(recognizer, {'left': [photo[:, :320]], 'right': [photo[:, 320:]]})
  answers = recognizer.identify(photo, gallery, threshold=0.5)
  by_side = {answer.name: answer for answer in answers}
  assert set(by_side) == {'left', 'right'}
  assert by_side['left'].box[0] < 320 < by_side['right'].box[0]
  for answer in answers:
    assert answer.score > 0.99 and answer.score > answer.runner_up_score
  # The command line gives the same two faces.
  code, out, _ = _cli(capsys, 'detect', TWO_PEOPLE, '--json', '--out', tmp_path / 'crops')
  (result,) = json.loads(out)
  assert code == 0 and len(result['faces']) == 2
  boxes = sorted(face['box'] for face in result['faces'])
  np.testing.assert_allclose(boxes, [left.box, right.box], atol=0.01)
  assert sorted(os.listdir(tmp_path / 'crops')) == ['two_people_0.png', 'two_people_1.png']


# ------------------------------------------------------------------ the grid


def _red_pixels(path) -> int:
  image = cv2.imread(str(path))
  assert image is not None, f'{path} was not written'
  blue, green, red = cv2.split(image.astype(int))
  return int(np.count_nonzero((red > 180) & (green < 80) & (blue < 80)))


def test_grid_titles_wrong_predictions_in_red(recognizer, tmp_path):
  people = write_people(tmp_path / 'people', PEOPLE_SEED, 5, 3, 'person')
  gallery = Gallery.enroll(recognizer, str(people), aligned=True)
  assert gallery.threshold is None  # an export without a kept calibration
  with pytest.raises(CalibrationError):
    grid.write_grid(
      recognizer, str(people), str(tmp_path / 'none.png'), gallery=gallery, aligned=True
    )
  figures, red = {}, {}
  for name, threshold in (('named', -1.0), ('all_unknown', 1.0)):  # 1.0: no cosine lies above
    gallery.threshold = thresholds.given(threshold)
    out = tmp_path / f'{name}.png'
    figures[name] = grid.write_grid(
      recognizer, str(people), str(out), gallery=gallery, aligned=True
    )
    red[name] = _red_pixels(out)
  named, unknown = figures['named'], figures['all_unknown']
  assert unknown.correct == 0 and all(s.wrong and s.predicted == 'unknown' for s in unknown.shown)
  assert [s.photo for s in named.shown] == [s.photo for s in unknown.shown]  # the same nine
  right = sum(not s.wrong for s in named.shown)
  assert len(named.shown) == 9 and right >= 3  # each photo's own embedding is in its template
  # Same photos, so the difference in red pixels is the titles that turned red: some per title.
  assert red['all_unknown'] - red['named'] >= 200 * right
