"""arcface_jax.faces on a tiny model trained here: embedding, thresholds, gallery, commands.

One tiny synthetic run is trained per module. Its inputs are crops, not photos of faces
(`ModelInfo.detect_faces` is False), so most flows here take photos as aligned crops; the enrolled
people and strangers are synthetic identities rendered from seeds outside the run's training and
held-out ranges. The detection flows run on real public-domain photos (tests/face_photos.py)
through the same backbone exported with a model info that declares photo input.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from faces_support import PEOPLE_SEED, STRANGER_SEED, write_people

from arcface_jax import export, models, parallel, trainer
from arcface_jax.config_files import load_config
from arcface_jax.data.synthetic import render_identity
from arcface_jax.evaluation.extract import extract_embeddings
from arcface_jax.faces import (
  CalibrationError,
  FaceRecognizer,
  Gallery,
  GalleryError,
  ModelError,
  cli,
  thresholds,
)
from arcface_jax.faces.model import load_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  config = load_config(os.path.join(REPO, 'configs', 'synthetic.py:tiny'))
  config.data.data_dir = str(tmp_path_factory.getbasetemp() / 'data')
  workdir = str(tmp_path_factory.mktemp('faces_run'))
  # One device: the sharded step is test_train's business, and this compiles faster.
  trainer.train_and_evaluate(config, workdir, mesh=parallel.make_mesh(1))  # steps 2 and 4 kept
  return workdir


@pytest.fixture(scope='module')
def recognizer(run):
  return FaceRecognizer.load(run)


@pytest.fixture(scope='module')
def face_model(run, recognizer, tmp_path_factory):
  """The run's backbone exported with an info saying its inputs are detected, aligned faces."""
  path = str(tmp_path_factory.mktemp('export') / 'faces.jax_export')
  info = dataclasses.replace(recognizer.info, detect_faces=True)
  export.save(
    path,
    models.from_config(recognizer.model.config),
    _variables(run),
    info.image_size,
    platforms=('cpu',),
    info=info,
  )
  return path


@pytest.fixture(scope='module')
def people(tmp_path_factory):
  return write_people(tmp_path_factory.mktemp('people'), PEOPLE_SEED, 6, 3, 'person')


@pytest.fixture(scope='module')
def strangers(tmp_path_factory):
  return write_people(tmp_path_factory.mktemp('strangers'), STRANGER_SEED, 10, 4, 'stranger')


@pytest.fixture(scope='module')
def gallery(recognizer, people):
  return Gallery.enroll(recognizer, str(people))


# ------------------------------------------------------------------ model and embeddings


def test_embeddings_match_the_evaluation_protocol_and_padding_changes_nothing(recognizer):
  crops = render_identity(PEOPLE_SEED, 11, 16, image_seed=3)
  batch = recognizer.embed(list(crops))  # 11 crops: one bucket of 32, padded
  one_by_one = np.concatenate([recognizer.embed(c) for c in crops[:3]])  # buckets of 1
  np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(one_by_one, batch[:3], atol=1e-5)
  # Evaluation's extractor (flip-sum, its own batching and normalisation), normalised here.
  info = recognizer.info
  raw, _ = extract_embeddings(
    recognizer.model.apply, crops, batch_size=4, mean=info.mean, std=info.std
  )
  expected = raw / np.linalg.norm(raw.astype(np.float64), axis=1, keepdims=True)
  np.testing.assert_allclose(batch, expected, atol=1e-5)


def test_exported_model_embeds_like_its_workdir(recognizer, face_model):
  exported = FaceRecognizer.load(face_model)
  assert exported.model.kind == 'export'
  assert exported.info == dataclasses.replace(recognizer.info, detect_faces=True)
  crops = render_identity(PEOPLE_SEED + 1, 3, 16, image_seed=4)
  np.testing.assert_allclose(exported.embed(list(crops)), recognizer.embed(list(crops)), atol=1e-5)
  # An export has no held-out people: verify says what to pass instead of guessing.
  with pytest.raises(CalibrationError, match='--threshold'):
    exported.verify(crops[0], crops[1], aligned=True)
  assert exported.verify(crops[0], crops[1], aligned=True, threshold=0.5).threshold.kind == 'given'


def _variables(run):
  from arcface_jax import inference, parallel

  return inference.load_embedder(run, mesh=parallel.make_mesh(1)).variables


