"""Sub-center ArcFace's cleaning step: the decision against a brute force, and the command on a
tiny trained run, continued with one centre per class from the dominant sub-centres."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from arcface_jax import losses, subcenter_clean, trainer
from arcface_jax.config_files import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_clean_matches_a_brute_force():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 3, 5))
  labels = rng.integers(0, 4, 60)
  # Most images near sub-centre (label % 3), a few near another one of their class.
  pick = np.where(rng.random(60) < 0.8, labels % 3, rng.integers(0, 3, 60))
  emb = centres[labels, pick] + 0.3 * rng.normal(size=(60, 5))
  emb *= rng.uniform(0.5, 20, (60, 1))  # un-normalised, as the backbone's output
  got = subcenter_clean.clean(emb, labels, centres, max_angle=40.0)
  unit = lambda v: v / np.linalg.norm(v)
  for i in range(60):
    cos = [unit(emb[i]) @ unit(centres[labels[i], k]) for k in range(3)]
    assert got['nearest'][i] == int(np.argmax(cos))
  for c in range(4):
    counts = [np.sum((labels == c) & (got['nearest'] == k)) for k in range(3)]
    assert got['dominant'][c] == int(np.argmax(counts))
  for i in range(60):
    dominant = centres[labels[i], got['dominant'][labels[i]]]
    angle = np.degrees(np.arccos(unit(emb[i]) @ unit(dominant)))
    assert got['angle'][i] == pytest.approx(angle, abs=1e-6)
    assert got['flagged'][i] == (angle > 40.0)
  assert 0 < got['flagged'].sum() < 60


def test_command_on_a_tiny_run_and_continue_with_one_centre(tmp_path, capsys):
  config = load_config(os.path.join(REPO, 'configs', 'toy.py') + ':3d,tiny')
  config.loss.name = 'subcenter'
  config.data.data_dir = str(tmp_path / 'data')
  workdir = str(tmp_path / 'run')
  trainer.train_and_evaluate(config, workdir)
  out = str(tmp_path / 'clean')
  assert subcenter_clean.main(['--workdir', workdir, '--out', out, '--max_angle', '20']) == 0
  with open(os.path.join(out, 'flagged.tsv')) as f:
    lines = f.read().splitlines()
  import json

  with open(os.path.join(out, 'summary.json')) as f:
    summary = json.load(f)
  assert lines[0].split('\t') == ['index', 'label', 'angle_deg', 'nearest_subcentre']
  assert len(lines) - 1 == summary['flagged'] > 0 and summary['subcentres'] == 3
  angles = [float(line.split('\t')[2]) for line in lines[1:]]
  assert angles == sorted(angles, reverse=True) and min(angles) >= 20.0  # written to 0.01°
  dominant = np.load(os.path.join(out, 'dominant_centres.npy'))
  assert dominant.shape == (10, 3)
  # The printed continue command: the run's own config, K = 1, without the flagged images.
  command = capsys.readouterr().out.splitlines()[-1]
  assert command == subcenter_clean.continue_command(workdir, out)
  assert '--config.head.subcenters=1' in command and '--config.loss.name=arcface' in command
  with open(os.path.join(out, 'exclude.txt')) as f:
    excluded = [int(line) for line in f if not line.startswith('#')]
  assert excluded == sorted(int(line.split('\t')[0]) for line in lines[1:])
  from arcface_jax.data import sources

  continued = load_config(os.path.join(REPO, 'configs', 'from_run.py') + ':' + workdir)
  continued.data.exclude = os.path.join(out, 'exclude.txt')
  assert continued.loss.name == 'subcenter' and continued.train.num_steps == 6
  source = sources.get_train_source(continued.data)
  assert len(source) == summary['images'] - summary['flagged']
  assert not set(excluded) & set(source.kept.tolist())

  # Continue with K = 1 from the dominant sub-centres, dense and model-parallel.
  config.loss.name = 'arcface'
  config.head.subcenters = 1
  config.head.init_centres = os.path.join(out, 'dominant_centres.npy')
  for model_parallel in (False, True):
    config.head.model_parallel = model_parallel
    params, _ = losses.from_config(config, num_classes=10).init(jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(params['weight'])[:10], dominant)
  config.head.init_centres = str(tmp_path / 'missing.npy')
  config.head.model_parallel = False
  with pytest.raises(ValueError, match='init_centres'):
    losses.from_config(config, num_classes=10).init(jax.random.key(0))
  # Bad usage: exit status 2 with one message.
  with pytest.raises(SystemExit) as exit_info:
    subcenter_clean.main(['--workdir', str(tmp_path / 'nowhere'), '--out', out])
  assert exit_info.value.code == 2
