"""Loading a training run's results: the public API for everything that reads a workdir.

`load_embedder(workdir)` is a trained backbone as an embedding function; `checkpoint_steps`,
`restore_variables` and `read_class_centres` read single checkpoints (the figures compare many
on one compiled function); the run's config is `reporting.read_config(workdir)`. Only the
checkpoint's `model` item (backbone params and batch statistics) is read for embeddings, so
evaluating a run trained with millions of class centres does not load them. Nothing here imports
the training loop.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from arcface_jax import models, parallel, paths, reporting
from arcface_jax.checkpoint_reading import (
  MODEL_ITEM,
  TRAIN_ITEM,
  checkpoint_dir,
  restore_model_variables,
)


@dataclasses.dataclass
class Embedder:
  # float32 normalised (B, S, S, 3), a numpy or JAX array -> (B, D) float32
  apply: Callable[[jax.typing.ArrayLike], jax.Array]
  image_size: int
  mean: float
  std: float
  config: ml_collections.ConfigDict
  step: int
  mesh: jax.sharding.Mesh
  variables: Any


def abstract_model_variables(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Any:
  """The backbone of `config` and the shapes, dtypes and (replicated) shardings of its variables."""
  model = models.from_config(config)
  abstract = models.abstract_variables(model, config.data.image_size)
  sharding = parallel.replicated(mesh)
  return model, jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract
  )


def restore_variables(
  workdir: paths.PathLike, abstract: Any, step: int | None = None
) -> tuple[Any, int]:
  """The backbone variables of `workdir`'s latest intact (or given) checkpoint, and its step;
  `abstract` from `abstract_model_variables`."""
  return restore_model_variables(workdir, abstract, step)


def embedder_from_variables(
  config: ml_collections.ConfigDict,
  embed: Callable[[Any, jax.typing.ArrayLike], jax.Array],
  variables: Any,
  step: int,
  mesh: jax.sharding.Mesh,
) -> Embedder:
  """An Embedder over live variables (the trainer's periodic evaluation): `embed(variables,
  images)` is the (jitted) backbone, as `load_embedder` builds it from a checkpoint."""
  return Embedder(
    apply=lambda images: embed(variables, images),
    image_size=config.data.image_size,
    mean=config.data.mean,
    std=config.data.std,
    config=config,
    step=int(step),
    mesh=mesh,
    variables=variables,
  )


def load_embedder(
  workdir: paths.PathLike, step: int | None = None, mesh: jax.sharding.Mesh | None = None
) -> Embedder:
  """The backbone of `workdir`'s latest (or given) checkpoint, ready to embed images."""
  config = reporting.read_config(workdir)
  mesh = parallel.make_mesh() if mesh is None else mesh
  model, abstract = abstract_model_variables(config, mesh)
  variables, step = restore_variables(workdir, abstract, step)
  return embedder_from_variables(
    config, models.jit_embed_fn(model, mesh.devices.flat), variables, step, mesh
  )


def checkpoint_steps(workdir: paths.PathLike) -> list[int]:
  """Steps of `workdir` with a finished checkpoint, ascending (empty before the first)."""
  manager = ocp.CheckpointManager(checkpoint_dir(workdir), item_names=(MODEL_ITEM, TRAIN_ITEM))
  try:
    return sorted(int(s) for s in manager.all_steps())
  finally:
    manager.close()


def read_class_centres(
  workdir: paths.PathLike, step: int, num_classes: int | None = None
) -> np.ndarray | None:
  """The head's class centres (C, D) or (C, K, D) at `step` as host float32, or None when the
  loss has none (loss.name='triplet').

  Restores the checkpoint's training item without a target (host arrays, whatever shardings the
  run used); model-parallel runs pad the rows to a device multiple, so `num_classes` trims them.
  """
  manager = ocp.CheckpointManager(checkpoint_dir(workdir), item_names=(MODEL_ITEM, TRAIN_ITEM))
  try:
    if step not in manager.all_steps():
      raise FileNotFoundError(
        f'no checkpoint for step {step} in {checkpoint_dir(workdir)}; '
        f'available steps: {sorted(manager.all_steps())}'
      )
    restored = manager.restore(
      step, args=ocp.args.Composite(**{TRAIN_ITEM: ocp.args.StandardRestore()})
    )
  finally:
    manager.close()
  head = restored[TRAIN_ITEM].get('head', {})
  if 'weight' not in head:
    return None
  weight = np.asarray(jax.device_get(head['weight']), np.float32)
  return weight[:num_classes] if num_classes else weight