def test_model_path_errors(tmp_path):
  with pytest.raises(ModelError, match='no_such_run.*no such file or folder'):
    load_model(str(tmp_path / 'no_such_run'))
  with pytest.raises(ModelError, match='without config.json'):
    load_model(str(tmp_path))
  (tmp_path / 'noise.jax_export').write_bytes(b'not a model')
  with pytest.raises(ModelError, match='no model info file'):
    load_model(str(tmp_path / 'noise.jax_export'))
  (tmp_path / 'noise.jax_export.json').write_text('{"format_version": 1}')
  with pytest.raises(ModelError, match='lacks'):
    load_model(str(tmp_path / 'noise.jax_export'))


# ------------------------------------------------------------------ thresholds


def test_threshold_at_rate_counts_and_conservative_fallback():
  rng = np.random.default_rng(0)
  scores = rng.uniform(-1, 1, 1000)
  t = thresholds.threshold_at_rate(scores, 0.01, 'FAR', 'test')
  assert np.sum(scores > t.value) == 10 and t.achieved == 0.01 and not t.note
  assert np.sum(scores >= t.value) == 11  # the next score up would accept one more
  few = thresholds.threshold_at_rate(scores[:50], 0.01, 'FPIR', 'test')
  assert few.value == scores[:50].max() and few.achieved == 0.0
  assert 'only 50 calibration scores' in few.note and 'at least 100' in few.note
  with pytest.raises(CalibrationError):
    thresholds.threshold_at_rate(scores, 1.5, 'FAR', 'test')


def test_impostor_scores_are_every_pair_of_different_people():
  rng = np.random.default_rng(1)
  embeddings = rng.normal(size=(7, 4))
  identities = np.array(['a', 'a', 'b', 'c', 'c', 'c', 'd'])
  expected = sorted(
    float(np.dot(embeddings[i], embeddings[j]))
    for i in range(7)
    for j in range(i + 1, 7)
    if identities[i] != identities[j]
  )
  got = sorted(thresholds.impostor_scores(embeddings, identities))
  np.testing.assert_allclose(got, expected)


def test_heldout_calibration_is_cached_per_checkpoint(run, recognizer):
  calibration = recognizer.calibration
  assert len(calibration) == 12 * 8 and len(set(calibration.identities)) == 12
  assert 'held-out synthetic' in calibration.source
  path = thresholds.cache_path(run, recognizer.model.step, recognizer.info.fingerprint)
  assert os.path.exists(path)
  stamp = os.path.getmtime(path)
  again = FaceRecognizer.load(run).calibration
  np.testing.assert_array_equal(again.embeddings, calibration.embeddings)
  assert os.path.getmtime(path) == stamp  # read, not recomputed
  verify = recognizer.verify_threshold()
  impostors = [
    float(a @ b)
    for i, a in enumerate(calibration.embeddings)
    for j, b in enumerate(calibration.embeddings)
    if j > i and calibration.identities[i] != calibration.identities[j]
  ]
  assert verify.kind == 'FAR' and verify.samples == len(impostors)
  # The threshold is one of the impostor scores; computed here pair by pair in float32 it can
  # differ from the recognizer's matrix product in the last bits, so compare above a rounding.
  assert np.mean(np.array(impostors) > verify.value + 1e-6) <= thresholds.DEFAULT_FAR


def test_fpir_threshold_rises_as_the_gallery_grows(recognizer, people, strangers):
  calibration = str(strangers)  # 40 photos of 10 strangers; FPIR 0.1 → the 5th highest
  small = Gallery.enroll(
    recognizer, {'person_0': [str(people / 'person_0' / '0.png')]}, calibrate=calibration, fpir=0.1
  )
  large = Gallery.enroll(recognizer, str(people), calibrate=calibration, fpir=0.1)
  assert small.threshold.source == calibration and small.threshold.samples == 40
  assert large.threshold.value > small.threshold.value
  # The definition, computed directly: each stranger's best cosine over the person templates.
  strangers_emb = large.calibration.embeddings
  templates = []
  for name in large.names:
    rows = large.embeddings[large.labels == large.names.index(name)].astype(np.float64)
    templates.append(rows.sum(0) / np.linalg.norm(rows.sum(0)))
  top = np.sort((strangers_emb @ np.array(templates).T).max(axis=1))[::-1]
  assert large.threshold.value == pytest.approx(top[4], abs=1e-6)
  # Enrolling more people into the small gallery re-sets its threshold the same way.
  small.add(recognizer, str(people))
  assert small.threshold.value == pytest.approx(large.threshold.value, abs=1e-6)


