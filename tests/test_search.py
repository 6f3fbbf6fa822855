"""Grid search: grid parsing, per-cell runs that survive a crash, results, shared compilation."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from arcface_jax import parallel, search, trainer
from arcface_jax.config_files import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'configs', 'synthetic.py:tiny')


def test_grid_is_the_product_with_typed_values_and_readable_names():
  config = load_config(TINY)
  cells = search.parse_grid(
    ['train.learning_rate=1e-3,1e-2', 'train.momentum=0.5,0.9', 'data.flip=true,false'], config
  )
  assert len(cells) == 8
  assert cells[0].values == {'train.learning_rate': 1e-3, 'train.momentum': 0.5, 'data.flip': True}
  assert cells[0].name == 'learning_rate=0.001,momentum=0.5,flip=True'
  assert isinstance(
    search.parse_grid(['train.num_steps=3'], config)[0].values['train.num_steps'], int
  )


@pytest.mark.parametrize(
  'spec,message',
  [
    ('train.learning_rate', 'expected KEY=V1,V2'),
    ('train.learning_rate=0.1,,0.2', 'expected KEY=V1,V2'),
    ('train.lerning_rate=0.1', "no key 'train.lerning_rate'"),
    ('train.num_steps=1.5', "'1.5' is not an int"),
    ('train', 'expected KEY=V1,V2'),
  ],
)
def test_bad_grid_names_the_spec(spec, message):
  with pytest.raises(search.SearchError, match=message):
    search.parse_grid([spec], load_config(TINY))


def test_metric_direction_known_or_stated():
  assert search.metric_direction('eval/val/accuracy', None, None)
  assert not search.metric_direction('loss', None, None)
  assert search.metric_direction('xnorm', None, True)
  with pytest.raises(search.SearchError, match='--higher_is_better or --lower_is_better'):
    search.metric_direction('eval/val/xnorm', None, None)


def test_command_line_grid_errors_exit_2_with_one_line(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'arcface_jax.search',
      '--config',
      TINY,
      '--workdir',
      str(tmp_path / 'grid'),
      '--grid',
      'train.nope=1,2',
    ],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
    "error: --grid 'train.nope=1,2': config has no key 'train.nope' (every key is declared "
    "in configs/base.py)"
  ]


class _Crash(Exception):
  pass


def test_search_survives_a_crash_skips_finished_cells_and_shares_compilation(tmp_path):
  config = load_config(TINY)
  config.data.data_dir = str(tmp_path / 'data')
  # Three steps at a constant rate: the third update is the first where momentum matters.
  config.train.num_steps = 3
  config.train.schedule = 'step'
  config.eval.synthetic_pairs = 0
  workdir = str(tmp_path / 'grid')
  cells = search.parse_grid(['train.learning_rate=0.05,0.1', 'train.momentum=0.5,0.9'], config)
  mesh = parallel.make_mesh(2)
  calls, crash = [], [True]

  def crash_in_second_cell(cell_config, cell_dir, **kwargs):
    calls.append(os.path.basename(cell_dir))

    def stop(step):
      if crash[0] and len(calls) == 2 and step == 2:
        crash[0] = False
        raise _Crash('simulated crash in the middle of the second cell')

    return trainer.train_and_evaluate(cell_config, cell_dir, step_callback=stop, **kwargs)

  with pytest.raises(_Crash):
    search.run_search(
      config,
      workdir,
      cells,
      metric='loss',
      higher_is_better=False,
      train_fn=crash_in_second_cell,
      mesh=mesh,
    )
  assert calls == [cells[0].name, cells[1].name]
  assert os.path.exists(os.path.join(workdir, cells[0].name, search.DONE_MARKER))
  assert not os.path.exists(os.path.join(workdir, cells[1].name, search.DONE_MARKER))

  calls.clear()
  result = search.run_search(
    config,
    workdir,
    cells,
    metric='loss',
    higher_is_better=False,
    train_fn=crash_in_second_cell,
    mesh=mesh,
  )
  assert calls == [c.name for c in cells[1:]]  # the finished first cell is not run again
  records = result['cells']
  assert [r['status'] for r in records] == ['finished'] * 4
  assert result['metric'] == 'train/loss'
  losses = [r['metric'] for r in records]
  assert all(np.isfinite(losses))
  assert result['best']['metric'] == min(losses)
  # The cells differ only in runtime hyperparameters: after the first cell, the train step comes
  # from the compilation cache and is never compiled again.
  for record in records[1:]:
    assert not [n for n in record['compiled'] if 'train_step' in n], record['compiled']
    assert [n for n in record['loaded_from_cache'] if 'train_step' in n]
  with open(os.path.join(workdir, 'results.csv')) as f:
    rows = list(csv.reader(f))
  assert rows[0] == ['cell', 'train.learning_rate', 'train.momentum', 'train/loss', 'status']
  assert [row[0] for row in rows[1:]] == [c.name for c in cells]
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['best']['name'] == result['best']['name']
  assert os.path.getsize(os.path.join(workdir, 'train_loss.png')) > 1000
  events = os.listdir(os.path.join(workdir, 'tensorboard'))
  assert events  # hparams, one run per cell
  # The two momentum values really trained differently (the hyperparameter reached the step).
  by_name = {r['name']: r['metric'] for r in records}
  assert by_name[cells[0].name] != by_name[cells[1].name]
