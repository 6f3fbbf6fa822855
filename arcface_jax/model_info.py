"""What a user of a trained embedder must know about it, stored beside every exported model.

A backbone alone does not say how to feed it: the input side, the normalisation, whether photos
go through face detection and alignment first. `ModelInfo` carries these, plus a fingerprint of the weights so a
gallery of embeddings made with one model is refused by another (embeddings of two models live
in unrelated spaces, and comparing them gives confident nonsense).

The fingerprint hashes every variable's path, dtype, shape and bytes, so it is the same for a
training checkpoint and every export made from it, and changes with any weight.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

FORMAT_VERSION = 1
# Training sources whose images are not photos of faces (see `ModelInfo.detect_faces`).
NOT_FACES_SOURCES = ('synthetic', 'digits')


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """Input contract and identity of an embedding model."""

  model_name: str  # a name of `arcface_jax.models`, or 'onnx:<file>' for an imported model
  embedding_dim: int
  image_size: int  # square side in pixels
  mean: float  # inputs are normalised as (x - mean) / std, x in 0..255 RGB
  std: float
  fingerprint: str  # `fingerprint(variables)` of the backbone
  # Whether photos should go through the face detector and alignment before this model. False
  # for models trained on the embedded synthetic identities or digits, which are not faces: their
  # inputs are given as crops like the training images.
  detect_faces: bool = True


def fingerprint(variables: Any) -> str:
  """A short hex digest of every array in `variables` (path, dtype, shape and values)."""
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
    array = np.asarray(leaf)
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(f'{array.dtype.str}{array.shape}'.encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()[:16]


def from_config(config: ml_collections.ConfigDict, variables: Any) -> ModelInfo:
  """The info of the backbone `variables` trained with `config`."""
  return ModelInfo(
    model_name=config.model.name,
    embedding_dim=int(config.model.embedding_dim),
    image_size=int(config.data.image_size),
    mean=float(config.data.mean),
    std=float(config.data.std),
    fingerprint=fingerprint(variables),
    detect_faces=config.data.source not in NOT_FACES_SOURCES,
  )


def sidecar_path(model_path: str | epath.PathLike) -> epath.Path:
  """Where the info of an exported model file lives: `<file>.json` beside it."""
  path = epath.Path(model_path)
  return path.parent / (path.name + '.json')


def write(path: str | epath.PathLike, info: ModelInfo) -> None:
  record = {'format_version': FORMAT_VERSION, **dataclasses.asdict(info)}
  epath.Path(path).write_text(json.dumps(record, indent=2) + '\n')


def read(path: str | epath.PathLike) -> ModelInfo:
  """Reads `write`'s JSON; a missing or malformed file is a ValueError naming it."""
  path = epath.Path(path)
  try:
    record = json.loads(path.read_text())
  except FileNotFoundError:
    raise ValueError(
      f'{path}: no model info file; export the model with '
      '`python -m arcface_jax.export`, which writes it'
    ) from None
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: not valid JSON ({e})') from None
  fields = {f.name for f in dataclasses.fields(ModelInfo)}
  missing = sorted(f for f in fields if f not in record and f != 'detect_faces')
  if missing:
    raise ValueError(f'{path}: model info lacks {", ".join(missing)}')
  return ModelInfo(**{k: v for k, v in record.items() if k in fields})
