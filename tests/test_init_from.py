"""Starting from another model (config.model.init_from): a workdir trained here, ONNX files,
URLs with checksums, an imported directory, and the fine-tuning recipe built on them."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arcface_jax import init_from, models, optim, parallel, trainer
from arcface_jax.config_files import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'configs', 'synthetic.py:tiny')


@pytest.fixture
def tiny_config(tmp_path_factory):
  config = load_config(TINY)
  config.data.data_dir = str(tmp_path_factory.getbasetemp() / 'data')
  return config


def _leaves_by_path(tree):
  return {
    optim.path_string(p): np.asarray(x)
    for p, x in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
  }


# ------------------------------------------------------------------ init_from


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  """A tiny run trained here: the 'pretrained model' of the init_from tests."""
  config = load_config(TINY)
  base = tmp_path_factory.mktemp('pretrained')
  config.data.data_dir = str(tmp_path_factory.getbasetemp() / 'data')
  workdir = str(base / 'run')
  state = trainer.train_and_evaluate(config, workdir, mesh=parallel.make_mesh(2))
  return workdir, jax.device_get(
    {'params': state.params['backbone'], 'batch_stats': state.batch_stats}
  )


def test_init_from_workdir_with_frozen_backbone_keeps_it_bit_identical(
  tiny_config, pretrained, tmp_path, caplog
):
  source, variables = pretrained
  tiny_config.model.init_from = source
  tiny_config.data.num_classes = 37  # a different head: it starts fresh
  tiny_config.train.freeze = ('^backbone/',)
  tiny_config.train.freeze_batch_stats = True
  workdir = str(tmp_path / 'finetune')
  state = trainer.train_and_evaluate(tiny_config, workdir, mesh=parallel.make_mesh(2))
  assert state.params['head']['weight'].shape[0] == 37
  got = _leaves_by_path({'params': state.params['backbone'], 'batch_stats': state.batch_stats})
  want = _leaves_by_path(variables)
  assert got.keys() == want.keys()
  for path in want:
    assert got[path].tobytes() == want[path].tobytes(), path
  # A second start resumes from the run's own checkpoint and says init_from is ignored.
  tiny_config.train.num_steps += 2
  with caplog.at_level(logging.INFO):
    trainer.train_and_evaluate(tiny_config, workdir, mesh=parallel.make_mesh(2))
  assert any('init_from' in r.getMessage() and 'ignored' in r.getMessage() for r in caplog.records)


def test_init_from_architecture_mismatch_names_the_first_parameter(
  tiny_config, pretrained, tmp_path
):
  tiny_config.model.init_from = pretrained[0]
  tiny_config.model.embedding_dim = 48
  with pytest.raises(
    trainer.ConfigError,
    match=r'backbone/\S+: this model expects shape \((\d+, )?48,?\), the '
    r'source has \((\d+, )?32,?\)',
  ):
    trainer.train_and_evaluate(tiny_config, str(tmp_path / 'run'), mesh=parallel.make_mesh(1))


def test_init_from_missing_and_stablehlo_sources_are_clear_errors(tiny_config, tmp_path):
  tiny_config.model.init_from = str(tmp_path / 'nowhere')
  with pytest.raises(init_from.InitFromError, match='does not exist'):
    init_from.resolve(tiny_config.model.init_from)
  exported = tmp_path / 'model.jax_export'
  exported.write_bytes(b'\0')
  with pytest.raises(init_from.InitFromError, match='baked into a compiled program'):
    init_from.resolve(str(exported))


# ------------------------------------------------------------------ ONNX files and URLs


@pytest.fixture(scope='module')
def onnx_file(tmp_path_factory):
  pytest.importorskip('torch')
  pytest.importorskip('onnx')
  import test_model_import as reference  # the PyTorch twins of our backbones

  path = str(tmp_path_factory.mktemp('onnx') / 'iresnet_tiny.onnx')
  reference._export(reference._randomise(reference.TorchIResNet()), path, folded=False)
  return path


def _onnx_config():
  config = load_config(TINY)
  config.model.name = 'iresnet_tiny'
  config.model.embedding_dim = 24
  config.data.image_size = 32
  return config


def _abstract(config):
  model = models.from_config(config)
  size = config.data.image_size
  variables = jax.eval_shape(
    lambda: model.init(
      {'params': jax.random.PRNGKey(0)}, jnp.zeros((1, size, size, 3)), train=False
    )
  )
  return {k: variables[k] for k in ('params', 'batch_stats')}


def _expected_onnx_variables(path):
  import onnx

  from arcface_jax.models import import_onnx

  return import_onnx.convert(onnx.load(path), 'iresnet_tiny', image_size=32)[1]


def test_init_from_onnx_url_downloads_once_with_checksum(onnx_file, tmp_path, monkeypatch):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
  config = _onnx_config()
  with open(onnx_file, 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  local = tmp_path / 'served.onnx'
  local.write_bytes(open(onnx_file, 'rb').read())
  config.model.init_from = f'{local.as_uri()}#sha256={digest}'
  loaded = init_from.load_backbone(config, _abstract(config))
  want = _leaves_by_path(_expected_onnx_variables(onnx_file))
  got = _leaves_by_path(loaded)
  assert got.keys() == want.keys()
  for path in want:
    np.testing.assert_array_equal(got[path], want[path])
  cached = os.listdir(tmp_path / 'cache' / 'arcface_jax')
  assert cached == [f'{digest[:16]}-served.onnx']
  local.unlink()  # the second start reads the cache, not the URL
  init_from.load_backbone(config, _abstract(config))
  # The checksum can also come from the config key.
  config.model.init_from, config.model.init_from_sha256 = local.as_uri(), digest
  init_from.load_backbone(config, _abstract(config))


def test_init_from_url_checksum_mismatch_keeps_nothing(onnx_file, tmp_path, monkeypatch):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
  url = f'file://{onnx_file}'
  with pytest.raises(init_from.InitFromError, match=r'has sha256 [0-9a-f]{64}, expected 0{64}'):
    init_from.fetch(f'{url}#sha256={"0" * 64}')
  assert os.listdir(tmp_path / 'cache' / 'arcface_jax') == []
  with pytest.raises(init_from.InitFromError, match='needs its sha256 checksum'):
    init_from.fetch(url)


def test_init_from_onnx_file_and_import_directory(onnx_file, tmp_path):
  from arcface_jax.models import import_onnx

  config = _onnx_config()
  want = _leaves_by_path(_expected_onnx_variables(onnx_file))
  config.model.init_from = onnx_file
  got = _leaves_by_path(init_from.load_backbone(config, _abstract(config)))
  assert all(np.array_equal(got[p], want[p]) for p in want)
  import_onnx.main([onnx_file, '--arch', 'iresnet_tiny', '--out', str(tmp_path / 'imported')])
  config.model.init_from = str(tmp_path / 'imported')
  got = _leaves_by_path(init_from.load_backbone(config, _abstract(config)))
  assert all(np.array_equal(got[p], want[p]) for p in want)
  config.model.name = 'mobilefacenet'  # the wrong architecture for this file
  config.model.init_from = onnx_file
  with pytest.raises(init_from.InitFromError, match='is not a mobilefacenet'):
    init_from.load_backbone(config, _abstract(config))


# ------------------------------------------------------------------ the fine-tuning recipe

FINETUNE = os.path.join(REPO, 'configs', 'finetune.py')


def _folder_tree(root, identities, images, size=16):
  import cv2

  rng = np.random.default_rng(0)
  for i in range(identities):
    folder = root / f'person{i:02d}'
    folder.mkdir(parents=True)
    for k in range(images):
      cv2.imwrite(str(folder / f'{k:03d}.png'), rng.integers(0, 255, (size, size, 3), np.uint8))
  return str(root)


def test_finetune_split_is_stratified_90_10_then_88_12(tmp_path):
  from arcface_jax.data.folder import FolderDataset

  config = load_config(FINETUNE)
  root = _folder_tree(tmp_path / 'faces', identities=10, images=50, size=4)
  splits = {
    s: FolderDataset(
      root,
      s,
      split_by=config.data.split_by,
      val_fraction=config.data.val_fraction,
      test_fraction=config.data.test_fraction,
      seed=config.data.split_seed,
    )
    for s in ('train', 'val', 'test')
  }
  for split in splits.values():
    assert split.num_classes == 10  # closed set: every person in every split's label space
  test_per_person = np.bincount(splits['test'].labels, minlength=10)
  assert (test_per_person == 5).all()  # 10% of each person's 50 photos
  val_per_person = np.bincount(splits['val'].labels, minlength=10)
  # 12% of the remaining 45 = 5.4 per person: 5 or 6 each, 54 expected in all.
  assert set(val_per_person) <= {5, 6} and 50 <= val_per_person.sum() <= 60
  assert len(splits['train']) + val_per_person.sum() + 50 == 500
  paths = [set(s.paths) for s in splits.values()]
  assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])


def test_finetune_recipe_starts_from_a_model_trained_here(pretrained, tmp_path):
  source, variables = pretrained
  config = load_config(FINETUNE + ':tiny')
  config.data.path = _folder_tree(tmp_path / 'faces', identities=6, images=8)
  config.model.init_from = source
  config.train.num_steps = 2
  assert config.data.flip and config.data.rotation_degrees == 10.0
  state = trainer.train_and_evaluate(config, str(tmp_path / 'run'), mesh=parallel.make_mesh(2))
  assert state.params['head']['weight'].shape[0] == 6
  tuned = _leaves_by_path(state.params['backbone'])
  start = _leaves_by_path(variables['params'])
  fresh = _leaves_by_path(jax.device_get(_abstract_init(config)))
  kernel = 'IBasicBlock_0/Conv_0/kernel'
  assert np.linalg.norm(tuned[kernel] - start[kernel]) < 0.1 * np.linalg.norm(
    fresh[kernel] - start[kernel]
  )
  with open(tmp_path / 'run' / 'best.json') as f:
    assert 0.0 <= json.load(f)['val']['accuracy'] <= 1.0


def _abstract_init(config):
  model = models.from_config(config)
  size = config.data.image_size
  return model.init({'params': jax.random.PRNGKey(0)}, jnp.zeros((1, size, size, 3)), train=False)[
    'params'
  ]
