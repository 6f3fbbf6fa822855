"""The faces command line on a tiny model trained here, and calibrations kept with a model.

The run and the synthetic people come from tests/faces_fixtures.py (one run per session). The
run's inputs are crops, not photos of faces, so the commands take them as aligned crops.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from arcface_jax import export
from arcface_jax.faces import CalibrationError, FaceRecognizer, Gallery, cli, thresholds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytest_plugins = ('faces_fixtures',)  # run, recognizer, face_model, people, strangers, gallery


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
  capsys, run, strangers, tmp_path
):
  mine = str(tmp_path / 'run')
  shutil.copytree(run, mine)  # the session's run is shared: this test changes its copy
  kept = thresholds.kept_path(FaceRecognizer.load(mine).model)
  code, _, err = _cli(capsys, 'calibrate', '--model', mine, '--photos', strangers)
  assert code == 0 and kept.startswith(os.path.join(mine, 'faces_calibration'))
  assert os.path.exists(kept) and 'kept 40 faces of 10 people' in err
  calibration = FaceRecognizer.load(mine).calibration
  assert len(calibration) == 40 and str(strangers) in calibration.source
