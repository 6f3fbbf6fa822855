"""Serialise a trained backbone for inference without this codebase: StableHLO via `jax.export`.

The exported function maps float32 images (B, S, S, 3), normalised as in training, to float32
embeddings (B, D) in eval mode (running batch-norm statistics, no dropout); the weights are
constants inside the artifact and the batch size is symbolic. Reading it back needs only JAX:

    import jax
    with open('backbone.jax_export', 'rb') as f:
      embed = jax.export.deserialize(bytearray(f.read())).call
    embeddings = embed(images)

Commands:
    python -m arcface_jax.export --workdir runs/ms1m --out backbone.jax_export
    python -m arcface_jax.export --imported DIR --out backbone.jax_export   # from import_onnx

ONNX export: not offered. The converters from JAX to ONNX either go through TensorFlow
(jax2tf + tf2onnx, a TensorFlow dependency this project avoids) or target Flax NNX (jax2onnx);
published ONNX models are read with `arcface_jax.models.import_onnx` instead.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from arcface_jax import model_info
from arcface_jax.model_info import ModelInfo

DEFAULT_PLATFORMS = ('cpu', 'cuda')


def export_embedder(model: nn.Module, variables: Any, image_size: int, *,
                    platforms: Sequence[str] = DEFAULT_PLATFORMS) -> jax.export.Exported:
  """The eval-mode embedding function of `model` with `variables` baked in, any batch size."""
  variables = jax.tree.map(jnp.asarray, variables)

  def embed(images: jax.Array) -> jax.Array:
    return model.apply(variables, images, train=False).astype(jnp.float32)

  batch, = jax.export.symbolic_shape('batch')
  spec = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
  return jax.export.export(jax.jit(embed), platforms=tuple(platforms))(spec)


def save(path: str, model: nn.Module, variables: Any, image_size: int, *,
         platforms: Sequence[str] = DEFAULT_PLATFORMS, info: ModelInfo | None = None) -> int:
  """Writes the serialised export to `path` (and `info` to `<path>.json`); returns its size."""
  data = export_embedder(model, variables, image_size, platforms=platforms).serialize()
  with open(path, 'wb') as f:
    f.write(data)
  if info is not None:
    model_info.write(model_info.sidecar_path(path), info)
  return len(data)


def load(path: str) -> Callable[[jax.Array], jax.Array]:
  """The embedding function saved by `save` (uses nothing from this package)."""
  with open(path, 'rb') as f:
    return jax.export.deserialize(bytearray(f.read())).call


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description='Export a backbone as serialised StableHLO.')
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--workdir', help='a training run (its latest checkpoint)')
  source.add_argument('--imported', help='a directory written by models.import_onnx')
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default latest)')
  parser.add_argument('--out', required=True)
  parser.add_argument('--platforms', default=','.join(DEFAULT_PLATFORMS))
  args = parser.parse_args(argv)
  if args.workdir:
    from arcface_jax import inference  # the training stack, only for this source
    embedder = inference.load_embedder(args.workdir, args.step)
    from arcface_jax.trainer import build_model
    model, variables, size = build_model(embedder.config), embedder.variables, embedder.image_size
    info = model_info.from_config(embedder.config, variables)
  else:
    from arcface_jax.models import import_onnx
    model, variables, meta = import_onnx.load(args.imported)
    size = meta['image_size']
    # insightface's recognition models take RGB normalised as (x - 127.5) / 127.5.
    info = ModelInfo(model_name=meta['arch'], embedding_dim=int(meta['embedding_dim']),
                     image_size=int(size), mean=127.5, std=127.5,
                     fingerprint=model_info.fingerprint(variables))
  n = save(args.out, model, variables, size, platforms=args.platforms.split(','), info=info)
  print(f'wrote {args.out} ({n / 2**20:.1f} MiB): float32 (B, {size}, {size}, 3) → embeddings')


if __name__ == '__main__':
  main()
