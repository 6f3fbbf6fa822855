"""`--model M`: a training workdir or an exported model, as one face-crop → embedding function.

- a training workdir (holds `config.json` and checkpoints): its latest checkpoint's backbone,
  restored with `arcface_jax.inference.load_embedder`, and its `ModelInfo` from the run's config;
- an exported `.jax_export` file (`python -m arcface_jax.export`): the StableHLO function and
  the `ModelInfo` written beside it (`<file>.json`).

Embedding follows the evaluation protocol: each crop is embedded with its horizontal mirror, the
two are summed and the sum is L2-normalised (float32). Batches are padded to fixed sizes
(`BUCKETS`), so a program compiles once per bucket, never once per number of faces; a line is
logged before each first compile, which takes seconds on a CPU.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import numpy as np
from etils import epath

from arcface_jax import compiler_options, model_info
from arcface_jax.data.decode import resize
from arcface_jax.faces import compilation
from arcface_jax.model_info import ModelInfo

BUCKETS = (1, 2, 8, 32)  # batch sizes compiled (2: verify's pair); larger inputs: chunks of 32
EXPORT_SUFFIX = '.jax_export'


class ModelError(ValueError):
  """`--model` names nothing loadable; the message says what was found and what to pass."""


@dataclasses.dataclass
class LoadedModel:
  """An embedder with its input contract."""

  info: ModelInfo
  path: str
  kind: str  # 'workdir' or 'export'
  step: int | None  # the checkpoint step (workdir), None for an export
  config: Any  # the run's ml_collections config (workdir), None for an export
  apply: Callable[[jax.typing.ArrayLike], Any]  # float32 normalised (B, S, S, 3) -> (B, D)

  def describe(self) -> str:
    where = f'{self.path} (step {self.step})' if self.step is not None else self.path
    return f'{where}: {self.info.model_name}, fingerprint {self.info.fingerprint}'

  def prepare(self, crops: np.ndarray) -> np.ndarray:
    """Crops (N, h, w, 3) uint8 → (N, S, S, 3) uint8 at the model's side (resized if needed)."""
    size = self.info.image_size
    if crops.shape[1:3] == (size, size):
      return crops
    return (
      np.stack([resize(c, (size, size)) for c in crops])
      if len(crops)
      else np.zeros((0, size, size, 3), np.uint8)
    )

  def embed_crops(self, crops: np.ndarray) -> np.ndarray:
    """L2-normalised float32 (N, D) embeddings of uint8 RGB crops (N, h, w, 3)."""
    crops = self.prepare(np.asarray(crops, np.uint8))
    out = np.zeros((len(crops), self.info.embedding_dim), np.float32)
    largest = BUCKETS[-1]
    for start in range(0, len(crops), largest):
      chunk = crops[start : start + largest]
      bucket = next(b for b in BUCKETS if b >= len(chunk))
      padded = np.zeros((bucket,) + chunk.shape[1:], np.uint8)
      padded[: len(chunk)] = chunk
      x = (padded.astype(np.float32) - self.info.mean) / self.info.std
      both = np.concatenate([x, x[:, :, ::-1]])  # the crops and their mirror images
      if compilation.first_seen([('embedder', self.info.fingerprint, bucket)]):
        compilation.log_compile(
          f'compiling the embedder for batches of {bucket} (first use of '
          'this size; seconds on a CPU)'
        )
      raw = np.asarray(self.apply(both), np.float32)
      summed = raw[:bucket] + raw[bucket:]
      out[start : start + len(chunk)] = summed[: len(chunk)]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def _load_workdir(path: str, step: int | None) -> LoadedModel:
  from arcface_jax import inference, parallel  # the training stack: only for this kind

  try:
    # One device: a photo at a time gains nothing from spreading a batch over devices.
    embedder = inference.load_embedder(path, step, mesh=parallel.make_mesh(1))
  except FileNotFoundError as e:
    raise ModelError(f'--model {path}: {e}') from None
  return from_embedder(embedder, path)


def from_embedder(embedder: Any, path: str) -> LoadedModel:
  """A workdir model from an `inference.Embedder` already restored from `path`."""
  return LoadedModel(
    info=model_info.from_config(embedder.config, embedder.variables),
    path=path,
    kind='workdir',
    step=embedder.step,
    config=embedder.config,
    apply=embedder.apply,
  )


def _load_export(path: str) -> LoadedModel:
  try:
    info = model_info.read(model_info.sidecar_path(path))
  except ValueError as e:
    raise ModelError(f'--model {path}: {e}') from None
  try:
    # What `arcface_jax.export.load` does; not imported, as the export command imports this
    # module (to keep the run's calibration beside the file it writes).
    call = jax.export.deserialize(bytearray(epath.Path(path).read_bytes())).call
  except Exception as e:  # jax.export raises several types for a damaged or foreign file
    raise ModelError(
      f'--model {path}: not a readable exported model ({type(e).__name__}: {e})'
    ) from None
  return LoadedModel(
    info=info,
    path=path,
    kind='export',
    step=None,
    config=None,
    apply=jax.jit(call, compiler_options=compiler_options.for_devices()),
  )


def load_model(path: str | os.PathLike, step: int | None = None) -> LoadedModel:
  """The embedder at `path`: a training workdir (latest or `step`) or an exported model file."""
  path = os.fspath(path)
  where = epath.Path(path)  # a local path or a gs:// one
  if where.is_dir():
    if not (where / 'config.json').exists():
      raise ModelError(
        f'--model {path}: a folder without config.json, so not a training '
        'workdir; pass a --workdir of `python -m arcface_jax.train` or an '
        f'exported {EXPORT_SUFFIX} file'
      )
    return _load_workdir(path, step)
  if where.is_file():
    return _load_export(path)
  raise ModelError(
    f'--model {path}: no such file or folder; pass a training workdir or an '
    f'exported {EXPORT_SUFFIX} file (python -m arcface_jax.export)'
  )
