"""One seed per run: `config.seed` is the root key, split once into one key per purpose.

Every random thing a run does draws from `keys(config)[purpose]`, so two runs with the same seed
start from bit-identical weights and read the same batches, and one purpose's draws never shift
another's (adding dropout does not change the initial weights):
  params   the backbone's initial weights
  head     the class centres' initial values
  sampling the model-parallel head's Partial FC class sampling, folded with the step
  dropout  dropout masks and the objective's per-step draws (ElasticFace), folded with the step
  data     the input pipeline's shuffling and augmentation (numpy, as `integer_seed`)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PURPOSES = ('params', 'head', 'sampling', 'dropout', 'data')


def root_key(seed: int) -> jax.Array:
  """The run's one root key."""
  return jax.random.key(int(seed))


def keys(config_or_seed: Any) -> dict[str, jax.Array]:
  """{purpose: key} for every purpose of `PURPOSES`, from `config.seed` (or a seed itself)."""
  seed = config_or_seed if isinstance(config_or_seed, int) else config_or_seed.seed
  return dict(zip(PURPOSES, jax.random.split(root_key(seed), len(PURPOSES))))


def integer_seed(key: jax.Array) -> int:
  """A non-negative int drawn from `key`, for the parts seeded by integers (numpy generators)."""
  return int(jax.random.bits(key, dtype=jnp.uint32))
