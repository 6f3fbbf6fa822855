"""Transfer learning: frozen parameters, lr multipliers, runtime hyperparameters, init_from."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from arcface_jax import init_from, models, optim, parallel, seeding, trainer
from arcface_jax.config_files import load_config
from arcface_jax.train_state import create_train_state
from arcface_jax.train_step import make_train_step

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


def _steps(config, num_steps=2, seed=0):
  """A real train step of the trainer's model, optimizer and freezing, on random batches."""
  from arcface_jax import freezing, losses

  model = models.from_config(config)
  objective = losses.build_objective(
    config.loss, num_classes=10, embedding_dim=config.model.embedding_dim
  )
  tx = optim.make_optimizer(config.train)
  state0 = create_train_state(seeding.keys(0), model, objective, tx, config.data.image_size)
  step_model = freezing.for_training(model, config.train, state0.params, state0.batch_stats)
  step = jax.jit(
    make_train_step(
      step_model, objective, tx, optim.make_schedule(config.train), jax.random.PRNGKey(1)
    )
  )
  rng = np.random.default_rng(seed)
  state = state0
  size = config.data.image_size
  for _ in range(num_steps):
    batch = {
      'image': jnp.asarray(rng.normal(size=(16, size, size, 3)), jnp.float32),
      'label': jnp.asarray(rng.integers(0, 10, 16), jnp.int32),
    }
    state, _ = step(state, batch)
  return state0, state


def test_frozen_parameters_keep_no_state_and_stay_bit_identical(tiny_config):
  tiny_config.train.freeze = ('^backbone/IBasicBlock_[01]/', 'PReLU_0/slope$')
  before, after = _steps(tiny_config)
  frozen = optim.frozen_paths(tiny_config.train, before.params)
  assert any(p.startswith('backbone/IBasicBlock_0/') for p in frozen)
  assert 'backbone/PReLU_0/slope' in frozen and 'backbone/IBasicBlock_2/Conv_0/kernel' not in frozen
  old, new = _leaves_by_path(before.params), _leaves_by_path(after.params)
  for path in old:
    if path in frozen:
      assert old[path].tobytes() == new[path].tobytes(), path
    elif 'IBasicBlock_2' in path and path.endswith('kernel'):
      assert not np.array_equal(old[path], new[path]), path
  # No optimizer state for a frozen parameter: every array in the state that has a parameter's
  # shape belongs to a trained parameter (momentum traces), and their count equals theirs.
  shapes = {path: old[path].shape for path in old}
  trained = [p for p in old if p not in frozen]
  traces = [
    path
    for path, leaf in _leaves_by_path(after.opt_state.inner_state).items()
    if '/trace/' in f'/{path}/'
  ]
  assert len(traces) == len(trained)
  for path in traces:
    param = path.split('/trace/', 1)[1]
    assert (
      param in trained and shapes[param] == _leaves_by_path(after.opt_state.inner_state)[path].shape
    )


@pytest.mark.parametrize('freeze_stats', [False, True])
def test_freeze_batch_stats_keeps_frozen_layers_statistics(tiny_config, freeze_stats):
  tiny_config.train.freeze = ('^backbone/IBasicBlock_0/',)
  tiny_config.train.freeze_batch_stats = freeze_stats
  before, after = _steps(tiny_config)
  old, new = _leaves_by_path(before.batch_stats), _leaves_by_path(after.batch_stats)
  frozen_block = [p for p in old if p.startswith('IBasicBlock_0/')]
  assert frozen_block
  for path in frozen_block:
    assert (old[path].tobytes() == new[path].tobytes()) == freeze_stats, path
  assert not np.array_equal(
    old['IBasicBlock_1/BatchNorm_0/mean'], new['IBasicBlock_1/BatchNorm_0/mean']
  )


def test_lr_multiplier_scales_the_update(tiny_config):
  train = tiny_config.train
  train.update(momentum=0.0, weight_decay=0.0, clip_grad_norm=0.0, schedule='step')
  params = {'backbone': {'a': jnp.ones(3), 'b': jnp.ones(2)}, 'head': {'weight': jnp.ones(4)}}
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
  train.lr_multipliers = ('^head/=10', 'backbone/b=0.25')
  tx = optim.make_optimizer(train)
  updates, _ = tx.update(grads, tx.init(params), params)
  lr = train.learning_rate
  np.testing.assert_allclose(updates['backbone']['a'], -lr * 0.5, rtol=1e-6)
  np.testing.assert_allclose(updates['backbone']['b'], -lr * 0.25 * 0.5, rtol=1e-6)
  np.testing.assert_allclose(updates['head']['weight'], -lr * 10 * 0.5, rtol=1e-6)


