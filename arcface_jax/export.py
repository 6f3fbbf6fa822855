"""Serialise a trained backbone for inference without this codebase: StableHLO or ONNX.

StableHLO (`--format stablehlo`, the default; `jax.export`): the exported function maps float32
images (B, S, S, 3), normalised as in training, to float32 embeddings (B, D) in eval mode
(running batch-norm statistics, no dropout); the weights are constants inside the artifact and
the batch size is symbolic. Reading it back needs only JAX:

    import jax
    with open('backbone.jax_export', 'rb') as f:
      embed = jax.export.deserialize(bytearray(f.read())).call
    embeddings = embed(images)

ONNX (`--format onnx`, `arcface_jax.onnx_export`): one self-contained file in insightface's
recognition-model interface: float32 RGB pixels (B, 3, S, S) with values 0–255, normalised
inside the graph, to (B, D); for onnxruntime, insightface's `model_zoo.get_model` (which needs
S ≥ 112 and a multiple of 16; the command warns otherwise) or any ONNX runtime.

Both write the model's `ModelInfo` beside the file (`<out>.json`). A StableHLO export of a run
with held-out people (a synthetic run, or a folder run split by identity) also keeps them,
embedded, beside it (`<out>.calibration.npz`; `--no-calibration` skips it): the faces commands
set their "unknown" and "same person" thresholds on them, as they do for the workdir.

Commands:
    python -m arcface_jax.export --workdir runs/ms1m --out backbone.jax_export
    python -m arcface_jax.export --workdir runs/ms1m --format onnx --out model.onnx
    python -m arcface_jax.export --imported DIR --out backbone.jax_export   # from import_onnx
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Sequence, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
from etils import epath

from arcface_jax import model_info
from arcface_jax.model_info import ModelInfo

DEFAULT_PLATFORMS = ('cpu', 'cuda')
FORMATS = ('stablehlo', 'onnx')


def export_embedder(
  model: nn.Module, variables: Any, image_size: int, *, platforms: Sequence[str] = DEFAULT_PLATFORMS
) -> jax.export.Exported:
  """The eval-mode embedding function of `model` with `variables` baked in, any batch size."""
  variables = jax.tree.map(jnp.asarray, variables)

  def embed(images: jax.Array) -> jax.Array:
    # Without `mutable` Module.apply returns the output alone (its type also allows the pair).
    embeddings = cast(jax.Array, model.apply(variables, images, train=False))
    return embeddings.astype(jnp.float32)

  (batch,) = jax.export.symbolic_shape('batch')
  spec = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
  return jax.export.export(jax.jit(embed), platforms=tuple(platforms))(spec)


def save(
  path: str | os.PathLike,
  model: nn.Module,
  variables: Any,
  image_size: int,
  *,
  platforms: Sequence[str] = DEFAULT_PLATFORMS,
  info: ModelInfo | None = None,
) -> int:
  """Writes the serialised export to `path` (and `info` to `<path>.json`); returns its size."""
  data = export_embedder(model, variables, image_size, platforms=platforms).serialize()
  epath.Path(path).write_bytes(bytes(data))
  if info is not None:
    model_info.write(model_info.sidecar_path(path), info)
  return len(data)


def load(path: str | os.PathLike) -> Callable[[jax.Array], jax.Array]:
  """The embedding function saved by `save` (uses nothing from this package)."""
  return jax.export.deserialize(bytearray(epath.Path(path).read_bytes())).call


def _usage_error(message: str) -> None:
  print(f'arcface_jax.export: error: {message}', file=sys.stderr)
  raise SystemExit(2)


def _check_arguments(args: argparse.Namespace) -> None:
  """Bad input is one line and exit status 2, before anything slow starts."""
  if args.format not in FORMATS:
    _usage_error(f'unknown --format {args.format!r}; choose one of {", ".join(FORMATS)}')
  if args.workdir and not epath.Path(args.workdir).is_dir():
    _usage_error(f'--workdir {args.workdir}: no such directory (a training run\'s workdir)')
  if args.imported and not os.path.isfile(os.path.join(args.imported, 'model.json')):
    _usage_error(
      f'--imported {args.imported}: no model.json there; write the directory with '
      '`python -m arcface_jax.models.import_onnx`'
    )
  if args.format == 'onnx':
    try:
      import onnx  # noqa: F401
    except ImportError:
      _usage_error("--format onnx needs the onnx package: pip install 'arcface_jax[export]'")


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--workdir', help='a training run (its latest checkpoint)')
  source.add_argument('--imported', help='a directory written by models.import_onnx')
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default latest)')
  parser.add_argument(
    '--format',
    default='stablehlo',
    help='stablehlo (default: jax.export) or onnx (insightface\'s interface)',
  )
  parser.add_argument('--out', required=True)
  parser.add_argument(
    '--platforms',
    default=','.join(DEFAULT_PLATFORMS),
    help='StableHLO only: the platforms to lower for',
  )
  parser.add_argument(
    '--no-calibration',
    action='store_true',
    help="StableHLO from --workdir: do not keep the run's held-out people beside the export",
  )
  args = parser.parse_args(argv)
  _check_arguments(args)
  if args.workdir:
    from arcface_jax import inference, models, parallel  # JAX and orbax, only for this source

    # One device: the calibration faces are a few batches, and an embedder over every device
    # would compute each of them on all of them (the variables and images are replicated).
    embedder = inference.load_embedder(args.workdir, args.step, mesh=parallel.make_mesh(1))
    model = models.from_config(embedder.config)
    variables, size = embedder.variables, embedder.image_size
    info = model_info.from_config(embedder.config, variables)
  else:
    from arcface_jax.models import import_onnx

    model, variables, meta = import_onnx.load(args.imported)
    size = meta['image_size']
    # insightface's recognition models take RGB normalised as (x - 127.5) / 127.5.
    info = ModelInfo(
      model_name=meta['arch'],
      embedding_dim=int(meta['embedding_dim']),
      image_size=int(size),
      mean=127.5,
      std=127.5,
      fingerprint=model_info.fingerprint(variables),
    )
  if args.format == 'onnx':
    _export_onnx(args.out, model, variables, int(size), info)
    return
  n = save(args.out, model, variables, size, platforms=args.platforms.split(','), info=info)
  print(f'wrote {args.out} ({n / 2**20:.1f} MiB): float32 (B, {size}, {size}, 3) → embeddings')
  if args.workdir and not args.no_calibration:
    keep_calibration(args.out, embedder, args.workdir)


def keep_calibration(out: str, embedder: Any, workdir: str) -> None:
  """Embeds the run's held-out people (or the calibration kept in the workdir) and stores them
  beside the export, so the faces commands calibrate its thresholds without a guessed number."""
  from arcface_jax.faces import model as faces_model
  from arcface_jax.faces import thresholds

  model = faces_model.from_embedder(embedder, workdir)
  try:
    calibration = thresholds.heldout_calibration(model)
  except (OSError, ValueError) as e:  # the run's data moved or is unreadable here
    print(
      f'no calibration kept: the held-out people of {workdir} could not be read ({e}); '
      f'keep one later with: python -m arcface_jax.faces calibrate --model {out} --photos DIR'
    )
    return
  if calibration is None:
    print(
      f'no calibration kept: {workdir} has no held-out people; keep one with: '
      f'python -m arcface_jax.faces calibrate --model {out} --photos DIR'
    )
    return
  path = out + thresholds.KEPT_SUFFIX
  thresholds.write_calibration(path, calibration, model.info.fingerprint)
  print(
    f'kept {len(calibration)} calibration faces of {len(set(calibration.identities))} people '
    f'({calibration.source}) in {path}'
  )


def _export_onnx(path: str, model: nn.Module, variables: Any, size: int, info: ModelInfo) -> None:
  from arcface_jax import onnx_export

  print(f'tracing {info.model_name} and writing ONNX (opset {onnx_export.OPSET})...', flush=True)
  n = onnx_export.save(path, model, variables, size, mean=info.mean, std=info.std, info=info)
  print(
    f'wrote {path} ({n / 2**20:.1f} MiB): float32 RGB pixels 0-255 (B, 3, {size}, {size}) '
    f'→ (B, {info.embedding_dim}) embeddings; normalised inside as (x - {info.mean}) / '
    f'{info.std}; info in {model_info.sidecar_path(path)}'
  )
  try:
    import onnxruntime  # noqa: F401  (the `export` extra)
  except ImportError:
    print('onnxruntime is not installed: the file was not run here')
  else:
    diff = onnx_export.max_difference(path, model, variables, size, mean=info.mean, std=info.std)
    print(f'checked with onnxruntime: max |JAX - ONNX| = {diff:.2g} on 3 random images')
  reason = onnx_export.insightface_routing(size)
  if reason:
    print(f'warning: {reason}', file=sys.stderr)


if __name__ == '__main__':
  main()