def test_strangers_are_unknown_and_enrolled_photos_are_named(
  recognizer, people, strangers, gallery
):
  assert gallery.threshold.kind == 'FPIR' and 'held-out' in gallery.threshold.source
  answers = [recognizer.identify(str(p), gallery)[0] for p in sorted(strangers.rglob('*.png'))]
  unknown = sum(a.name == 'unknown' for a in answers)
  assert unknown >= 0.9 * len(answers)
  assert all(a.threshold is gallery.threshold for a in answers)
  single = Gallery.enroll(
    recognizer, {f'p{k}': [str(people / f'person_{k}' / '0.png')] for k in range(6)}
  )
  for k in range(6):
    (answer,) = recognizer.identify(str(people / f'person_{k}' / '0.png'), single)
    assert answer.name == f'p{k}' and answer.score == pytest.approx(1.0, abs=1e-5)
    assert answer.runner_up != answer.name and answer.runner_up_score < answer.score


# ------------------------------------------------------------------ gallery files


def test_gallery_round_trip(gallery, tmp_path):
  path = str(tmp_path / 'people.gallery')
  gallery.save(path)
  assert os.listdir(tmp_path) == ['people.gallery']  # no '.npz' appended, no temporary left
  loaded = Gallery.load(path)
  assert loaded.names == gallery.names == [f'person_{k}' for k in range(6)]
  np.testing.assert_array_equal(loaded.embeddings, gallery.embeddings)
  np.testing.assert_array_equal(loaded.labels, gallery.labels)
  np.testing.assert_array_equal(loaded.calibration.embeddings, gallery.calibration.embeddings)
  assert loaded.photos == gallery.photos and loaded.fingerprint == gallery.fingerprint
  assert loaded.threshold == gallery.threshold


def test_gallery_made_with_another_model_is_refused(run, recognizer, gallery):
  other = FaceRecognizer.load(run, step=2)  # the same run two steps earlier: other weights
  assert other.info.fingerprint != recognizer.info.fingerprint
  with pytest.raises(GalleryError) as error:
    other.identify(render_identity(PEOPLE_SEED, 1, 16, 0)[0], gallery)
  assert recognizer.info.fingerprint in str(error.value)
  assert other.info.fingerprint in str(error.value)


