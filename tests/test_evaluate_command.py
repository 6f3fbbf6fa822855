"""The evaluate command on a trained toy run: the library's numbers on its checkpoint, the
reference log format, gallery/probe identification, the fold-balance warning, and the evaluator
registry that training and the command share."""

import numpy as np
import pytest

from arcface_jax.evaluation import verification


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
  """configs/toy.py:arcface,tiny (6 steps on digits, 16x16) and a .bin of held-out digit pairs."""
  import os

  import cv2

  from arcface_jax import trainer
  from arcface_jax.config_files import load_config
  from arcface_jax.data import digits, verification_bin

  root = tmp_path_factory.mktemp('evaluate')
  toy = os.path.join(os.path.dirname(__file__), os.pardir, 'configs', 'toy.py')
  workdir = str(root / 'run')
  trainer.train_and_evaluate(load_config(f'{toy}:arcface,tiny'), workdir)
  images, issame = digits.digits_verification_pairs(40, num_classes=8)
  encoded = [cv2.imencode('.png', im[..., ::-1])[1].tobytes() for im in images]
  verification_bin.write_bin(str(root / 'digits.bin'), encoded, issame)
  return workdir, str(root / 'digits.bin'), images, issame


def test_evaluate_run_matches_the_library_on_the_checkpoint(toy_run):
  import json

  from arcface_jax import evaluate
  from arcface_jax.evaluation.extract import extract_embeddings
  from arcface_jax.inference import load_embedder

  workdir, bin_path, images, issame = toy_run
  results = evaluate.evaluate_run(workdir, step=4, bins=[bin_path])
  with open(results['path']) as f:
    written = json.load(f)
  assert written['step'] == 4 and results['path'].endswith('eval/step_4.json')
  entry = written['verification']['digits']
  embedder = load_embedder(workdir, 4)
  emb, xnorm = extract_embeddings(
    embedder.apply, images, batch_size=64, mean=embedder.mean, std=embedder.std, mesh=embedder.mesh
  )
  expected = verification.evaluate(emb, issame)
  assert entry['accuracy'] == pytest.approx(expected['accuracy'])
  assert entry['std'] == pytest.approx(expected['std'])
  assert entry['xnorm'] == pytest.approx(xnorm, rel=1e-5) and entry['pairs'] == 40


def test_evaluate_command_logs_the_reference_format(toy_run):
  import re
  import subprocess
  import sys

  workdir, bin_path, _, _ = toy_run
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'arcface_jax.evaluate',
      '--workdir',
      workdir,
      '--bins',
      bin_path,
      bin_path,
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert re.search(r'\[digits\]\[6\] Accuracy-Flip: \d\.\d{5}\+-\d\.\d{5}', result.stderr)
  assert re.search(r'\[digits\]\[6\] XNorm: \d', result.stderr)
  missing = subprocess.run(
    [sys.executable, '-m', 'arcface_jax.evaluate', '--workdir', workdir, '--bins', 'nope.bin'],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert missing.returncode == 2 and 'nope.bin' in missing.stderr


def test_evaluate_run_identifies_gallery_and_probe_folders(toy_run, tmp_path):
  import cv2

  from arcface_jax import evaluate
  from arcface_jax.data import digits

  workdir, _, _, _ = toy_run
  source = digits.DigitsSource('test', 16, 8)
  counts = {}
  for i in range(len(source)):
    image, label = source[i]
    seen = counts.setdefault(label, 0)
    counts[label] += 1
    # Gallery: two of digits 0-5; probes: the next two of every digit (6 and 7 are non-mated).
    if seen < 2 and label < 6:
      folder = tmp_path / 'gallery' / str(label)
    elif 2 <= seen < 4:
      folder = tmp_path / 'probe' / str(label)
    else:
      continue
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / f'{i}.png'), image[..., ::-1])
  results = evaluate.evaluate_run(
    workdir, bins=[], gallery=str(tmp_path / 'gallery'), probe=str(tmp_path / 'probe')
  )
  ident = results['identification']
  assert (ident['num_identities'], ident['num_mated'], ident['num_nonmated']) == (6, 12, 4)
  assert 0.0 <= ident['rank1'] <= ident['rank5'] <= 1.0
  assert set(ident['dir_at_far']) == {'0.001', '0.01', '0.1'}
  assert results['verification'] == {}


