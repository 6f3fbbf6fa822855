"""Backbones: a name → constructor registry of Flax Linen modules, images → embeddings.

`get(name, embedding_dim=512, dropout=0.0, dtype='float32')`; every module is called as
`module.apply(variables, images, train=...)` on normalised (B, H, W, 3) images and returns
un-normalised float32 embeddings. `dtype` is the trunk's compute dtype (parameters stay float32).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from arcface_jax.models import iresnet

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    'iresnet18': iresnet.iresnet18,
    'iresnet34': iresnet.iresnet34,
    'iresnet50': iresnet.iresnet50,
    'iresnet100': iresnet.iresnet100,
    'iresnet200': iresnet.iresnet200,
    'iresnet_tiny': iresnet.iresnet_tiny,
}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def names() -> list[str]:
  return sorted(_REGISTRY)


def get(name: str, *, embedding_dim: int = 512, dropout: float = 0.0,
        dtype: Any = 'float32', **kwargs: Any) -> nn.Module:
  """The backbone `name`; ValueError naming it and the valid names if unknown."""
  if name not in _REGISTRY:
    raise ValueError(f'unknown model {name!r}; valid names: {names()}')
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise ValueError(f'unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}')
    dtype = DTYPES[dtype]
  return _REGISTRY[name](embedding_dim=embedding_dim, dropout=dropout, dtype=dtype, **kwargs)
