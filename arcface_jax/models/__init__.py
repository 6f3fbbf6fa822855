"""Backbones: a name → constructor registry of Flax Linen modules, images → embeddings.

`get(name, embedding_dim=512, dropout=0.0, dtype='float32')`; every module is called as
`module.apply(variables, images, train=...)` on normalised (B, H, W, 3) float32 images (H = W, a
multiple of 16) and returns un-normalised float32 embeddings. `dtype` is the trunk's compute
dtype ('float32' or 'bfloat16'); parameters stay float32 and the embedding head computes in
float32. In training pass `mutable=['batch_stats']` and, with dropout, `rngs={'dropout': key}`.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from arcface_jax.models import iresnet, mobilefacenet, resnet, small

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    'iresnet18': iresnet.iresnet18,
    'iresnet34': iresnet.iresnet34,
    'iresnet50': iresnet.iresnet50,
    'iresnet100': iresnet.iresnet100,
    'iresnet200': iresnet.iresnet200,
    'iresnet_tiny': iresnet.iresnet_tiny,
    'mobilefacenet': mobilefacenet.mobilefacenet,
    'mobilefacenet_x2': mobilefacenet.mobilefacenet_x2,
    'resnet50': resnet.resnet50,
    'small_cnn': small.small_cnn,
    'mini_network': small.mini_network,
}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def names() -> list[str]:
  """Every registered backbone name, sorted."""
  return sorted(_REGISTRY)


def resolve_dtype(dtype: Any) -> Any:
  """'float32' / 'bfloat16' (or the jnp dtype itself) → the jnp dtype; ValueError otherwise."""
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise ValueError(f'unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}')
    return DTYPES[dtype]
  if jnp.dtype(dtype) not in {jnp.dtype(d) for d in DTYPES.values()}:
    raise ValueError(f'unsupported dtype {dtype!r}; expected one of {sorted(DTYPES)}')
  return dtype


def get(name: str, *, embedding_dim: int = 512, dropout: float = 0.0,
        dtype: Any = 'float32', **kwargs: Any) -> nn.Module:
  """The backbone `name`; ValueError naming it and the valid names if unknown.

  Extra keyword arguments go to the module (e.g. `conv_fn` for the IResNets).
  """
  if name not in _REGISTRY:
    raise ValueError(f'unknown model {name!r}; valid names: {names()}')
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f'dropout={dropout} must lie in [0, 1)')
  return _REGISTRY[name](embedding_dim=embedding_dim, dropout=dropout,
                         dtype=resolve_dtype(dtype), **kwargs)
