"""analysis.margin_families against the papers' formulas; analysis.loss_table's recipe and its
table (analysis.loss_table_writer)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from analysis import loss_table, loss_table_writer, margin_families
from arcface_jax import margins

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_margin_families_match_the_formulas(tmp_path):
  data = margin_families.compute(num=181)
  theta = np.deg2rad(data['theta_deg'])
  fams = data['families']
  below = theta < np.pi / 2 - 1e-3  # MagFace's easy margin acts where cos θ > 0
  for member in fams['magface']['members']:
    m = 0.45 + (0.8 - 0.45) * (member['value'] - 10) / 100
    np.testing.assert_allclose(member['f'][below], np.cos(theta[below] + m), atol=2e-5)
  for member in fams['adaface']['members']:
    z = member['value']
    c = np.clip(np.cos(theta), -1 + 1e-3, 1 - 1e-3)
    want = np.cos(np.clip(np.arccos(c) - 0.4 * z, 1e-3, np.pi - 1e-3)) - 0.4 * (1 + z)
    np.testing.assert_allclose(member['f'], want, atol=2e-4)
  for member in fams['elasticface_arc']['members']:
    np.testing.assert_allclose(member['f'], np.cos(theta + member['value']), atol=2e-5)
  for member in fams['elasticface_cos']['members']:
    np.testing.assert_allclose(member['f'], np.cos(theta) - member['value'], atol=2e-5)
  hard = np.cos(theta) > math.cos(math.radians(60) + 0.5)
  for member in fams['curricularface']['members']:
    c = np.cos(theta)
    want = np.where(hard, c * (member['value'] + c), c)
    away = np.abs(c - math.cos(math.radians(60) + 0.5)) > 1e-4
    np.testing.assert_allclose(member['f'][away], want[away], atol=2e-5)
  paths = margin_families.write(str(tmp_path), num=91)
  assert os.path.getsize(paths['png']) > 10_000
  meta = json.loads(open(paths['json']).read())
  assert set(meta['families']) == {
    'magface',
    'adaface',
    'elasticface_arc',
    'elasticface_cos',
    'curricularface',
  }


@pytest.mark.parametrize('loss', list(loss_table.LOSSES))
def test_loss_table_recipe_changes_only_the_loss(loss):
  spec = os.path.join(REPO, 'configs', 'toy.py') + ':cm2,3d'
  config = loss_table.recipe(spec, loss, seed=3)
  assert config.seed == 3 and config.loss.name == loss_table.LOSSES[loss][0]['name']
  assert config.model.embedding_dim == 3 and config.train.num_steps == 400
  # cm2's own margins are dropped: the row gets its paper defaults.
  assert config.loss.m1 is None and config.loss.m2 is None and config.loss.m3 is None
  assert config.loss.s == (None if loss in ('softmax', 'sphereface') else 16.0)
  if loss != 'softmax':
    mg = margins.from_config(config.loss)
    if loss == 'elasticface_arc_plus':
      assert mg.plus and mg.sigma == 0.0175


def test_loss_table_summary_and_files(tmp_path):
  results = [
    dict(
      loss='arcface',
      seed=s,
      seconds=10.0 + s,
      workdir=f'w{s}',
      set='digits',
      pairs=100,
      accuracy=a,
      tar_at_far=t,
    )
    for s, (a, t) in enumerate([(0.9, 0.5), (0.8, 0.3)])
  ]
  results.append(
    dict(
      loss='magface',
      seed=0,
      seconds=7.0,
      workdir='m',
      set='digits',
      pairs=100,
      accuracy=0.95,
      tar_at_far=0.6,
    )
  )
  rows = loss_table_writer.summarise(results)
  assert [r['loss'] for r in rows] == ['arcface', 'magface']
  assert rows[0]['accuracy'] == pytest.approx(0.85) and rows[0]['accuracy_std'] == pytest.approx(
    np.std([0.9, 0.8])
  )
  assert rows[0]['tar_at_far'] == pytest.approx(0.4) and rows[0]['seconds'] == pytest.approx(10.5)
  path = loss_table_writer.write_table(results, 'configs/toy.py:3d', 400, 2, str(tmp_path))
  text = open(path).read()
  row = (
    '| arcface | name=arcface | ArcFace, Deng et al., CVPR 2019 | 85.00 ± 5.00 | 40.00 ± 10.00 |'
  )
  assert row in text
  assert os.path.getsize(os.path.join(tmp_path, 'loss_table.png')) > 10_000
  # CPU time beside the wall time ('—' where a run has none), the total, and what is missing.
  results[0]['cpu_seconds'], results[1]['cpu_seconds'] = 30.0, 50.0
  path = loss_table_writer.write_table(
    results,
    'configs/toy.py:3d',
    400,
    2,
    str(tmp_path),
    losses=['arcface', 'magface'],
    runs_dir='somewhere',
  )
  text = open(path).read()
  assert '| 2 | 10 | 40 |' in text and '| 1 | 7 | — |' in text  # arcface, magface rows
  assert 'wall time 0.5 min, CPU time 1.3 min (2 runs timed)' in text
  assert 'Partial: 3 of 4 runs' in text and 'missing: magface seed 1' in text
  assert '--runs somewhere' in text
  # A later invocation keeps these runs (their directories are gone: marked) until retrained.
  earlier = loss_table_writer.earlier_results(str(tmp_path), 'configs/toy.py:3d', 400)
  assert [(r['loss'], r['seed'], r['earlier']) for r in earlier] == [
    ('arcface', 0, True),
    ('arcface', 1, True),
    ('magface', 0, True),
  ]
  assert loss_table_writer.earlier_results(str(tmp_path), 'configs/toy.py:3d', 200) == []
  with pytest.raises(SystemExit):
    loss_table.main(['--config', 'configs/nothing.py', '--seeds', '1'])
