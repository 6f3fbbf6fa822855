"""Loading recipe files from `configs/` and applying `--config.KEY=VALUE` overrides.

A recipe is a Python file with `get_config(arg=None)`; `path:arg` passes `arg`, as
ml_collections' config flags do, and overrides are typed like the value they replace (the
ml_collections flag style, without absl flags: every command parses its arguments with argparse).
Recipes find `base.py` next to themselves with `load_base`, so a recipe works from any working
directory and without installing `configs/` as a package.
"""

from __future__ import annotations

import ast
import os
import runpy
from typing import Any, Sequence

import ml_collections


def load_base(recipe_file: str) -> ml_collections.ConfigDict:
  """The full default config from the `base.py` next to `recipe_file` (pass `__file__`)."""
  base = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(recipe_file)), 'base.py'))
  return base['get_config']()


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`configs/x.py` or `configs/x.py:arg` → the recipe's config, locked (no new keys)."""
  path, _, arg = spec.partition(':')
  # Local by nature: a recipe is Python code that runpy executes, so it is read from disk; the
  # data and workdir paths it names may be gs:// URIs.
  if not os.path.exists(path):
    raise FileNotFoundError(f'config file {path} does not exist')
  module = runpy.run_path(path)
  config = module['get_config'](arg or None)
  config.lock()
  return config


class RecipeOptionError(ValueError):
  """An option after `recipe.py:` the recipe does not have; the message names the valid ones.

  Entry points turn it into one line and exit 2 (ml_collections' flag parser shows only its
  message too, see arcface_jax.train)."""


def recipe_options(recipe_file: str, arg: str | None, allowed: set[str]) -> set[str]:
  """The comma-separated options of `recipe.py:a,b`; RecipeOptionError naming the recipe if
  unknown."""
  options = {option for option in (arg or '').split(',') if option}
  unknown = options - allowed
  if unknown:
    raise RecipeOptionError(
      f'configs/{os.path.basename(recipe_file)}: unknown option(s) '
      f'{sorted(unknown)}; valid: {", ".join(sorted(allowed))}'
    )
  return options


def recipe_row(recipe_file: str, name: str) -> dict[str, Any]:
  """Row `name` of the published recipes' table, `recipes.py` next to `recipe_file`."""
  table = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(recipe_file)), 'recipes.py'))[
    'RECIPES'
  ]
  return table[name]


def apply_recipe_row(config: ml_collections.ConfigDict, row: dict[str, Any]) -> None:
  """Sets what a row of configs/recipes.py states: data, backbone, loss, sample rate, schedule.

  `step` rows: batch, lr, boundaries and steps as written (the paper's recipes); `warmup_poly`
  rows: the reference trainer's schedule (`apply_reference_recipe`) over `epochs`.
  """
  if row['schedule'] == 'warmup_poly':
    apply_reference_recipe(
      config,
      num_images=row['images'],
      num_classes=row['identities'],
      batch_size=row['batch'],
      epochs=row['epochs'],
    )
  else:
    config.data.source = 'recordio'
    config.data.image_size = 112
    config.model.embedding_dim = 512
    config.train.batch_size = row['batch']
    config.train.learning_rate = row['lr']
    config.train.schedule = row['schedule']
    config.train.lr_boundaries = tuple(row['lr_boundaries'])
    config.train.num_steps = row['steps']
    config.eval.every_steps = 2_000
    config.eval.bins = ('lfw', 'cfp_fp', 'agedb_30')
    config.eval.bin_dir = config.data.get_ref('path')  # follows --config.data.path
  config.data.path = row['path']
  config.model.name = row['backbone']
  for key, value in row['loss'].items():
    setattr(config.loss, key, value)
  config.head.sample_rate = row['sample_rate']


