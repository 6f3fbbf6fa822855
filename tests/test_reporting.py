"""The run's config.json: written resolved, and a changed config on resume is named key by key."""

import json
import os

from arcface_jax import reporting
from arcface_jax.config_files import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(REPO, 'configs', 'toy.py')


def test_config_round_trips_and_a_changed_resume_is_named(tmp_path, caplog):
  config = load_config(TOY + ':arcface')
  path = reporting.write_config(str(tmp_path), config)
  assert reporting.read_config(str(tmp_path)).head.init_std == config.head.init_std
  reporting.write_config(str(tmp_path), config)  # same config: nothing to say
  assert 'differs' not in caplog.text
  changed = load_config(TOY + ':cosface')
  changed.unlock()
  changed.head.init_std = 0.01
  reporting.write_config(str(tmp_path), changed)
  assert 'differs from the one saved there' in caplog.text
  assert f"head.init_std: {2**-0.5!r} → 0.01" in caplog.text
  assert "loss.name: 'arcface' → 'cosface'" in caplog.text
  with open(path) as f:  # the file now holds the new config
    assert json.load(f)['loss']['name'] == 'cosface'


def test_config_changes_lists_added_and_removed_keys():
  changes = reporting.config_changes({'a': {'x': 1, 'y': 2}}, {'a': {'x': 1, 'z': 3}})
  assert changes == ["a.y: 2 → '(absent)'", "a.z: '(absent)' → 3"]
