"""ModelInfo: the fingerprint follows the weights, and the sidecar file round-trips."""

import dataclasses

import numpy as np
import pytest

from arcface_jax import model_info


def test_fingerprint_changes_with_any_weight_and_ignores_container_order():
  variables = {'params': {'a': np.arange(4, dtype=np.float32), 'b': np.ones((2, 2), np.float32)}}
  reordered = {'params': {'b': variables['params']['b'], 'a': variables['params']['a']}}
  assert model_info.fingerprint(variables) == model_info.fingerprint(reordered)
  changed = {'params': {'a': variables['params']['a'].copy(), 'b': variables['params']['b']}}
  changed['params']['a'][3] = np.nextafter(np.float32(3), np.float32(4))
  assert model_info.fingerprint(changed) != model_info.fingerprint(variables)
  as_f64 = {'params': {k: v.astype(np.float64) for k, v in variables['params'].items()}}
  assert model_info.fingerprint(as_f64) != model_info.fingerprint(variables)


def test_sidecar_round_trip_and_clear_errors(tmp_path):
  info = model_info.ModelInfo(
    model_name='iresnet_tiny',
    embedding_dim=8,
    image_size=32,
    mean=127.5,
    std=127.5,
    fingerprint='0123456789abcdef',
    detect_faces=False,
  )
  path = model_info.sidecar_path(tmp_path / 'm.jax_export')
  assert path.name == 'm.jax_export.json'
  model_info.write(path, info)
  assert model_info.read(path) == info
  with pytest.raises(ValueError, match='no model info'):
    model_info.read(tmp_path / 'missing.json')
  (tmp_path / 'bad.json').write_text('{"model_name": "x"}')
  with pytest.raises(ValueError, match='lacks embedding_dim'):
    model_info.read(tmp_path / 'bad.json')
  assert dataclasses.asdict(info)['detect_faces'] is False