def apply_reference_recipe(
  config: ml_collections.ConfigDict,
  *,
  num_images: int,
  num_classes: int,
  batch_size: int = 1024,
  epochs: int = 20,
) -> None:
  """The current reference trainer's large-scale schedule (REFERENCE §7), shared by the recipes.

  RecordIO data with the class count known up front, 112-px crops, 512-d embeddings, bf16 trunk,
  model-parallel centres, SGD momentum 0.9 and weight decay 5e-4, lr 0.1 per 1024 images scaled
  linearly with `batch_size`, polynomial decay to 0 over `epochs` epochs, backbone clip 5, and
  LFW/CFP-FP/AgeDB evaluation every 2,000 steps from the .bin files next to the data. The caller
  sets the dataset path, backbone, loss and sample rate.
  """
  config.data.source = 'recordio'
  config.data.num_classes = num_classes
  config.data.image_size = 112
  config.model.embedding_dim = 512
  config.model.dtype = 'bfloat16'
  config.loss.s = 64.0
  config.head.model_parallel = True
  config.train.batch_size = batch_size
  config.train.learning_rate = 0.1 * batch_size / 1024
  config.train.schedule = 'warmup_poly'
  config.train.warmup_steps = 0
  config.train.num_steps = epochs * (num_images // batch_size)
  config.train.weight_decay = 5e-4
  config.train.momentum = 0.9
  config.train.clip_grad_norm = 5.0
  config.train.checkpoint_every = 2_000
  config.eval.every_steps = 2_000
  config.eval.bins = ('lfw', 'cfp_fp', 'agedb_30')
  config.eval.bin_dir = config.data.get_ref('path')  # follows --config.data.path


def shrink_to_smoke_test(config: ml_collections.ConfigDict) -> None:
  """The `:tiny` variant of a recipe: the same code paths in a few seconds on a CPU.

  16-px images, IResNet-tiny with 32-d fp32 embeddings, batch 16, 3 steps logged each, no
  periodic checkpoints or evaluation, no .bin sets; the class count is read from the (small)
  dataset and a step schedule decays at step 2. The recipe's learning rate is kept.
  """
  config.data.num_classes = 0
  config.data.image_size = 16
  config.model.name = 'iresnet_tiny'
  config.model.embedding_dim = 32
  config.model.dtype = 'float32'
  config.train.batch_size = 16
  config.train.num_steps = 3
  config.train.lr_boundaries = (2,)
  config.train.log_every = 1
  config.train.checkpoint_every = 0
  config.eval.every_steps = 0
  config.eval.bins = ()


class ConfigOverrideError(ValueError):
  """A `--config.KEY=VALUE` the config cannot take: unknown key or a value of the wrong type.

  The message names the override and, for a known key, the type of its current value."""


def _typed_like(key: str, text: str, current: Any) -> Any:
  """`text` read as the type of the key's `current` value, as ml_collections' flags type it."""

  def fail(kind: str) -> ConfigOverrideError:
    return ConfigOverrideError(
      f'--config.{key}={text}: expected {kind} (the current value is {current!r})'
    )

  if isinstance(current, bool):
    if text.lower() in ('true', '1', 'yes'):
      return True
    if text.lower() in ('false', '0', 'no'):
      return False
    raise fail('true or false')
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      try:
        value = float(text)  # 1e5 is an int written as a float
      except ValueError:
        raise fail('an integer') from None
      if not value.is_integer():
        raise fail('an integer') from None
      return int(value)
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise fail('a number') from None
  if isinstance(current, str):
    return text
  if isinstance(current, (tuple, list)):
    if text.strip()[:1] in '([':
      try:
        value = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        raise fail('a tuple, e.g. (1, 2) or 1,2') from None
      return tuple(value) if isinstance(value, (tuple, list)) else (value,)
    items = [item.strip() for item in text.split(',') if item.strip()]
    if current:  # typed like the existing elements
      return tuple(_typed_like(key, item, current[0]) for item in items)
    return tuple(_literal_or_text(item) for item in items)
  if current is None:
    return _literal_or_text(text)
  raise fail(f'a {type(current).__name__}')


def _literal_or_text(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """Applies `KEY=VALUE` overrides (`train.learning_rate=0.05`) in order, each typed like the
  key's value in the config; ConfigOverrideError naming the first unknown key or bad value."""
  for override in overrides:
    key, sep, text = override.partition('=')
    if not sep:
      raise ConfigOverrideError(f'--config.{override}: expected --config.KEY=VALUE')
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise ConfigOverrideError(
        f'--config.{key}: the config has no key {key!r} (every key is '
        'declared in configs/base.py); check the spelling'
      )
    current = node[leaf]
    if isinstance(current, ml_collections.ConfigDict):
      raise ConfigOverrideError(
        f'--config.{key}: {key!r} is a group of keys; set one of '
        f'{", ".join(sorted(current.keys()))}'
      )
    node[leaf] = _typed_like(key, text, current)


def split_config_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """(other arguments, `KEY=VALUE` of every `--config.KEY=VALUE` or `--config.KEY VALUE`)."""
  rest, overrides = [], []
  args = list(argv)
  while args:
    arg = args.pop(0)
    if arg.startswith('--config.'):
      body = arg[len('--config.') :]
      if '=' not in body:
        if not args:
          raise ConfigOverrideError(f'{arg}: expected --config.KEY=VALUE')
        body = f'{body}={args.pop(0)}'
      overrides.append(body)
    else:
      rest.append(arg)
  return rest, overrides


def load_config_with_overrides(spec: str, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """`load_config(spec)` with the overrides applied; the config stays locked."""
  config = load_config(spec)
  apply_overrides(config, overrides)
  return config
