"""configs/recipes.py is the one table of the published recipes: the recipe files train what it
says and the README's table is generated from it."""

import os

import pytest

from arcface_jax import recipes_table
from arcface_jax.config_files import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE = recipes_table.load_table(os.path.join(REPO, 'configs', 'recipes.py'))


def test_readme_table_is_the_generated_one():
  with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
    readme = f.read()
  expected = recipes_table.replace_table(readme, recipes_table.render(TABLE))
  assert readme == expected, (
    'README.md recipes table is stale: run python -m arcface_jax.recipes_table --write README.md'
  )
  for name in TABLE:
    assert f'`configs/{name}.py`' in readme


@pytest.mark.parametrize('name', sorted(TABLE))
def test_recipe_file_trains_its_row(name):
  row = TABLE[name]
  config = load_config(os.path.join(REPO, 'configs', f'{name}.py'))
  assert (config.data.path, config.model.name) == (row['path'], row['backbone'])
  assert config.head.sample_rate == row['sample_rate']
  if name != 'casia':  # casia's loss is its argument; the row's is the default argument's
    assert {key: config.loss[key] for key in row['loss']} == row['loss']
  assert config.loss.s == row['loss']['s']
  assert config.train.schedule == row['schedule'] and config.train.batch_size == row['batch']
  if row['schedule'] == 'step':
    assert config.train.learning_rate == row['lr']
    assert (tuple(config.train.lr_boundaries), config.train.num_steps) == (
      tuple(row['lr_boundaries']),
      row['steps'],
    )
  else:  # the reference trainer: lr 0.1 per 1024 images, epochs over the dataset
    assert config.train.learning_rate == pytest.approx(row['lr'] * row['batch'] / 1024)
    assert config.train.num_steps == row['epochs'] * (row['images'] // row['batch'])
    assert config.data.num_classes == row['identities']


def test_stale_or_unmarked_readme_is_reported(tmp_path):
  readme = tmp_path / 'README.md'
  readme.write_text(f'intro\n{recipes_table.BEGIN}\n| old |\n{recipes_table.END}\nrest\n')
  table = os.path.join(REPO, 'configs', 'recipes.py')
  assert recipes_table.main(['--table', table, '--check', str(readme)]) == 1
  assert recipes_table.main(['--table', table, '--write', str(readme)]) == 0
  assert recipes_table.main(['--table', table, '--check', str(readme)]) == 0
  assert readme.read_text().startswith('intro\n') and readme.read_text().endswith('\nrest\n')
  (tmp_path / 'plain.md').write_text('no markers\n')
  assert recipes_table.main(['--table', table, '--check', str(tmp_path / 'plain.md')]) == 2
