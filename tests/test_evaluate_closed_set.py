"""`python -m arcface_jax.evaluate`: closed-set test accuracy (classifier head restored from
model-parallel centres, nearest class centre) against an independent computation, results merged
into eval/step_N.json by set name, and only the evaluations asked for are run."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest

from arcface_jax import evaluate, parallel, reporting, trainer
from arcface_jax.config_files import load_config
from arcface_jax.data import folder, verification_bin
from arcface_jax.evaluation.extract import extract_embeddings
from arcface_jax.inference import load_embedder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDENTITIES, PHOTOS = 6, 8


def _photos(root) -> str:
  """6 identities x 8 photos of 12x10 (non-square): a colour per identity plus noise."""
  rng = np.random.default_rng(0)
  for identity in range(IDENTITIES):
    (root / f'p{identity}').mkdir(parents=True)
    colour = rng.integers(0, 255, 3)
    for k in range(PHOTOS):
      image = np.clip(colour + rng.normal(0, 20, (12, 10, 3)), 0, 255).astype(np.uint8)
      cv2.imwrite(str(root / f'p{identity}' / f'{k}.png'), image[..., ::-1])
  return str(root)


@pytest.fixture(scope='module')
def folder_run(tmp_path_factory):
  """A folder run split by image (val and test photos of every identity), its centres split over
  2 devices (head.model_parallel), small_cnn at 8 px for 2 steps; returns (workdir, state)."""
  root = tmp_path_factory.mktemp('closed_set')
  config = load_config(os.path.join(REPO, 'configs', 'folder.py:tiny'))
  config.data.path = _photos(root / 'photos')
  config.data.split_by = 'image'
  config.data.val_fraction, config.data.test_fraction = 0.25, 0.25
  config.data.image_size = 8
  config.data.rotation_degrees, config.data.color_jitter = 0.0, 0.0
  config.model.name, config.model.embedding_dim = 'small_cnn', 8
  config.head.model_parallel = True
  config.train.batch_size, config.train.num_steps = 8, 2
  config.eval.val_pairs, config.eval.every_steps = 12, 0
  workdir = str(root / 'run')
  state = trainer.train_and_evaluate(config, workdir, mesh=parallel.make_mesh(2))
  return workdir, state


def _expected_test_accuracies(workdir: str, state) -> tuple[float, float]:
  """Both accuracies recomputed here in float64 from the trained state's own centres."""
  config = reporting.read_config(workdir)
  embedder = load_embedder(workdir)

  def embed(split):
    ds = folder.FolderDataset(
      config.data.path, split=split, split_by='image', val_fraction=0.25, test_fraction=0.25
    )
    images = np.stack(
      [cv2.resize(ds[i][0], (8, 8), interpolation=cv2.INTER_AREA) for i in range(len(ds))]
    )
    emb = extract_embeddings(
      embedder.apply, images, batch_size=64, mean=embedder.mean, std=embedder.std, flip=False
    )[0]
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return unit.astype(np.float64), ds.labels

  test, test_labels = embed('test')
  train, train_labels = embed('train')
  centres = np.asarray(jax.device_get(state.params['head']['weight']), np.float64)[:IDENTITIES]
  head = np.argmax(test @ (centres / np.linalg.norm(centres, axis=1, keepdims=True)).T, axis=1)
  means = np.stack([train[train_labels == c].mean(0) for c in range(IDENTITIES)])
  nearest = np.argmax(test @ (means / np.linalg.norm(means, axis=1, keepdims=True)).T, axis=1)
  return float(np.mean(head == test_labels)), float(np.mean(nearest == test_labels))


def _tensorboard_scalars(directory: str) -> dict[str, list[tuple[int, float]]]:
  """tag → [(step, value)] read from the event files (TFRecord framing of Event protos)."""
  from tensorboardX.proto import event_pb2

  scalars: dict[str, list[tuple[int, float]]] = {}
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), 'rb') as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack('<Q', data[offset : offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_test_accuracy_of_head_and_class_centres(folder_run):
  workdir, state = folder_run
  results = evaluate.evaluate_run(workdir, test=True)
  head, nearest = _expected_test_accuracies(workdir, state)
  test = results['test']
  assert test['images'] == IDENTITIES * 2 and test['classes'] == IDENTITIES
  assert test['head_top1'] == pytest.approx(head)
  assert test['nearest_centre_top1'] == pytest.approx(nearest)
  assert nearest >= 0.8  # a colour per identity: the untrained embedding already separates them
  assert 'verification' not in results  # --test alone does not re-run the config's val pairs
  scalars = _tensorboard_scalars(os.path.join(workdir, 'tensorboard'))
  assert scalars['test/head_top1'][-1] == (2, pytest.approx(head))
  assert scalars['test/nearest_centre_top1'][-1] == (2, pytest.approx(nearest))


def test_results_are_merged_by_set_name(folder_run, tmp_path):
  workdir, _ = folder_run
  path = os.path.join(workdir, 'eval', 'step_2.json')
  if os.path.exists(path):
    os.remove(path)
  default = evaluate.evaluate_run(workdir)  # the config's sets: val pairs
  assert set(default['verification']) == {'val'}
  val = default['verification']['val']
  evaluate.evaluate_run(workdir, test=True)
  rng = np.random.default_rng(1)
  images = rng.integers(0, 255, (24, 8, 8, 3), dtype=np.uint8)
  bin_path = str(tmp_path / 'extra.bin')
  verification_bin.write_bin(
    bin_path, [cv2.imencode('.png', im)[1].tobytes() for im in images], [True, False] * 6
  )
  only_bins = evaluate.evaluate_run(workdir, bins=[bin_path])
  assert set(only_bins['verification']) == {'extra'}  # the config's val pairs not re-run
  with open(path) as f:
    written = json.load(f)
  assert set(written['verification']) == {'val', 'extra'}  # merged, the earlier set kept
  assert written['verification']['val'] == pytest.approx(val)
  assert 'test' in written and written['step'] == 2


def test_a_run_without_a_test_split_says_which_keys_make_one(tmp_path):
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  reporting.write_config(workdir, load_config(os.path.join(REPO, 'configs', 'synthetic.py:tiny')))
  # The command as users run it (in this process other tests' absl flags, --workdir among them,
  # would be inherited by the evaluate command's parser).
  done = subprocess.run(
    [sys.executable, '-m', 'arcface_jax.evaluate', '--workdir', workdir, '--test'],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
  )
  assert done.returncode == 2
  error = done.stderr
  assert 'Traceback' not in error
  for key in (
    '--config.data.split_by=image',
    '--config.data.test_fraction=0.1',
    "source='synthetic'",
  ):
    assert key in error
