"""Fixtures of the faces tests (tests/test_faces*.py load them with `pytest_plugins`).

`run` is one tiny synthetic training run per test session, shared by every module and every
xdist worker: the first to ask trains it under a file lock in the session's temporary root,
the others wait and reuse it. Tests may let the faces code cache its held-out calibration there
(written whole, the same bytes whoever writes it) but must copy the run before changing it.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
from faces_support import PEOPLE_SEED, STRANGER_SEED, write_people
from filelock import FileLock

from arcface_jax import export, inference, models, parallel, trainer
from arcface_jax.config_files import load_config
from arcface_jax.faces import FaceRecognizer, Gallery

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _session_root(tmp_path_factory):
  """The temporary folder every xdist worker of this session shares (each has one below it)."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base


@pytest.fixture(scope='session')
def run(tmp_path_factory):
  root = _session_root(tmp_path_factory)
  workdir = root / 'faces_tiny_run'
  with FileLock(str(root / 'faces_tiny_run.lock')):
    if not (root / 'faces_tiny_run.trained').exists():
      config = load_config(os.path.join(REPO, 'configs', 'synthetic.py:tiny'))
      config.data.data_dir = str(root / 'faces_tiny_data')
      # One device: the sharded step is test_train's business, and this compiles faster.
      trainer.train_and_evaluate(config, str(workdir), mesh=parallel.make_mesh(1))
      (root / 'faces_tiny_run.trained').write_text('steps 2 and 4 kept\n')
  return str(workdir)


@pytest.fixture(scope='session')
def recognizer(run):
  return FaceRecognizer.load(run)


@pytest.fixture(scope='session')
def face_model(run, recognizer, tmp_path_factory):
  """The run's backbone exported with an info saying its inputs are detected, aligned faces."""
  path = str(tmp_path_factory.mktemp('export') / 'faces.jax_export')
  info = dataclasses.replace(recognizer.info, detect_faces=True)
  variables = inference.load_embedder(run, mesh=parallel.make_mesh(1)).variables
  model = models.from_config(recognizer.model.config)
  export.save(path, model, variables, info.image_size, platforms=('cpu',), info=info)
  return path


@pytest.fixture(scope='session')
def people(tmp_path_factory):
  return write_people(tmp_path_factory.mktemp('people'), PEOPLE_SEED, 6, 3, 'person')


@pytest.fixture(scope='session')
def strangers(tmp_path_factory):
  return write_people(tmp_path_factory.mktemp('strangers'), STRANGER_SEED, 10, 4, 'stranger')


@pytest.fixture(scope='session')
def gallery(recognizer, people):
  return Gallery.enroll(recognizer, str(people))