@pytest.mark.parametrize(
  'key,value,message',
  [
    ('freeze', ('^backbone/NoSuchLayer',), "'\\^backbone/NoSuchLayer' matches no parameter"),
    ('freeze', ('([',), 'not a valid regular expression'),
    ('lr_multipliers', ('^head/',), 'is not REGEX=FACTOR'),
    ('lr_multipliers', ('^nothing/=2',), "'\\^nothing/' matches no parameter not frozen"),
  ],
)
def test_bad_patterns_are_one_config_error(tiny_config, tmp_path, key, value, message):
  tiny_config.train[key] = value
  with pytest.raises(trainer.ConfigError, match=f'config.train.{key}: .*{message}'):
    trainer.train_and_evaluate(tiny_config, str(tmp_path / 'run'), mesh=parallel.make_mesh(1))


def test_hyperparameters_are_runtime_values_not_constants(tiny_config):
  """Runs differing in learning rate, momentum or weight decay compile the same program."""
  from arcface_jax import losses

  model = models.from_config(tiny_config)
  objective = losses.build_objective(
    tiny_config.loss, num_classes=10, embedding_dim=tiny_config.model.embedding_dim
  )
  size = tiny_config.data.image_size
  batch = {
    'image': jax.ShapeDtypeStruct((16, size, size, 3), jnp.float32),
    'label': jax.ShapeDtypeStruct((16,), jnp.int32),
  }

  def lowered(lr, momentum, wd):
    train = ml_collections.ConfigDict(tiny_config.train.to_dict())
    train.update(learning_rate=lr, momentum=momentum, weight_decay=wd)
    tx = optim.make_optimizer(train)
    state = jax.eval_shape(
      lambda r: create_train_state(r, model, objective, tx, size), seeding.keys(0)
    )
    step = make_train_step(model, objective, tx, optim.make_schedule(train), jax.random.PRNGKey(1))
    return jax.jit(step).lower(state, batch).as_text(debug_info=False)

  assert lowered(0.1, 0.9, 5e-4) == lowered(0.003, 0.5, 0.0)


def test_runtime_hyperparameters_match_torch_sgd(tiny_config):
  train = tiny_config.train
  train.update(
    learning_rate=0.05,
    momentum=0.8,
    weight_decay=0.01,
    clip_grad_norm=0.0,
    schedule='step',
    lr_boundaries=(2,),
    lr_decay_factor=0.1,
  )
  tx = optim.make_optimizer(train)
  p = np.array([1.0, -2.0])
  params = {'backbone': {'w': jnp.asarray(p, jnp.float32)}, 'head': {}}
  state = tx.init(params)
  buf = np.zeros(2)
  for step, g in enumerate([np.array([0.3, 0.1]), np.array([-0.2, 0.4]), np.array([0.5, 0.5])]):
    assert np.isclose(float(optim.applied_learning_rate(state)), 0.05 * (0.1 if step >= 2 else 1))
    updates, state = tx.update(
      {'backbone': {'w': jnp.asarray(g, jnp.float32)}, 'head': {}}, state, params
    )
    params = optax.apply_updates(params, updates)
    # torch.optim.SGD in float64: d = g + wd p; buf = m buf + d; p -= lr buf.
    lr = 0.05 * (0.1 if step >= 2 else 1.0)
    buf = 0.8 * buf + (g + 0.01 * p)
    p = p - lr * buf
    np.testing.assert_allclose(params['backbone']['w'], p, rtol=1e-6)
  changed = ml_collections.ConfigDict(train.to_dict())
  changed.learning_rate = 0.5
  moved = optim.set_hyperparams(state, changed)
  assert np.isclose(float(moved.hyperparams['learning_rate']), 0.5)
  assert np.isclose(float(optim.applied_learning_rate(moved)), 0.05)  # 0.5 × 0.1 after step 2


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