def test_damaged_gallery_files(gallery, tmp_path):
  good = str(tmp_path / 'good.gallery')
  gallery.save(good)
  data = open(good, 'rb').read()
  (tmp_path / 'cut.gallery').write_bytes(data[: len(data) // 2])
  (tmp_path / 'text.gallery').write_text('names: alice, bob')
  with pytest.raises(GalleryError, match='cut.gallery.*damaged'):
    Gallery.load(str(tmp_path / 'cut.gallery'))
  with pytest.raises(GalleryError, match='text.gallery'):
    Gallery.load(str(tmp_path / 'text.gallery'))
  with pytest.raises(GalleryError, match='no such gallery file'):
    Gallery.load(str(tmp_path / 'missing.gallery'))
  arrays = dict(np.load(good))
  arrays['labels'] = arrays['labels'] + 100
  np.savez(tmp_path / 'labels.npz', **arrays)
  with pytest.raises(GalleryError, match='labels outside'):
    Gallery.load(str(tmp_path / 'labels.npz'))


def test_empty_gallery_is_an_error(recognizer, tmp_path):
  (tmp_path / 'alice').mkdir()
  (tmp_path / 'alice' / 'broken.jpg').write_bytes(b'\xff\xd8\xff garbage')
  with pytest.raises(GalleryError, match='no face could be enrolled.*1 photos skipped'):
    Gallery.enroll(recognizer, str(tmp_path))
  empty = Gallery(
    names=[],
    embeddings=np.zeros((0, 32), np.float32),
    labels=np.zeros((0,), np.int32),
    photos=[],
    model_name='m',
    embedding_dim=32,
    fingerprint='f',
  )
  with pytest.raises(GalleryError, match='empty'):
    empty.save(str(tmp_path / 'empty.gallery'))


# ------------------------------------------------------------------ command line


def _cli(capsys, *argv):
  code = cli.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return code, out, err


def test_cli_detect_aligned_writes_the_training_layout(capsys, people, tmp_path):
  (people / 'person_0' / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
  (people / 'person_0' / 'notes.txt').write_text('not a photo')
  try:
    code, out, err = _cli(
      capsys, 'detect', people, '--aligned', '--json', '--out', tmp_path / 'crops'
    )
  finally:
    os.remove(people / 'person_0' / 'corrupt.png')
    os.remove(people / 'person_0' / 'notes.txt')
  assert code == 0
  results = json.loads(out)
  assert len(results) == 18
  (face,) = results[0]['faces']
  assert set(face) == {'box', 'score', 'landmarks'} and len(face['box']) == 4
  assert np.array(face['landmarks']).shape == (5, 2)
  assert sorted(os.listdir(tmp_path / 'crops')) == [f'person_{k}' for k in range(6)]
  crop = cv2.imread(str(tmp_path / 'crops' / 'person_3' / '2_0.png'))
  assert crop.shape == (112, 112, 3)
  assert '1 skipped' in err and 'corrupt.png' in err and '1 files without a photo' in err


def test_cli_detect_nothing_readable_exits_1(capsys, tmp_path):
  (tmp_path / 'bad.jpg').write_bytes(b'not a jpeg')
  code, out, err = _cli(capsys, 'detect', '--aligned', tmp_path)
  assert code == 1 and 'bad.jpg' in err


def test_cli_enroll_identify_verify_grid(capsys, run, people, strangers, tmp_path):
  gallery_path = tmp_path / 'people.gallery'
  code, _, err = _cli(
    capsys,
    'enroll',
    '--model',
    run,
    '--photos',
    people,
    '--out',
    gallery_path,
    '--calibrate',
    strangers,
  )
  assert code == 0 and gallery_path.exists() and '18 photos enrolled (6 people)' in err
  assert 'FPIR 0.01' in err
  code, out, _ = _cli(
    capsys,
    'identify',
    '--model',
    run,
    '--gallery',
    gallery_path,
    '--json',
    people / 'person_1',
    strangers / 'stranger_0' / '0.png',
  )
  assert code == 0
  results = json.loads(out)
  assert [r['photo'] for r in results][-1].endswith('0.png') and len(results) == 4
  (face,) = results[0]['faces']
  assert {'box', 'name', 'score', 'runner_up', 'threshold', 'fpir'} <= set(face)
  assert face['fpir'] == 0.01 and len(face['box']) == 4
  assert results[-1]['faces'][0]['name'] == 'unknown'
  code, out, _ = _cli(
    capsys,
    'identify',
    '--model',
    run,
    '--gallery',
    gallery_path,
    '--json',
    '--threshold',
    '-1',
    people / 'person_1' / '0.png',
  )
  assert json.loads(out)[0]['faces'][0]['name'] == 'person_1'  # a given threshold is used
  code, out, err = _cli(
    capsys,
    'verify',
    '--model',
    run,
    '--json',
    people / 'person_2' / '0.png',
    people / 'person_2' / '0.png',
  )
  answer = json.loads(out)
  assert code == 0 and answer['same'] is True and answer['score'] == pytest.approx(1, abs=1e-5)
  assert isinstance(answer['threshold'], float) and answer['far'] == 0.001 and 'FAR' in err
  code, _, err = _cli(
    capsys, 'grid', '--model', run, '--photos', people, '--out', tmp_path / 'grid.png'
  )
  assert code == 0 and cv2.imread(str(tmp_path / 'grid.png')) is not None
  assert 'accuracy' in err and '/18 photos of 6 people' in err


def test_cli_errors_are_one_line(capsys, run, gallery, tmp_path):
  code, _, err = _cli(
    capsys, 'identify', '--model', tmp_path / 'nowhere', '--gallery', tmp_path / 'g', 'x.png'
  )
  assert code == 2 and 'no such gallery file' in err and len(err.strip().splitlines()) == 1
  assert 'Traceback' not in err
  code, _, err = _cli(capsys, 'verify', '--model', tmp_path / 'nowhere', 'a.png', 'b.png')
  assert code == 2 and 'nowhere: no such file or folder' in err
  # A gallery whose model fingerprint is not this model's.
  path = str(tmp_path / 'foreign.gallery')
  gallery.save(path)
  arrays = dict(np.load(path))
  meta = json.loads(str(arrays['meta']))
  meta['fingerprint'], meta['model_name'] = '0123456789abcdef', 'iresnet50'
  arrays['meta'] = np.array(json.dumps(meta))
  with open(path, 'wb') as f:
    np.savez(f, **arrays)
  code, _, err = _cli(capsys, 'identify', '--model', run, '--gallery', path, 'x.png')
  last = err.strip().splitlines()[-1]  # after the lines naming the model loaded
  assert code == 2 and 'iresnet50 (fingerprint 0123456789abcdef)' in last
  assert gallery.fingerprint in last and 'Traceback' not in err


def test_cli_usage_error_in_a_fresh_process():
  result = subprocess.run(
    [sys.executable, '-m', 'arcface_jax.faces', 'enroll', '--model', 'x'],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=120,
  )
  assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
  assert '--photos' in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.parametrize('name', sorted(cli.RUNNERS))
def test_cli_help_says_what_and_shows_an_example(capsys, name):
  with pytest.raises(SystemExit) as exit_info:
    cli.main([name, '--help'])
  out = capsys.readouterr().out
  assert exit_info.value.code == 0 and 'example:' in out
  assert f'python -m arcface_jax.faces {name}' in out


# ------------------------------------------------------------------ calibration kept with a model


def _copy_export(path, folder):
  """The export and its model info, copied, so a test can add files beside it."""
  import shutil

  target = str(folder / os.path.basename(path))
  shutil.copy(path, target)
  shutil.copy(path + '.json', target + '.json')
  return target


def test_export_keeps_the_runs_heldout_calibration(capsys, run, recognizer, people, tmp_path):
  out = str(tmp_path / 'backbone.jax_export')
  export.main(['--workdir', run, '--out', out, '--platforms', 'cpu'])
  assert 'kept 96 calibration faces of 12 people' in capsys.readouterr().out
  exported = FaceRecognizer.load(out)
  theirs, ours = recognizer.verify_threshold(), exported.verify_threshold()
  assert ours.kind == 'FAR' and ours.samples == theirs.samples and ours.source == theirs.source
  assert ours.value == pytest.approx(theirs.value, abs=1e-5)
  gallery = Gallery.enroll(exported, str(people))  # identify's FPIR threshold, no --calibrate
  assert gallery.threshold is not None and gallery.threshold.kind == 'FPIR'
  plain = str(tmp_path / 'plain.jax_export')
  export.main(['--workdir', run, '--out', plain, '--platforms', 'cpu', '--no-calibration'])
  assert not os.path.exists(plain + thresholds.KEPT_SUFFIX)
  with pytest.raises(CalibrationError, match='faces calibrate'):
    FaceRecognizer.load(plain).verify_threshold()


def test_calibrate_command_keeps_strangers_beside_an_export(
  capsys, recognizer, face_model, strangers, tmp_path
):
  model = _copy_export(face_model, tmp_path)
  kept = model + thresholds.KEPT_SUFFIX
  code, _, err = _cli(capsys, 'calibrate', '--model', model, '--photos', strangers, '--aligned')
  assert code == 0 and os.path.exists(kept) and 'kept 40 faces of 10 people' in err
  expected = recognizer.calibration_from(str(strangers), aligned=True).far_threshold()
  code, out, err = _cli(
    capsys, 'verify', '--model', model, '--json', '--aligned', strangers / 'stranger_0' / '0.png',
    strangers / 'stranger_1' / '0.png',
  )  # fmt: skip
  assert code == 0 and json.loads(out)['threshold'] == pytest.approx(expected.value, abs=1e-5)
  assert json.loads(out)['far'] == thresholds.DEFAULT_FAR and 'stranger' in err
  # Another model's calibration beside the file (the export was replaced) is not used.
  with np.load(kept) as data:
    arrays = dict(data)
  meta = json.loads(str(arrays['meta']))
  np.savez(
    kept,
    embeddings=arrays['embeddings'],
    meta=np.array(json.dumps({**meta, 'fingerprint': 'other'})),
  )
  with pytest.raises(CalibrationError, match='--threshold'):
    FaceRecognizer.load(model).verify_threshold()
  with open(kept, 'wb') as f:  # damaged: ignored, and left where it is
    f.write(b'PK\x03\x04 cut short')
  with pytest.raises(CalibrationError, match='--threshold'):
    FaceRecognizer.load(model).verify_threshold()
  assert os.path.exists(kept)


def test_calibrate_command_on_a_workdir_comes_before_the_heldout_people(
  capsys, run, recognizer, strangers
):
  kept = thresholds.kept_path(recognizer.model)
  try:
    code, _, err = _cli(capsys, 'calibrate', '--model', run, '--photos', strangers)
    assert code == 0 and kept.startswith(os.path.join(run, 'faces_calibration'))
    calibration = FaceRecognizer.load(run).calibration
    assert len(calibration) == 40 and str(strangers) in calibration.source
  finally:
    if os.path.exists(kept):
      os.remove(kept)  # the other tests of this module calibrate on the held-out people
