"""Angle distributions of a run at several checkpoints: the margin forming (paper's angle figures).

  python -m analysis.angles --workdir runs/demo --out figs/ [--steps 400 800 1200]

At each checkpoint: θ between each training feature and its own class centre (the centres are
the checkpoint's classifier weights), θ between every pair of distinct class centres, and θ
between the two flip-summed embeddings of each held-out verification pair, positive and negative
apart. As training goes on the first moves towards 0°, the centres spread towards 90° and
beyond, and the positive and negative pair distributions separate. The verification accuracy of
the pairs (the 10-fold protocol) is recorded per checkpoint as well.

Writes <name>.png (rows = checkpoints; columns = to own centre, between centres, pairs),
<name>.csv (step, kind, bin edges, count) and <name>.json (bin edges, counts and summary
statistics per step). `write_for_run(workdir, out_dir)` is what `make demo` calls.
"""

from __future__ import annotations

import argparse
from typing import Any, Sequence

import numpy as np

from analysis import output

NAME = 'angles'
KINDS = ('to_own_centre', 'between_centres', 'positive_pairs', 'negative_pairs')


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Row-wise angle in degrees between vectors a[i] and b[i] (any norms; zero rows give 90°)."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  an = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
  bn = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
  return np.rad2deg(np.arccos(np.clip(np.sum(an * bn, axis=-1), -1.0, 1.0)))


def feature_centre_angles(
  features: np.ndarray, labels: np.ndarray, centres: np.ndarray
) -> np.ndarray:
  """θ (degrees) between each feature and the centre of its own class, (N,)."""
  return angle_deg(features, np.asarray(centres)[np.asarray(labels)])


def centre_angles(centres: np.ndarray) -> np.ndarray:
  """θ (degrees) between every pair i < j of class centres, (C(C−1)/2,)."""
  centres = np.asarray(centres, np.float64)
  i, j = np.triu_indices(len(centres), k=1)
  return angle_deg(centres[i], centres[j])


