"""Every recipe in configs/ loads, declares no key base.py lacks, and trains a few steps tiny."""

from __future__ import annotations

import glob
import json
import os

import jax
import numpy as np
import pytest

from arcface_jax import parallel, trainer
from arcface_jax.config_files import load_base, load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(
  p
  for p in glob.glob(os.path.join(REPO, 'configs', '*.py'))
  # recipes.py is the recipes' table, from_run.py a finished run's config (test_subcenter_clean)
  if os.path.basename(p) not in ('base.py', '__init__.py', 'recipes.py', 'from_run.py')
)


def _flat_keys(config, prefix=''):
  keys = set()
  for key, value in config.items():
    if hasattr(value, 'items'):
      keys |= _flat_keys(value, f'{prefix}{key}.')
    else:
      keys.add(prefix + key)
  return keys


@pytest.mark.parametrize('recipe', RECIPES, ids=os.path.basename)
def test_recipe_has_exactly_the_base_keys_and_a_command(recipe):
  config = load_config(recipe)
  assert _flat_keys(config) == _flat_keys(load_base(recipe))
  module_doc = open(recipe).read().split('"""')[1]
  assert 'python -m arcface_jax.train' in module_doc or 'python -m analysis' in module_doc


def test_locked_config_rejects_new_keys():
  config = load_config(os.path.join(REPO, 'configs', 'synthetic.py'))
  with pytest.raises(AttributeError):
    config.train.bacth_size = 3


def _tiny_folder(tmp_path) -> str:
  """8 identity folders of 4 random 16×16 PNGs each, plus what real trees hold: a truncated JPEG
  (read, fails to decode, skipped and counted), a text file and an empty folder (passed over)."""
  import cv2

  root = tmp_path / 'faces'
  rng = np.random.default_rng(0)
  for identity in range(8):
    folder = root / f'id{identity}'
    folder.mkdir(parents=True)
    for k in range(4):
      cv2.imwrite(str(folder / f'{k}.png'), rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
  (root / 'id0' / 'truncated.jpg').write_bytes(b'\xff\xd8\xff\xe0' + bytes(40))
  (root / 'id1' / 'notes.txt').write_text('not an image')
  (root / 'zz_empty').mkdir()
  return str(root)


def _tiny_recordio(tmp_path) -> str:
  """The tiny folder tree packed as RecordIO, for recipes that read train.rec."""
  from arcface_jax.data import pack

  out = tmp_path / 'rec'
  pack.pack_folder(_tiny_folder(tmp_path), str(out))
  return str(out)


@pytest.mark.parametrize('recipe', RECIPES, ids=os.path.basename)
def test_recipe_trains_a_few_steps_in_its_tiny_variant(recipe, tmp_path):
  config = load_config(recipe + ':tiny')
  config.data.data_dir = str(tmp_path / 'data')
  if config.data.source == 'recordio':
    config.data.path = _tiny_recordio(tmp_path)
  if config.data.source == 'folder':
    config.data.path = _tiny_folder(tmp_path)
  config.eval.synthetic_pairs = 0
  config.eval.bins = ()
  config.train.num_steps = 2
  mesh = parallel.make_mesh(2)
  state = trainer.train_and_evaluate(config, str(tmp_path / 'run'), mesh=mesh)
  assert int(state.step) == 2
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
  if config.eval.val_pairs:  # the held-out split was turned into pairs and scored at the end
    with open(tmp_path / 'run' / 'best.json') as f:
      assert 0.0 <= json.load(f)['val']['accuracy'] <= 1.0


def test_identity_balanced_triplet_row_trains_from_recordio(tmp_path):
  config = load_config(os.path.join(REPO, 'configs', 'casia.py') + ':triplet,tiny')
  assert config.data.images_per_identity == 4
  config.data.path = _tiny_recordio(tmp_path)
  config.data.data_dir = str(tmp_path / 'data')
  config.train.num_steps = 2
  state = trainer.train_and_evaluate(config, str(tmp_path / 'run'), mesh=parallel.make_mesh(2))
  assert int(state.step) == 2
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
