"""Backbones: a name → constructor registry of Flax Linen modules, images → embeddings.

`get(name, embedding_dim=512, dropout=0.0, dtype='float32')` (or `from_config(config)`, the backbone
of config.model); `init_variables` draws its initial weights, `make_embed_fn` is its inference-mode
embedding function. Every module is called as
`module.apply(variables, images, train=...)` on normalised (B, H, W, 3) float32 images (H = W, a
multiple of 16) and returns un-normalised float32 embeddings. `dtype` is the trunk's compute
dtype ('float32' or 'bfloat16'); parameters stay float32 and the embedding head computes in
float32. In training pass `mutable=['batch_stats']` and, with dropout, `rngs={'dropout': key}`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from arcface_jax import compiler_options
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


def get(
  name: str,
  *,
  embedding_dim: int = 512,
  dropout: float = 0.0,
  dtype: Any = 'float32',
  **kwargs: Any,
) -> nn.Module:
  """The backbone `name`; ValueError naming it and the valid names if unknown.

  Extra keyword arguments go to the module (e.g. `conv_fn` for the IResNets).
  """
  if name not in _REGISTRY:
    raise ValueError(f'unknown model {name!r}; valid names: {names()}')
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f'dropout={dropout} must lie in [0, 1)')
  return _REGISTRY[name](
    embedding_dim=embedding_dim, dropout=dropout, dtype=resolve_dtype(dtype), **kwargs
  )


def from_config(config: ml_collections.ConfigDict) -> nn.Module:
  """The backbone of `config.model` (name, embedding_dim, dropout, dtype)."""
  return get(
    config.model.name,
    embedding_dim=config.model.embedding_dim,
    dropout=config.model.dropout,
    dtype=config.model.dtype,
  )


def init_variables(model: nn.Module, key: jax.Array, image_size: int) -> dict[str, Any]:
  """Initial {'params', 'batch_stats'} of `model`, deterministic in `key` (the run's 'params' key
  of `seeding.keys`: the trainer and the demo both start from here)."""
  dummy = jnp.zeros((2, image_size, image_size, 3), jnp.float32)
  variables = model.init({'params': key, 'dropout': key}, dummy, train=False)
  return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}


def initial_variables(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The backbone of `config` as a run of that config starts: drawn from its seed's 'params' key,
  the same weights the trainer starts from (before config.model.init_from replaces them)."""
  from arcface_jax import seeding

  model, size = from_config(config), config.data.image_size
  # Jitted as the trainer's initialisation is: one compilation, not one per operation.
  return jax.jit(lambda key: init_variables(model, key, size))(seeding.keys(config)['params'])


def abstract_variables(model: nn.Module, image_size: int) -> dict[str, Any]:
  """Shapes and dtypes of `init_variables` (traced, nothing computed: the key is irrelevant)."""
  return jax.eval_shape(lambda: init_variables(model, jax.random.key(0), image_size))


def make_embed_fn(model: nn.Module) -> Callable[[dict[str, Any], jax.Array], jax.Array]:
  """Inference-mode embeddings (fp32) from {'params', 'batch_stats'} variables."""

  def embed(variables: dict[str, Any], images: jax.Array) -> jax.Array:
    # apply's result is whatever the module returns: here one array (no mutable collections)
    embedding = cast(jax.Array, model.apply(variables, images, train=False))
    return embedding.astype(jnp.float32)

  return embed


def jit_embed_fn(
  model: nn.Module, devices: Iterable[jax.Device] | None = None
) -> Callable[[Any, jax.typing.ArrayLike], jax.Array]:
  """`make_embed_fn` jitted with `compiler_options` for `devices` (default: the default backend):
  on CPU 1.3–1.8× faster than with XLA's defaults (IResNet-50, MobileFaceNet; batch 1 and 32)."""
  return jax.jit(make_embed_fn(model), compiler_options=compiler_options.for_devices(devices))
