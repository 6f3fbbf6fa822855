"""Config values that would run but learn nothing, or fail deep inside JAX: refused up front.

`check_config(config)` runs from `trainer.validate_config` before anything is built: the learning
rate, the loss (its name, scale and margins, with the ranges `margins.get` enforces), the embedding
size, the image size against the backbone's downsampling, and the data split fractions.
`check_dataset(config, source)` runs once the training source is open: at least two identities,
and `data.num_classes` large enough for the labels present. Every refusal is a `ConfigError` that
names the key, says the valid range and suggests a value.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from arcface_jax import losses, margins, models


class ConfigError(ValueError):
  """A configuration value the trainer cannot run with; the message names it and the fix."""


# margins.get's argument → the config.loss key that holds it.
_LOSS_KEYS = {
  'lambda_base': 'sphereface_lambda_base',
  'lambda_gamma': 'sphereface_lambda_gamma',
  'lambda_power': 'sphereface_lambda_power',
  'lambda_min': 'sphereface_lambda_min',
}
# A backbone's downsampling is read from a trace at this input side: a power of two larger than
# any backbone's total stride, so no feature map is rounded up on the way down.
_PROBE_SIZE = 256


def check_config(config: ml_collections.ConfigDict) -> None:
  """ConfigError for the first value in `config` that cannot train (see the module docstring)."""
  _check_learning_rate(config.train)
  _check_loss(config.loss)
  _check_model(config)
  _check_data(config.data)


def _check_learning_rate(train: ml_collections.ConfigDict) -> None:
  lr = train.learning_rate
  if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
    raise ConfigError(
      f'config.train.learning_rate={lr} must be a positive number (at 0 nothing '
      'moves, below 0 every step climbs the loss); the paper uses 0.1 for batch '
      '512: --config.train.learning_rate=0.1'
    )


def _check_loss(loss: ml_collections.ConfigDict) -> None:
  if loss.name not in losses.NAMES:
    raise ConfigError(
      f'config.loss.name={loss.name!r} is not a loss; valid names: '
      f'{", ".join(sorted(losses.NAMES))}'
    )
  if loss.s is not None and not (math.isfinite(loss.s) and loss.s > 0):
    raise ConfigError(
      f'config.loss.s={loss.s} must be positive: logits are s·cos θ, so s = 0 '
      'makes every class equally likely and s < 0 rewards the wrong class; the '
      'paper uses 64 (--config.loss.s=64)'
    )
  if loss.name not in losses.MARGIN_NAMES:
    return
  try:
    margins.from_config(loss)
  except margins.MarginRangeError as e:
    key = _LOSS_KEYS.get(e.parameter, e.parameter)
    hint = '; leave it unset for the paper default' if key in ('s', 'm', 'm1', 'm2', 'm3') else ''
    raise ConfigError(f'config.loss.{key}={loss.get(key)}: {e}{hint}') from None
  except ValueError as e:
    raise ConfigError(f'config.loss (name={loss.name!r}): {e}') from None


def _check_model(config: ml_collections.ConfigDict) -> None:
  dim = config.model.embedding_dim
  if not (isinstance(dim, int) and dim > 0):
    raise ConfigError(
      f'config.model.embedding_dim={dim} must be a positive integer (the '
      'paper: 512); e.g. --config.model.embedding_dim=512'
    )
  size = config.data.image_size
  if config.model.name not in models.names():
    return  # validate_config names the valid models
  smallest = min_image_size(config.model.name)
  if not (isinstance(size, int) and size >= smallest):
    raise ConfigError(
      f'config.data.image_size={size} is below what {config.model.name} supports: it '
      f'downsamples by {smallest}, so its last feature map needs at least {smallest}×{smallest} '
      f'pixels of input; use --config.data.image_size={max(smallest, 112)} (aligned face '
      f'crops) or at least {smallest}'
    )


def _check_data(data: ml_collections.ConfigDict) -> None:
  for key in ('val_fraction', 'test_fraction'):
    value = data[key]
    if not (isinstance(value, (int, float)) and 0 <= value < 1):
      raise ConfigError(
        f'config.data.{key}={value} must lie in [0, 1): the share of the data '
        f'held out (0 = none), e.g. --config.data.{key}=0.1'
      )
  if data.val_fraction + data.test_fraction >= 1:
    raise ConfigError(
      f'config.data.val_fraction={data.val_fraction} and test_fraction='
      f'{data.test_fraction} leave nothing to train on; their sum must be below 1'
    )
  if data.split_by not in ('identity', 'image'):
    raise ConfigError(
      f"config.data.split_by={data.split_by!r}: expected 'identity' (open set) "
      "or 'image' (closed set)"
    )
  cache = data.cache_mib
  if not (isinstance(cache, (int, float)) and math.isfinite(cache) and cache >= 0):
    raise ConfigError(
      f'config.data.cache_mib={cache} must be a number of MiB >= 0: the memory for decoded '
      'images when the whole dataset fits (0 = decode every time), e.g. '
      '--config.data.cache_mib=1024'
    )
  if not (isinstance(data.num_classes, int) and data.num_classes >= 0):
    raise ConfigError(
      f'config.data.num_classes={data.num_classes} must be 0 (read from the '
      'dataset) or the number of identities'
    )


def check_dataset(config: ml_collections.ConfigDict, source: Any) -> None:
  """Refuses a training source with fewer than two identities, or more labels than
  `config.data.num_classes` has class centres for."""
  labels = vars(source).get('labels') if hasattr(source, '__dict__') else None
  if isinstance(labels, np.ndarray) and labels.size:  # an index in memory: count what is there
    identities, needed = len(np.unique(labels)), int(labels.max()) + 1
  else:  # labels would be read from every record: trust the dataset's own class count
    identities = needed = int(source.num_classes)
  where = f'config.data.source={config.data.source!r}' + (
    f', config.data.path={config.data.path!r}' if config.data.path else ''
  )
  if identities < 2:
    raise ConfigError(
      f'the training data ({where}) holds {identities} identit{"y" if identities == 1 else "ies"}'
      '; a classifier needs at least 2 to learn anything (with 1 the softmax is always 1 and '
      'the loss always 0). Add identity folders, or lower config.data.val_fraction / '
      'test_fraction if split_by=identity held them out'
    )
  wanted = config.data.num_classes
  if wanted and wanted < needed:
    raise ConfigError(
      f'config.data.num_classes={wanted} is smaller than the labels in the training data '
      f'({where}: labels up to {needed - 1}, so {needed} classes); set '
      f'--config.data.num_classes=0 to read it from the dataset, or {needed}'
    )


@functools.lru_cache(maxsize=None)
def min_image_size(model_name: str) -> int:
  """The smallest input side `model_name` supports: its total downsampling (product of strides).

  Read from a trace, not a table, so a new backbone is covered: the forward pass of one
  `_PROBE_SIZE`² image is traced (shapes only, nothing runs) and the smallest square feature map
  larger than 1×1 gives the stride (a global depthwise conv's 1×1 output is the head, not a
  stage). Below this side the stride-2 stages see padding only and their outputs stop depending
  on the image's layout. IResNets and MobileFaceNets: 16; ResNet-50: 32; small_cnn and
  mini_network: 8.
  """
  model = models.get(model_name, embedding_dim=8)
  key = jax.random.PRNGKey(0)
  jaxpr = jax.make_jaxpr(
    lambda: model.init(
      {'params': key, 'dropout': key}, jnp.zeros((1, _PROBE_SIZE, _PROBE_SIZE, 3)), train=False
    )
  )()
  sides = _square_map_sides(jaxpr.jaxpr)
  return _PROBE_SIZE // min(sides) if sides else 1


def _square_map_sides(jaxpr: Any) -> list[int]:
  """Sides of every (1, H, H, C) value with H > 1 in `jaxpr` and its sub-jaxprs (batch of one:
  kernels, shaped (k, k, C_in, C_out), never start with 1 and k > 1 at once)."""
  from jax.extend.core import jaxprs_in_params

  sides = []
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      shape: tuple[int, ...] = getattr(var.aval, 'shape', ())
      if len(shape) == 4 and shape[0] == 1 and shape[1] == shape[2] > 1:
        sides.append(int(shape[1]))
    for sub in jaxprs_in_params(eqn.params):
      sides.extend(_square_map_sides(sub))
  return sides
