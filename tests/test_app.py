"""The demo page without a browser: what each tab answers, and the message for each bad input.

The page's answers must be the faces API's answers (same names, scores, threshold); every bad
input is a `PageProblem` whose message names the uploaded file by the name the user gave it.
The browser test (test_app_browser.py) checks that the page shows these.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import app_support
import numpy as np
import pytest
from PIL import Image

from arcface_jax.app import views
from arcface_jax.app.service import MAX_MEGAPIXELS, PageProblem, PageService, gallery_beside
from arcface_jax.faces import FaceRecognizer, Gallery


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  workdir = app_support.tiny_run(tmp_path_factory)
  folder = tmp_path_factory.mktemp('app_photos')
  paths = app_support.write_photos(folder / 'photos', app_support.heldout_photos(workdir))
  gallery = app_support.enrol_gallery(workdir, paths, str(folder / 'people.gallery'))
  return {
    'workdir': workdir,
    'paths': paths,
    'gallery': gallery,
    'recognizer': FaceRecognizer.load(workdir),
  }


@pytest.fixture
def service(tiny, tmp_path):
  """A page over the tiny model with a copy of the test gallery (tests may change it)."""
  gallery = str(tmp_path / 'people.gallery')
  shutil.copy(tiny['gallery'], gallery)
  return PageService([tiny['workdir']], gallery)


def _not_an_image(tmp_path) -> str:
  path = tmp_path / 'upload_dir' / 'notes.png'
  path.parent.mkdir()
  path.write_text('these are my notes, not a photo')
  return str(path)


# ------------------------------------------------------------------ answers


def test_identify_answers_as_the_faces_api(tiny, service):
  label = tiny['workdir']
  gallery = Gallery.load(service.gallery_path(label))
  for key in [(1, 5), (6, 0)]:  # an unseen photo of an enrolled person, and a stranger
    photo = tiny['paths'][key]
    result = service.identify(label, photo, aligned=True)
    expected = tiny['recognizer'].identify(photo, gallery, aligned=True)
    assert [a.name for a in result.answers] == [e.name for e in expected]
    np.testing.assert_allclose(
      [a.score for a in result.answers], [e.score for e in expected], rtol=0, atol=1e-6
    )
    assert result.threshold == expected[0].threshold
    assert result.threshold.kind == 'FPIR'
    np.testing.assert_array_equal(result.photo, np.asarray(Image.open(photo).convert('RGB')))


def test_identify_at_a_threshold_set_on_the_page(tiny, service):
  label = tiny['workdir']
  stranger = tiny['paths'][6, 0]
  lowest = service.identify(label, stranger, aligned=True, threshold=-1.0)
  assert lowest.threshold.kind == 'given' and lowest.threshold.value == -1.0
  assert lowest.answers[0].name == lowest.answers[0].best_match  # every score is above -1
  highest = service.identify(label, stranger, aligned=True, threshold=1.0)
  assert highest.answers[0].name == 'unknown'


def test_verify_answers_as_the_faces_api(tiny, service):
  a, b = tiny['paths'][0, 5], tiny['paths'][0, 6]
  answer = service.verify(tiny['workdir'], a, b, aligned=True)
  expected = tiny['recognizer'].verify(a, b, aligned=True)
  assert answer.same == expected.same
  assert answer.score == pytest.approx(expected.score, abs=1e-6)
  assert answer.threshold == expected.threshold and answer.threshold.kind == 'FAR'


def test_enrol_saves_and_identifies_at_once(tiny, service):
  label = tiny['workdir']
  photo = tiny['paths'][7, 0]
  before = service.identify(label, photo, aligned=True).answers[0]
  result = service.enrol(label, '  heldout_7 ', [photo], aligned=True)
  assert result.name == 'heldout_7' and result.added == 1 and not result.skipped
  saved = Gallery.load(service.gallery_path(label))
  assert 'heldout_7' in saved.names and len(saved.names) == len(app_support.ENROLLED) + 1
  # The enrolled photo scores 1 against its own template, above any stranger: named at once.
  after = service.identify(label, photo, aligned=True).answers[0]
  assert before.name != 'heldout_7'
  assert after.name == 'heldout_7' and after.score == pytest.approx(1.0, abs=1e-5)
  # More photos of an enrolled person are added to that person.
  service.enrol(label, 'heldout_7', [tiny['paths'][7, 1], tiny['paths'][7, 2]], aligned=True)
  gallery, people = service.people(label)
  assert dict(people)['heldout_7'] == 3
  assert sum(count for _, count in people) == len(gallery.labels) == 3 * len(people)


def test_first_enrolment_creates_the_gallery(tiny, tmp_path):
  path = tmp_path / 'new' / 'people.gallery'
  service = PageService([tiny['workdir']], str(path))
  label = tiny['workdir']
  assert service.people(label) == (None, [])
  with pytest.raises(PageProblem, match=r'Nobody is enrolled yet .*Enrol tab'):
    service.identify(label, tiny['paths'][0, 0], aligned=True)
  result = service.enrol(label, 'heldout_0', [tiny['paths'][0, 0]], aligned=True)
  assert path.exists() and result.gallery.names == ['heldout_0']
  # The enrolled photo itself scores 1 against its own template: named at once.
  answer = service.identify(label, tiny['paths'][0, 0], aligned=True).answers[0]
  assert answer.name == 'heldout_0' and answer.score == pytest.approx(1.0, abs=1e-5)


def test_a_second_model_loads_when_first_used(tiny, tmp_path):
  exported = app_support.export_as_face_model(tiny['workdir'], str(tmp_path / 'm.jax_export'))
  gallery = str(tmp_path / 'people.gallery')
  shutil.copy(tiny['gallery'], gallery)
  service = PageService([tiny['workdir'], exported], gallery)
  assert service.labels == [tiny['workdir'], exported]
  assert service.models[exported].recognizer is None  # not loaded until picked
  recognizer = service.recognizer(exported)
  assert service.recognizer(exported) is recognizer  # then kept
  assert recognizer.info.detect_faces  # the page's "aligned input" switch starts off for it
  # The same weights: the same fingerprint, so the gallery made with the workdir serves it too.
  photo = tiny['paths'][1, 5]
  by_export = service.identify(exported, photo, aligned=True).answers[0]
  by_workdir = service.identify(tiny['workdir'], photo, aligned=True).answers[0]
  assert by_export.name == by_workdir.name
  assert by_export.score == pytest.approx(by_workdir.score, abs=1e-5)
  # An export has no held-out people to calibrate "same person" on: the page says what to do.
  with pytest.raises(PageProblem, match='no held-out people .*set one with the slider'):
    service.verify(exported, photo, tiny['paths'][1, 6], aligned=True)
  assert (
    service.verify(exported, photo, tiny['paths'][1, 6], aligned=True, threshold=0.5).threshold.kind
    == 'given'
  )


def test_each_model_keeps_its_gallery_beside_it(tiny, tmp_path):
  assert gallery_beside(tiny['workdir']) == os.path.join(tiny['workdir'], 'people.gallery')
  assert gallery_beside(str(tmp_path / 'm.jax_export')) == str(tmp_path / 'm.jax_export.gallery')
  assert PageService([tiny['workdir']]).gallery_path(tiny['workdir']) == os.path.join(
    tiny['workdir'], 'people.gallery'
  )


def _astronaut(tmp_path) -> str:
  """A real photo with one face (public domain; ships in the scikit-image wheel)."""
  skimage_data = pytest.importorskip('skimage.data')
  photo = tmp_path / 'astronaut.png'
  Image.fromarray(skimage_data.astronaut()).save(photo)
  return str(photo)


def test_a_photo_goes_through_face_detection(tiny, service, tmp_path):
  photo = _astronaut(tmp_path)
  label = tiny['workdir']
  result = service.identify(label, photo, aligned=False, threshold=-1.0)
  expected = tiny['recognizer'].identify(
    photo, Gallery.load(service.gallery_path(label)), aligned=False, threshold=-1.0
  )
  assert len(result.answers) == len(expected) == 1
  np.testing.assert_allclose(result.answers[0].box, expected[0].box, atol=1e-3)
  x1, y1, x2, y2 = (int(round(float(v))) for v in result.answers[0].box)
  assert 0 < x1 < x2 < 512 and 0 < y1 < y2 < 512
  drawn = views.draw_identifications(result.photo, result.answers)
  assert drawn.shape == (512, 512, 3)  # drawn at its own size
  assert tuple(drawn[(y1 + y2) // 2, x1]) == views.KNOWN_COLOUR  # the box's left edge


# ------------------------------------------------------------------ bad input


def test_not_an_image_names_the_upload(tiny, service, tmp_path):
  notes = _not_an_image(tmp_path)
  with pytest.raises(PageProblem) as error:
    service.identify(tiny['workdir'], notes, aligned=True)
  message = str(error.value)
  assert message.startswith('notes.png: not an image file') and 'JPEG, PNG' in message
  assert str(tmp_path) not in message  # the upload's temporary folder is not the user's name
  with pytest.raises(PageProblem, match='notes.png: not an image'):
    service.verify(tiny['workdir'], tiny['paths'][0, 0], notes, aligned=True)


def test_a_very_large_image_is_refused_before_decoding(tiny, service, tmp_path):
  side = int(np.ceil(np.sqrt(MAX_MEGAPIXELS * 1e6))) + 1
  big = tmp_path / 'huge.png'
  Image.new('1', (side, side)).save(big)  # 1-bit: a few MB on disk, over the limit in pixels
  with pytest.raises(
    PageProblem,
    match=rf'huge.png is {side}×{side} pixels .*up to '
    rf'{MAX_MEGAPIXELS} megapixels: downscale it',
  ):
    service.identify(tiny['workdir'], str(big), aligned=True)
  with pytest.raises(PageProblem, match='huge.png is'):
    service.enrol(tiny['workdir'], 'someone', [str(big)], aligned=True)


def test_no_face_found(tiny, service, tmp_path):
  blank = tmp_path / 'wall.png'
  Image.new('RGB', (160, 120), (200, 200, 190)).save(blank)
  with pytest.raises(PageProblem, match=r'No face found in wall.png: .*tick "aligned input"'):
    service.identify(tiny['workdir'], str(blank), aligned=False)
  with pytest.raises(PageProblem, match='No face found in wall.png'):
    service.verify(tiny['workdir'], _astronaut(tmp_path), str(blank), aligned=False)
  with pytest.raises(PageProblem, match=r'Nothing enrolled for x: No face found in wall.png'):
    service.enrol(tiny['workdir'], 'x', [str(blank)], aligned=False)


def test_missing_inputs(tiny, service):
  label = tiny['workdir']
  with pytest.raises(PageProblem, match='No photo given: upload a photo first'):
    service.identify(label, None, aligned=True)
  with pytest.raises(PageProblem, match='No photo given: upload a second photo'):
    service.verify(label, tiny['paths'][0, 0], None, aligned=True)
  with pytest.raises(PageProblem, match='No model picked'):
    service.identify('not/a/model', tiny['paths'][0, 0], aligned=True)


@pytest.mark.parametrize('name', ['', '   ', None])
def test_enrol_needs_a_name(tiny, service, name):
  with pytest.raises(PageProblem, match='The name is empty: type the name'):
    service.enrol(tiny['workdir'], name, [tiny['paths'][7, 0]], aligned=True)


def test_enrol_refuses_unknown_and_no_photos(tiny, service):
  with pytest.raises(PageProblem, match='"Unknown" is the answer for strangers'):
    service.enrol(tiny['workdir'], 'Unknown', [tiny['paths'][7, 0]], aligned=True)
  with pytest.raises(PageProblem, match='No photos given: add one or more photos of ann'):
    service.enrol(tiny['workdir'], 'ann', [], aligned=True)


def test_enrol_skips_bad_files_and_says_which(tiny, service, tmp_path):
  notes = _not_an_image(tmp_path)
  result = service.enrol(tiny['workdir'], 'heldout_8', [tiny['paths'][8, 0], notes], aligned=True)
  assert result.added == 1
  assert result.skipped == [('notes.png', 'not an image file (or a format Pillow cannot read)')]
  with pytest.raises(PageProblem, match=r'Nothing enrolled for ann: notes.png: not an image'):
    service.enrol(tiny['workdir'], 'ann', [notes], aligned=True)


def test_gallery_of_another_model_is_refused(tiny, service):
  label = tiny['workdir']
  other = Gallery.load(service.gallery_path(label))
  other.fingerprint = '0123456789abcdef'  # as if enrolled with another model's weights
  other.save(service.gallery_path(label))
  for action in (
    lambda: service.identify(label, tiny['paths'][0, 5], aligned=True),
    lambda: service.enrol(label, 'ann', [tiny['paths'][7, 0]], aligned=True),
    lambda: service.people(label),
  ):
    with pytest.raises(
      PageProblem,
      match=r'was made with model .*0123456789abcdef.*pick the '
      r'model the gallery was made with',
    ):
      action()


def test_damaged_gallery_and_missing_model(tiny, tmp_path):
  broken = tmp_path / 'broken.gallery'
  broken.write_bytes(b'PK\x03\x04 not really a zip')
  service = PageService([tiny['workdir']], str(broken))
  with pytest.raises(PageProblem, match='broken.gallery: not a gallery file'):
    service.identify(tiny['workdir'], tiny['paths'][0, 0], aligned=True)
  missing = str(tmp_path / 'no_model')
  with pytest.raises(PageProblem, match=f'Cannot load the model {missing}'):
    PageService([missing]).recognizer(missing)


# ------------------------------------------------------------------ drawings


def test_boxes_are_drawn_where_the_faces_are(tiny, service):
  result = service.identify(tiny['workdir'], tiny['paths'][1, 5], aligned=True, threshold=-1.0)
  drawn = views.draw_identifications(result.photo, result.answers)
  side = result.photo.shape[0]
  scale = int(np.ceil(views.MIN_SHOWN_SIDE / side))
  assert drawn.shape == (side * scale, side * scale, 3)
  # The whole crop is the face: its box is the image border, in the known-face colour.
  assert tuple(drawn[side * scale // 2, 0]) == views.KNOWN_COLOUR
  assert tuple(drawn[side * scale - 1, side * scale // 2]) == views.KNOWN_COLOUR
  stranger = service.identify(tiny['workdir'], tiny['paths'][1, 5], aligned=True, threshold=1.0)
  drawn = views.draw_identifications(stranger.photo, stranger.answers)
  assert tuple(drawn[side * scale // 2, 0]) == views.UNKNOWN_COLOUR
  rows = views.identify_rows(stranger.answers)
  assert rows[0][1] == 'unknown' and rows[0][2] == round(stranger.answers[0].score, 4)


def test_embedding_map_is_the_gallerys_pca(tiny, service):
  decomposition = pytest.importorskip('sklearn.decomposition')
  gallery = Gallery.load(service.gallery_path(tiny['workdir']))
  figure = views.embedding_map(gallery)
  collections = figure.axes[0].collections
  assert [c.get_label() for c in collections] == gallery.names
  points = np.concatenate([c.get_offsets() for c in collections])
  order = np.concatenate([np.flatnonzero(gallery.labels == k) for k in range(len(gallery.names))])
  reference = decomposition.PCA(2).fit_transform(gallery.embeddings.astype(np.float64))[order]
  # Principal axes are defined up to sign.
  np.testing.assert_allclose(np.abs(points), np.abs(reference), atol=1e-5)


# ------------------------------------------------------------------ command line


def test_help_and_usage_errors(tmp_path):
  env = dict(
    os.environ, PYTHONPATH=app_support.REPO + os.pathsep + os.environ.get('PYTHONPATH', '')
  )
  run = lambda *args: subprocess.run(
    [sys.executable, '-m', 'arcface_jax.app', *args],
    capture_output=True,
    text=True,
    timeout=120,
    env=env,
    cwd=tmp_path,
  )
  shown = run('--help')
  assert shown.returncode == 0
  assert 'identify the people in a photo' in shown.stdout
  assert 'python -m arcface_jax.app --model runs/mine' in shown.stdout
  missing = run('--model', 'no_such_run')
  assert missing.returncode == 2
  assert 'error: --model no_such_run: no such workdir or file' in missing.stderr
  assert 'Traceback' not in missing.stderr
  folder = tmp_path / 'a_folder'
  folder.mkdir()
  bad_gallery = run('--model', str(folder), '--gallery', str(folder))
  assert bad_gallery.returncode == 2 and 'is a folder' in bad_gallery.stderr
