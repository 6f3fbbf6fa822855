"""Configs that would run but learn nothing, or fail deep inside JAX, are refused with one clear
error naming the key, its valid range and a fix: through the command line (exit 2, no traceback)
and through `trainer.validate_config` / `config_checks.check_dataset`."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arcface_jax import config_checks, margins, models, trainer
from arcface_jax.config_files import RecipeOptionError, load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'configs', 'synthetic.py:tiny')


def _run_train(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, '-m', 'arcface_jax.train', '--workdir', '/tmp/unused', *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )


def _one_clear_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1, result.stderr[-2000:]
  for fragment in fragments:
    assert fragment in errors[0]


@pytest.mark.parametrize(
  'spec,fragments',
  [
    ('configs/synthetic.py:huge', ("configs/synthetic.py: unknown variant 'huge'", ':tiny')),
    ('configs/ms1m.py:huge', ("configs/ms1m.py: unknown option(s) ['huge']", 'poly, tiny')),
  ],
)
def test_unknown_recipe_option_is_one_line_naming_the_valid_ones(spec, fragments):
  _one_clear_error(_run_train('--config', spec), *fragments)


def test_cli_refuses_arcface_margin_4():
  # m = 4 rad: the fallback cos θ − m·sin m adds 3.03 to the target logit, loss 0, nothing learnt.
  _one_clear_error(
    _run_train('--config', TINY, '--config.loss.m=4'), 'config.loss.m=4.0', '[0, π/2)'
  )


@pytest.mark.parametrize(
  'recipe',
  sorted(
    name
    for name in os.listdir(os.path.join(REPO, 'configs'))
    if name.endswith('.py') and name not in ('base.py', '__init__.py', 'recipes.py', 'from_run.py')
  ),
)
def test_every_recipe_names_an_unknown_option(recipe):
  with pytest.raises(RecipeOptionError, match=f'configs/{recipe}: unknown .*huge'):
    load_config(os.path.join(REPO, 'configs', f'{recipe}:huge'))


@pytest.fixture
def config():
  return load_config(TINY)  # iresnet_tiny at 16 px, arcface s=32 m=0.5


@pytest.mark.parametrize(
  'key,value,fragments',
  [
    (
      'train.learning_rate',
      0.0,
      ('config.train.learning_rate=0.0', 'positive', '--config.train.learning_rate=0.1'),
    ),
    ('train.learning_rate', -0.1, ('config.train.learning_rate=-0.1', 'positive')),
    ('loss.s', 0.0, ('config.loss.s=0.0', 'positive')),
    ('loss.s', -64.0, ('config.loss.s=-64.0', 'positive')),
    ('loss.m', -0.2, ('config.loss.m=-0.2', '[0, π/2)', 'bonus')),
    ('loss.m', 1.6, ('config.loss.m=1.6', '[0, π/2)')),
    ('loss.name', 'arcfase', ("config.loss.name='arcfase'", 'arcface, combined, cosface')),
    ('data.val_fraction', 1.0, ('config.data.val_fraction=1.0', '[0, 1)')),
    ('data.val_fraction', -0.1, ('config.data.val_fraction=-0.1', '[0, 1)')),
    ('data.test_fraction', 1.5, ('config.data.test_fraction=1.5', '[0, 1)')),
    ('data.cache_mib', -1, ('config.data.cache_mib=-1', '>= 0', '--config.data.cache_mib=1024')),
    ('model.embedding_dim', 0, ('config.model.embedding_dim=0', 'positive')),
    ('model.embedding_dim', -8, ('config.model.embedding_dim=-8', 'positive')),
    ('data.image_size', 8, ('config.data.image_size=8', 'iresnet_tiny', 'downsamples by 16')),
  ],
)
def test_validate_config_refuses(config, key, value, fragments):
  section, name = key.split('.')
  config[section][name] = value
  with pytest.raises(trainer.ConfigError) as error:
    trainer.validate_config(config, num_devices=1)
  for fragment in fragments:
    assert fragment in str(error.value)


def test_fractions_summing_to_one_are_refused(config):
  config.data.val_fraction, config.data.test_fraction = 0.5, 0.5
  with pytest.raises(trainer.ConfigError, match='nothing to train on'):
    trainer.validate_config(config, num_devices=1)


@pytest.mark.parametrize(
  'loss,fragments',
  [
    (dict(name='cosface', m=1.2), ('config.loss.m=1.2', 'cosface', '[0, 1)')),
    (dict(name='cosface', m=-0.35), ('config.loss.m=-0.35', 'bonus')),
    (dict(name='combined', m1=0.0), ('config.loss.m1=0.0', 'positive')),
    (dict(name='combined', m1=0.8, m2=0.0, m3=0.0), ('config.loss.m1=0.8', 'rewards large angles')),
    (dict(name='combined', m1=1.0, m2=1.0, m3=0.6), ('config.loss.m3=0.6', 'cos(m2) − m3')),
    (dict(name='sphereface', m=2.5), ('config.loss.m=2.5', 'integer', 'm1=1.35')),
    (
      dict(name='sphereface', sphereface_lambda_min=-1.0),
      ('config.loss.sphereface_lambda_min=-1.0', '>= 0'),
    ),
    (dict(name='norm_softmax', m3=-0.1), ('config.loss.m3=-0.1', 'bonus')),
  ],
)
def test_each_margin_out_of_range_names_its_config_key(config, loss, fragments):
  config.loss.m = None  # the recipe's arcface m
  for key, value in loss.items():
    config.loss[key] = value
  with pytest.raises(trainer.ConfigError) as error:
    trainer.validate_config(config, num_devices=1)
  for fragment in fragments:
    assert fragment in str(error.value)


@pytest.mark.parametrize(
  'name,params',
  [
    ('norm_softmax', {}),
    ('cosface', {'m': 0.35}),
    ('cosface', {'m': 0.0}),
    ('arcface', {}),
    ('arcface', {'m': 0.0}),
    ('arcface', {'m': 1.5, 'easy_margin': True}),
    ('combined', {}),
    ('combined', {'m1': 0.9, 'm2': 0.4, 'm3': 0.15}),  # CM2
    ('combined', {'m1': 1.35, 'm2': 0.0, 'm3': 0.0}),  # SphereFace 1.35
    ('sphereface', {}),
    ('sphereface', {'m': 1}),
  ],
)
def test_published_margins_stay_valid(name, params):
  margins.get(name, **params)


def test_margin_errors_name_the_argument_and_its_range():
  with pytest.raises(margins.MarginRangeError) as error:
    margins.get('arcface', m=4.0)
  assert error.value.parameter == 'm' and '[0, π/2)' in str(error.value)
  with pytest.raises(margins.MarginRangeError) as error:
    margins.get('combined', m2=-0.1)
  assert error.value.parameter == 'm2'
  with pytest.raises(margins.MarginRangeError) as error:
    margins.get('cosface', s=0.0)
  assert error.value.parameter == 's'
  assert isinstance(error.value, ValueError)


def test_the_bonus_check_matches_the_curve():
  # Independent of the check's own grid: a rejected m1 < 1 curve really exceeds cos θ somewhere,
  # and CM2, accepted, never does.
  theta = np.linspace(0, math.pi, 4001)
  for m1, m2, m3, accepted in (
    (0.8, 0.0, 0.0, False),
    (0.9, 0.1, 0.0, False),
    (0.9, 0.4, 0.15, True),
  ):
    curve = np.asarray(margins.CombinedMargin(m1=m1, m2=m2, m3=m3).target_logit(theta))
    assert (np.max(curve - np.cos(theta)) <= 1e-6) == accepted
    if accepted:
      margins.get('combined', m1=m1, m2=m2, m3=m3)
    else:
      with pytest.raises(margins.MarginRangeError):
        margins.get('combined', m1=m1, m2=m2, m3=m3)


@pytest.mark.parametrize(
  'name,expected', [('small_cnn', 8), ('mini_network', 8), ('iresnet_tiny', 16)]
)
def test_min_image_size_is_the_backbones_downsampling(name, expected):
  assert config_checks.min_image_size(name) == expected
  model = models.get(name, embedding_dim=4)
  key = jax.random.PRNGKey(0)
  # At the minimum the last stage still halves a map of side 2 into 1; half of it, it sees padding.
  out = jax.eval_shape(
    lambda: model.init({'params': key}, jnp.zeros((1, expected, expected, 3)), train=False)
  )
  assert out is not None


def _folder(root, identities: int, images: int = 2) -> str:
  import cv2

  rng = np.random.default_rng(0)
  for identity in range(identities):
    folder = root / f'id{identity}'
    folder.mkdir(parents=True)
    for k in range(images):
      cv2.imwrite(str(folder / f'{k}.png'), rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
  return str(root)


def test_a_dataset_with_one_identity_is_refused(config, tmp_path):
  from arcface_jax.data.folder import FolderDataset

  config.data.source, config.data.path = 'folder', _folder(tmp_path / 'one', 1)
  with pytest.raises(config_checks.ConfigError, match='holds 1 identity; .*at least 2'):
    config_checks.check_dataset(config, FolderDataset(config.data.path))


def test_num_classes_smaller_than_the_labels_is_refused(config, tmp_path):
  from arcface_jax.data.folder import FolderDataset

  config.data.source, config.data.path = 'folder', _folder(tmp_path / 'five', 5)
  source = FolderDataset(config.data.path)
  config.data.num_classes = 3
  with pytest.raises(
    config_checks.ConfigError, match=r'num_classes=3 is smaller .* labels up to 4.*num_classes=0'
  ):
    config_checks.check_dataset(config, source)
  config.data.num_classes = 5
  config_checks.check_dataset(config, source)
  config.data.num_classes = 0
  config_checks.check_dataset(config, source)


def test_training_a_one_identity_folder_stops_before_compiling(config, tmp_path):
  config.data.source, config.data.path = 'folder', _folder(tmp_path / 'one', 1)
  with pytest.raises(trainer.ConfigError, match='at least 2'):
    trainer.train_and_evaluate(
      config, str(tmp_path / 'run'), mesh=jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',))
    )
