"""Loading recipe files from `configs/` outside absl flags (tests, the demo, evaluation).

A recipe is a Python file with `get_config(arg=None)`; `path:arg` passes `arg`, as
ml_collections' config flags do. Recipes find `base.py` next to themselves with `load_base`, so a
recipe works from any working directory and without installing `configs/` as a package.
"""
from __future__ import annotations

import os
import runpy

import ml_collections


def load_base(recipe_file: str) -> ml_collections.ConfigDict:
  """The full default config from the `base.py` next to `recipe_file` (pass `__file__`)."""
  base = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(recipe_file)), 'base.py'))
  return base['get_config']()


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`configs/x.py` or `configs/x.py:arg` → the recipe's config, locked (no new keys)."""
  path, _, arg = spec.partition(':')
  if not os.path.exists(path):
    raise FileNotFoundError(f'config file {path} does not exist')
  module = runpy.run_path(path)
  config = module['get_config'](arg or None)
  config.lock()
  return config