def pair_angles(embeddings: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(θ of positive pairs, θ of negative pairs) in degrees; pair i is rows 2i and 2i + 1."""
  theta = angle_deg(embeddings[0::2], embeddings[1::2])
  issame = np.asarray(issame, bool)
  return theta[issame], theta[~issame]


def bin_edges(bin_width: float = 2.0) -> np.ndarray:
  """Edges over [0°, 180°]; the last bin is closed, so 180° is counted."""
  return np.linspace(0.0, 180.0, int(round(180.0 / bin_width)) + 1)


def histogram(theta: np.ndarray, edges: np.ndarray) -> np.ndarray:
  return np.histogram(np.asarray(theta, np.float64), bins=edges)[0]


def summarise(theta: np.ndarray) -> dict[str, float]:
  theta = np.asarray(theta, np.float64)
  if theta.size == 0:
    return {'count': 0}
  return {
    'count': int(theta.size),
    'mean': float(theta.mean()),
    'std': float(theta.std()),
    'min': float(theta.min()),
    'median': float(np.median(theta)),
    'max': float(theta.max()),
  }


def angles_at_step(
  run: Any,
  step: int,
  images: np.ndarray,
  labels: np.ndarray,
  pairs: tuple[str, np.ndarray, np.ndarray] | None,
) -> dict[str, np.ndarray]:
  """The raw angles of every kind at one checkpoint of `run` (an analysis.runs.Run)."""
  variables = run.variables(step)
  result = {}
  centres = run.class_centres(step)
  if centres is not None:
    result['to_own_centre'] = feature_centre_angles(run.embed(variables, images), labels, centres)
    result['between_centres'] = centre_angles(centres)
  if pairs is not None:
    _, pair_images, issame = pairs
    # The protocol's embedding (emb + emb_flip) where the run trained with flips.
    embeddings = run.embed(variables, pair_images, flip=bool(run.config.data.flip))
    result['positive_pairs'], result['negative_pairs'] = pair_angles(embeddings, issame)
    result['_pair_embeddings'] = embeddings
  return result


def compute_for_run(
  workdir: str,
  steps: Sequence[int] | None = None,
  *,
  max_samples: int = 2000,
  num_pairs: int | None = None,
  bin_width: float = 2.0,
) -> dict[str, Any]:
  """Histograms and statistics of every kind at `steps` (default: every kept checkpoint)."""
  from analysis.runs import Run
  from arcface_jax.evaluation import verification

  run = Run(workdir)
  steps = list(steps) if steps else run.steps
  if not steps:
    raise FileNotFoundError(f'{workdir} has no checkpoint: train first')
  images, labels = run.training_sample(max_samples)
  pairs = run.verification_pairs(num_pairs)
  edges = bin_edges(bin_width)
  per_step = {}
  for step in steps:
    raw = angles_at_step(run, step, images, labels, pairs)
    entry = {
      'counts': {k: histogram(raw[k], edges) for k in KINDS if k in raw},
      'stats': {k: summarise(raw[k]) for k in KINDS if k in raw},
    }
    if pairs is not None and len(pairs[2]) >= 10:
      scores = verification.evaluate(raw['_pair_embeddings'], pairs[2], nfolds=10)
      entry['verification'] = {
        'set': pairs[0],
        'accuracy': float(scores['accuracy']),
        'std': float(scores['std']),
        'pairs': int(len(pairs[2])),
      }
    per_step[int(step)] = entry
  return {
    'workdir': workdir,
    'label': run.label,
    'bin_edges_deg': edges,
    'pairs': None if pairs is None else pairs[0],
    'steps': per_step,
  }


def plot(data: dict[str, Any]):
  import matplotlib.pyplot as plt

  edges = data['bin_edges_deg']
  centres = 0.5 * (edges[:-1] + edges[1:])
  width = edges[1] - edges[0]
  steps = sorted(data['steps'])
  fig, axes = plt.subplots(len(steps), 3, figsize=(13, 2.6 * len(steps)), squeeze=False)
  panels = (
    ('to_own_centre', 'θ(feature, own centre)', 'tab:green'),
    ('between_centres', 'θ(centre i, centre j)', 'tab:purple'),
  )
  for row, step in zip(axes, steps):
    entry = data['steps'][step]
    for ax, (kind, title, colour) in zip(row[:2], panels):
      if kind in entry['counts']:
        stats = entry['stats'][kind]
        ax.bar(centres, entry['counts'][kind], width=width, color=colour, alpha=0.8)
        ax.set_title(f'step {step}: {title}, mean {stats["mean"]:.1f}°', fontsize=9)
      else:
        ax.set_title(f'step {step}: {title}: no class centres', fontsize=9)
    ax = row[2]
    if 'positive_pairs' in entry['counts']:
      for kind, colour, name in (
        ('positive_pairs', 'tab:red', 'same'),
        ('negative_pairs', 'tab:blue', 'different'),
      ):
        ax.bar(centres, entry['counts'][kind], width=width, color=colour, alpha=0.55, label=name)
      accuracy = entry.get('verification', {}).get('accuracy')
      suffix = f', accuracy {accuracy:.3f}' if accuracy is not None else ''
      ax.set_title(f'step {step}: θ of {data["pairs"]} pairs{suffix}', fontsize=9)
      ax.legend(fontsize=7)
    else:
      ax.set_title(f'step {step}: no verification pairs', fontsize=9)
    for ax in row:
      ax.set_xlim(0, 180)
      ax.set_xticks(range(0, 181, 30))
  for ax in axes[-1]:
    ax.set_xlabel('angle (degrees)')
  fig.suptitle(f'Angle distributions of {data["label"]}')
  fig.tight_layout()
  return fig


def write_for_run(
  workdir: str,
  out_dir: str,
  steps: Sequence[int] | None = None,
  *,
  max_samples: int = 2000,
  num_pairs: int | None = None,
  bin_width: float = 2.0,
  name: str = NAME,
) -> dict[str, str]:
  """Angle histograms of `workdir` at `steps` (default: every kept checkpoint) into `out_dir`.

  Writes <name>.png, <name>.csv and <name>.json; returns their paths by extension.
  """
  data = compute_for_run(
    workdir, steps, max_samples=max_samples, num_pairs=num_pairs, bin_width=bin_width
  )
  return write_data(data, out_dir, name)


def write_data(data: dict[str, Any], out_dir: str, name: str = NAME) -> dict[str, str]:
  """Writes the figure and files of `compute_for_run`'s result; returns paths by extension."""
  edges = data['bin_edges_deg']
  rows = (
    (step, kind, edges[i], edges[i + 1], int(counts[i]))
    for step, entry in sorted(data['steps'].items())
    for kind, counts in entry['counts'].items()
    for i in range(len(counts))
  )
  csv_path = output.write_csv(
    ('step', 'kind', 'bin_lo_deg', 'bin_hi_deg', 'count'), rows, out_dir, name
  )
  json_path = output.write_json(data, out_dir, name)
  png_path = output.save_figure(plot(data), out_dir, name)
  return {'png': png_path, 'csv': csv_path, 'json': json_path}


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--workdir', required=True, help='a training run')
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument(
    '--steps',
    type=int,
    nargs='*',
    default=None,
    help='checkpoint steps (default: every kept checkpoint)',
  )
  parser.add_argument(
    '--max_samples', type=int, default=2000, help='training images for the feature-to-centre angles'
  )
  parser.add_argument(
    '--num_pairs',
    type=int,
    default=None,
    help='verification pairs (default: the config\'s, or 1000)',
  )
  parser.add_argument('--bin_width', type=float, default=2.0, help='histogram bin, degrees')
  parser.add_argument('--name', default=NAME, help='file name stem')
  args = parser.parse_args(argv)
  paths = write_for_run(
    args.workdir,
    args.out,
    args.steps,
    max_samples=args.max_samples,
    num_pairs=args.num_pairs,
    bin_width=args.bin_width,
    name=args.name,
  )
  for path in paths.values():
    print(path)


if __name__ == '__main__':
  main()