def test_evaluate_warns_on_a_bin_written_in_pairs_txt_order(toy_run, tmp_path, caplog):
  """A .bin of matched-then-mismatched pairs is still scored with consecutive folds, and the
  command says once, naming the set, that its numbers are skewed."""
  import cv2

  from arcface_jax import evaluate
  from arcface_jax.data import verification_bin

  workdir, _, images, issame = toy_run
  order = np.concatenate([np.flatnonzero(issame), np.flatnonzero(~issame)])
  pair_images = images.reshape(len(issame), 2, *images.shape[1:])[order].reshape(images.shape)
  encoded = [cv2.imencode('.png', im[..., ::-1])[1].tobytes() for im in pair_images]
  bin_path = str(tmp_path / 'pairs_txt_order.bin')
  verification_bin.write_bin(bin_path, encoded, issame[order])
  with caplog.at_level('WARNING'):
    results = evaluate.evaluate_run(workdir, bins=[bin_path])
  warnings = [r.getMessage() for r in caplog.records if 'consecutive folds' in r.getMessage()]
  assert len(warnings) == 1 and "'pairs_txt_order'" in warnings[0]
  assert 'only matched pairs' in warnings[0] and 'only mismatched pairs' in warnings[0]
  assert 0.0 <= results['verification']['pairs_txt_order']['accuracy'] <= 1.0


def test_training_and_command_run_the_same_registry_evaluator(toy_run, tmp_path):
  """The trainer's periodic evaluators (live variables, best kept) and `evaluate` (a restored
  checkpoint) score the same set identically."""
  import json

  import jax

  from arcface_jax import evaluate, models
  from arcface_jax.evaluation import evaluators
  from arcface_jax.inference import embedder_from_variables, load_embedder

  workdir, bin_path, _, _ = toy_run
  restored = load_embedder(workdir, 6)
  config = restored.config.copy_and_resolve_references()
  config.eval.bins = (bin_path,)
  live = embedder_from_variables(
    config,
    jax.jit(models.make_embed_fn(models.from_config(config))),
    restored.variables,
    6,
    restored.mesh,
  )
  (periodic,) = evaluators.for_training(config, str(tmp_path))
  metrics = periodic.run(live, 6)
  command = evaluate.evaluate_run(workdir, step=6, bins=[bin_path])['verification']['digits']
  assert metrics['digits/accuracy'] == pytest.approx(command['accuracy'])
  assert metrics['digits/xnorm'] == pytest.approx(command['xnorm'], rel=1e-5)
  with open(tmp_path / 'best.json') as f:
    assert json.load(f)['digits'] == {'accuracy': pytest.approx(command['accuracy']), 'step': 6}
  assert (tmp_path / 'best' / 'digits').is_dir()


@pytest.mark.parametrize(
  'evaluators_value,fragment',
  [
    (('verification', 'lfw_typo'), "unknown evaluator 'lfw_typo'"),
    (('test',), 'python -m arcface_jax.evaluate'),
    (('ijb',), 'config.eval.ijb.dir'),
  ],
)
def test_bad_evaluator_choice_is_a_config_error(evaluators_value, fragment, tmp_path):
  import os

  from arcface_jax.config_checks import ConfigError
  from arcface_jax.config_files import load_config
  from arcface_jax.evaluation import evaluators

  toy = os.path.join(os.path.dirname(__file__), os.pardir, 'configs', 'toy.py')
  config = load_config(f'{toy}:tiny')
  config.eval.evaluators = evaluators_value
  with pytest.raises(ConfigError, match=fragment.replace('.', r'\.')):
    evaluators.for_training(config, str(tmp_path))
