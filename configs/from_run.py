"""A finished run's own config (its workdir's config.json) as a recipe, to continue from it.

  python -m arcface_jax.train --config configs/from_run.py:runs/subcenter --workdir runs/k1 \
      --config.head.subcenters=1 ...

Every key of configs/base.py exists (a run saved before a key was added gets its default), so
the usual --config.* overrides apply; the values are the run's.
"""

import json
import os

import ml_collections

from arcface_jax.config_files import RecipeOptionError, load_base


def _merge(into: ml_collections.ConfigDict, values: dict) -> None:
  for key, value in values.items():
    current = into.get(key)
    if isinstance(value, dict) and isinstance(current, ml_collections.ConfigDict):
      _merge(current, value)
    elif isinstance(value, list) and isinstance(current, tuple):
      into[key] = tuple(value)  # JSON has no tuples
    else:
      into[key] = value


def get_config(arg: str | None = None):
  if not arg:
    raise RecipeOptionError('configs/from_run.py needs the run: configs/from_run.py:<workdir>')
  path = os.path.join(arg, 'config.json')
  if not os.path.exists(path):
    raise RecipeOptionError(f'configs/from_run.py:{arg}: no {path} (not a training run)')
  config = load_base(__file__)
  with open(path) as f:
    _merge(config, json.load(f))
  return config
