"""A trained backbone as an embedding function, restored from a training run's workdir.

Only the checkpoint's `model` item (backbone params and batch statistics) is read, so evaluating a
run trained with millions of class centres does not load them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from arcface_jax import parallel, reporting
from arcface_jax.checkpointing import restore_model_variables
from arcface_jax.train_step import make_embed_fn


@dataclasses.dataclass
class Embedder:
  apply: Callable[[jax.Array], jax.Array]  # float32 normalised (B, S, S, 3) -> (B, D) float32
  image_size: int
  mean: float
  std: float
  config: ml_collections.ConfigDict
  step: int
  mesh: jax.sharding.Mesh
  variables: Any


def abstract_model_variables(config: ml_collections.ConfigDict,
                             mesh: jax.sharding.Mesh) -> Any:
  """Shapes, dtypes and (replicated) shardings of the backbone variables of `config`."""
  from arcface_jax.trainer import build_model  # the trainer imports this module's neighbours
  model = build_model(config)
  size = config.data.image_size
  key = jax.random.PRNGKey(0)
  abstract = jax.eval_shape(
      lambda: model.init({'params': key, 'dropout': key}, jnp.zeros((2, size, size, 3)),
                         train=False))
  sharding = parallel.replicated(mesh)
  return model, jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), dict(abstract))


def embedder_from_variables(config: ml_collections.ConfigDict,
                            embed: Callable[[Any, jax.Array], jax.Array], variables: Any,
                            step: int, mesh: jax.sharding.Mesh) -> Embedder:
  """An Embedder over live variables (the trainer's periodic evaluation): `embed(variables,
  images)` is the (jitted) backbone, as `load_embedder` builds it from a checkpoint."""
  return Embedder(apply=lambda images: embed(variables, images),
                  image_size=config.data.image_size, mean=config.data.mean, std=config.data.std,
                  config=config, step=int(step), mesh=mesh, variables=variables)


def load_embedder(workdir: str, step: int | None = None,
                  mesh: jax.sharding.Mesh | None = None) -> Embedder:
  """The backbone of `workdir`'s latest (or given) checkpoint, ready to embed images."""
  config = reporting.read_config(workdir)
  mesh = parallel.make_mesh() if mesh is None else mesh
  model, abstract = abstract_model_variables(config, mesh)
  variables, step = restore_model_variables(workdir, abstract, step)
  return embedder_from_variables(config, jax.jit(make_embed_fn(model)), variables, step, mesh)
