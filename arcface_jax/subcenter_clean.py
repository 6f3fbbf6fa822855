"""Sub-center ArcFace's cleaning step (Deng et al., ECCV 2020, §3.2) on a trained K > 1 run.

  python -m arcface_jax.subcenter_clean --workdir runs/subcenter --out runs/subcenter/clean \\
      [--max_angle 75] [--step N]

Every training image is embedded with the run's backbone (latest checkpoint, or --step) and
assigned to the nearest of its class's K sub-centres; each class's dominant sub-centre is the one
with the most images. Images more than --max_angle degrees (the paper's 75°) from their class's
dominant sub-centre are likely label noise: they are listed for review, not deleted. Writes
  <out>/flagged.tsv           index, label, angle to the dominant sub-centre (°), nearest
                              sub-centre; largest angle first
  <out>/dominant_centres.npy  (C, D) float32, each class's dominant sub-centre
  <out>/summary.json          counts per sub-centre, flagged count, the settings
  <out>/exclude.txt           the indices to leave out: the flagged images, and any the run
                              itself excluded (config.data.exclude)
Indices are into the full training split (`sources.get_train_source` without exclusion). Then
continue with one centre per class, initialised from the dominant sub-centres, without the
flagged images (the command prints this line with the paths filled in):
  python -m arcface_jax.train --config configs/from_run.py:<workdir> --workdir <workdir>_k1 \\
      --config.loss.name=arcface --config.head.subcenters=1 \\
      --config.head.init_centres=<out>/dominant_centres.npy --config.data.exclude=<out>/exclude.txt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import numpy as np
from etils import epath

MAX_ANGLE = 75.0
CHUNK = 4096  # images embedded at a time


def clean(
  embeddings: np.ndarray, labels: np.ndarray, centres: np.ndarray, max_angle: float = MAX_ANGLE
) -> dict[str, np.ndarray]:
  """The cleaning decision from embeddings (N, D), labels (N,) and sub-centres (C, K, D).

  Returns nearest (N,) sub-centre, counts (C, K) images per sub-centre, dominant (C,) (ties: the
  lower index; a class without images keeps sub-centre 0), angle (N,) degrees to the dominant
  sub-centre, flagged (N,) angle > max_angle.
  """
  x = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
  w = centres / np.maximum(np.linalg.norm(centres, axis=2, keepdims=True), 1e-12)
  cos = np.einsum('nd,nkd->nk', x, w[labels])
  nearest = np.argmax(cos, axis=1)
  counts = np.zeros(centres.shape[:2], np.int64)
  np.add.at(counts, (labels, nearest), 1)
  dominant = np.argmax(counts, axis=1)
  to_dominant = cos[np.arange(len(labels)), dominant[labels]]
  angle = np.degrees(np.arccos(np.clip(to_dominant, -1.0, 1.0)))
  return dict(
    nearest=nearest, counts=counts, dominant=dominant, angle=angle, flagged=angle > max_angle
  )


def embed_training_set(
  config: Any, workdir: str, step: int | None
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, int]:
  """(embeddings (N, D), labels (N,), step, indices (N,), total) of every image the run trained
  on: indices are into the full training split of `total` images (they skip what
  config.data.exclude left out)."""
  from tqdm import tqdm

  from arcface_jax import inference, models, parallel
  from arcface_jax.data.exclude import ExcludedSource
  from arcface_jax.data.sources import get_train_source
  from arcface_jax.evaluation.extract import extract_embeddings

  mesh = parallel.make_mesh()
  model, abstract = inference.abstract_model_variables(config, mesh)
  variables, step = inference.restore_variables(workdir, abstract, step)
  embed = models.jit_embed_fn(model, mesh.devices.flat)
  source = get_train_source(config.data)
  size = config.data.image_size
  embeddings: list[np.ndarray] = []
  labels: list[int] = []
  print(f'embedding {len(source)} training images (the first batch compiles)', file=sys.stderr)
  for start in tqdm(range(0, len(source), CHUNK), unit='chunk', file=sys.stderr):
    samples = [source[i] for i in range(start, min(start + CHUNK, len(source)))]
    from arcface_jax.data.decode import resize

    images = np.stack(
      [img if img.shape[:2] == (size, size) else resize(img, (size, size)) for img, _ in samples]
    )
    emb, _ = extract_embeddings(
      lambda batch: embed(variables, batch),
      images,
      batch_size=config.eval.batch_size,
      mean=config.data.mean,
      std=config.data.std,
      mesh=mesh,
    )
    embeddings.append(emb)
    labels.extend(int(label) for _, label in samples)
  if isinstance(source, ExcludedSource):  # its indices into the full split
    indices, total = np.asarray(source.kept, np.int64), len(source.base)
  else:
    indices, total = np.arange(len(source), dtype=np.int64), len(source)
  return np.concatenate(embeddings), np.asarray(labels, np.int64), step, indices, total


def run(
  workdir: str, out_dir: str, max_angle: float = MAX_ANGLE, step: int | None = None
) -> dict[str, Any]:
  """Cleans the run in `workdir` into `out_dir` (see the module docstring); returns the summary."""
  from arcface_jax import inference, reporting

  config = reporting.read_config(workdir)
  embeddings, labels, step, indices, total = embed_training_set(config, workdir, step)
  weight = inference.read_class_centres(workdir, step)
  if weight is None or weight.ndim != 3:
    has = (
      'no class centres' if weight is None else f'one centre per class (head weight {weight.shape})'
    )
    raise ValueError(
      f'{workdir} has {has}: only a '
      'run with config.head.subcenters > 1 (loss.name=subcenter) can be cleaned'
    )
  num_classes = int(config.data.num_classes or labels.max() + 1)
  result = clean(embeddings, labels, weight[:num_classes], max_angle)
  out = epath.Path(out_dir)  # local or gs://
  out.mkdir(parents=True, exist_ok=True)
  order = np.argsort(-result['angle'])
  with (out / 'flagged.tsv').open('w') as f:
    f.write('index\tlabel\tangle_deg\tnearest_subcentre\n')
    for i in order[result['flagged'][order]]:
      f.write(f'{indices[i]}\t{labels[i]}\t{result["angle"][i]:.2f}\t{result["nearest"][i]}\n')
  # What the continued run leaves out: these images, and what this run already left out.
  left_out = np.setdiff1d(np.arange(total), indices)
  with (out / 'exclude.txt').open('w') as f:
    f.write(
      f'# config.data.exclude for continuing {workdir}: training-split indices more than '
      f'{max_angle} degrees from their dominant sub-centre (see flagged.tsv)'
      + (f', and those the run excluded ({config.data.get("exclude")})' if len(left_out) else '')
      + '\n'
    )
    f.writelines(f'{i}\n' for i in np.union1d(indices[result['flagged']], left_out))
  dominant = weight[np.arange(num_classes), result['dominant']]
  with (out / 'dominant_centres.npy').open('wb') as f:
    np.save(f, dominant.astype(np.float32))
  summary = {
    'workdir': os.fspath(workdir),
    'step': int(step),
    'max_angle': max_angle,
    'images': int(len(labels)),
    'flagged': int(result['flagged'].sum()),
    'classes': num_classes,
    'subcentres': int(weight.shape[1]),
    'images_per_subcentre': result['counts'].sum(0).tolist(),
    'images_on_dominant': int(result['counts'][np.arange(num_classes), result['dominant']].sum()),
  }
  (out / 'summary.json').write_text(json.dumps(summary, indent=2))
  return summary


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--workdir', required=True, help='a trained run with head.subcenters > 1')
  parser.add_argument('--out', required=True, help='where flagged.tsv etc. are written')
  parser.add_argument(
    '--max_angle',
    type=float,
    default=MAX_ANGLE,
    help='degrees from the dominant sub-centre beyond which an image is listed',
  )
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
  args = parser.parse_args(argv)
  if not 0.0 < args.max_angle < 180.0:
    parser.error(f'--max_angle={args.max_angle} must be in (0, 180) degrees')
  if not (epath.Path(args.workdir) / 'config.json').exists():
    parser.error(f'--workdir {args.workdir}: no config.json there (not a training run)')
  try:
    summary = run(args.workdir, args.out, args.max_angle, args.step)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(
    f'{summary["flagged"]} of {summary["images"]} images are more than {args.max_angle}° '
    f'from their dominant sub-centre: listed in {os.path.join(args.out, "flagged.tsv")}.\n'
    'Continue with one centre per class, from the dominant sub-centres, without them:\n'
    + continue_command(args.workdir, args.out)
  )
  return 0


def continue_command(workdir: str, out_dir: str) -> str:
  """The training command that continues `workdir` with K = 1 from `out_dir`'s cleaning."""
  import shlex

  run = os.path.normpath(workdir)
  return ' '.join(
    [
      'python -m arcface_jax.train',
      '--config',
      shlex.quote(f'configs/from_run.py:{run}'),
      '--workdir',
      shlex.quote(f'{run}_k1'),
      '--config.loss.name=arcface',
      '--config.head.subcenters=1',
      shlex.quote('--config.head.init_centres=' + os.path.join(out_dir, 'dominant_centres.npy')),
      shlex.quote('--config.data.exclude=' + os.path.join(out_dir, 'exclude.txt')),
    ]
  )


if __name__ == '__main__':
  sys.exit(main())
