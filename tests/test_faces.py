"""arcface_jax.faces on a tiny model trained here: embedding, thresholds, gallery files.

The run (one per test session) and the synthetic people come from tests/faces_fixtures.py. The
run's inputs are crops, not photos of faces (`ModelInfo.detect_faces` is False), so the flows
here take photos as aligned crops; the enrolled people and strangers are synthetic identities
rendered from seeds outside the run's training and held-out ranges. The commands are tested in
test_faces_cli.py, the detection flows on real photos in test_faces_photos.py.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pytest
from faces_support import PEOPLE_SEED

from arcface_jax.data.synthetic import render_identity
from arcface_jax.evaluation.extract import extract_embeddings
from arcface_jax.faces import (
  CalibrationError,
  FaceRecognizer,
  Gallery,
  GalleryError,
  ModelError,
  thresholds,
)
from arcface_jax.faces.model import load_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytest_plugins = ('faces_fixtures',)  # run, recognizer, face_model, people, strangers, gallery


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


def test_heldout_calibration_is_cached_per_checkpoint(run, recognizer, tmp_path):
  mine = str(tmp_path / 'run')
  shutil.copytree(run, mine)  # the session's run is shared: other workers may write its cache
  calibration = FaceRecognizer.load(mine).calibration
  assert len(calibration) == 12 * 8 and len(set(calibration.identities)) == 12
  assert 'held-out synthetic' in calibration.source
  path = thresholds.cache_path(mine, recognizer.model.step, recognizer.info.fingerprint)
  assert os.path.exists(path)
  stamp = os.path.getmtime(path)
  again = FaceRecognizer.load(mine).calibration
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
