"""Features of trained runs on the circle (2-d) or sphere (3-d), coloured by class, per loss.

  python -m analysis.embeddings --workdir runs/toy/softmax --workdir runs/toy/arcface --out figs/

The paper's Fig. 1 and the toy scatter plots: each run's backbone (latest or given checkpoint)
embeds a fixed sample of its training images; the L2-normalised features are drawn on the unit
circle or sphere with the normalised class centres of the same checkpoint, so the margin shows
as the gap between classes. Embeddings of more than three dimensions are drawn as a t-SNE map
(scikit-learn, the `analysis` extra) with the cosine metric. A second figure shows the raw,
un-normalised features, where softmax's radial spread and feature norms are visible.

Writes embeddings.png, embeddings_raw.png (2-d / 3-d runs), embeddings.csv (one row per point:
run, label, raw and normalised coordinates, t-SNE coordinates when used) and embeddings.json
(per run: workdir, step, dimension, normalised centres, mean angle to the own centre per class).
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Sequence

import numpy as np

from analysis import output
from analysis.angles import angle_deg
from analysis.runs import Run

NAME = 'embeddings'


def normalise(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def tsne(features: np.ndarray, seed: int = 0, max_iter: int = 1000) -> np.ndarray:
  """2-d t-SNE of normalised features with the cosine metric (the angle is what the loss sees)."""
  try:
    from sklearn.manifold import TSNE
  except ImportError:
    raise ImportError(
      'embeddings of more than 3 dimensions are drawn with t-SNE, which needs '
      "scikit-learn: pip install 'arcface_jax[analysis]'"
    ) from None
  perplexity = float(min(30.0, max(2.0, (len(features) - 1) / 3.0)))
  return TSNE(
    n_components=2,
    metric='cosine',
    init='pca',
    perplexity=perplexity,
    max_iter=max_iter,
    random_state=seed,
  ).fit_transform(normalise(features))


def collect(
  workdir: str, step: int | None = None, max_samples: int = 1000, run: Run | None = None
) -> dict[str, Any]:
  """Features, labels and centres of one run's checkpoint; t-SNE coordinates when D > 3."""
  run = Run(workdir) if run is None else run
  step = run.resolve_step(step)
  images, labels = run.training_sample(max_samples)
  features = run.embed(run.variables(step), images)
  centres = run.class_centres(step)
  data = dict(
    workdir=workdir,
    label=run.label,
    step=step,
    dim=features.shape[1],
    features=features,
    labels=labels,
    normalised=normalise(features),
    centres=None if centres is None else normalise(centres),
    tsne=None,
  )
  if features.shape[1] > 3:
    data['tsne'] = tsne(features)
  data['mean_angle_to_centre_deg'] = _mean_angle_per_class(data)
  return data


def _mean_angle_per_class(data: dict[str, Any]) -> dict[int, float] | None:
  if data['centres'] is None:
    return None
  theta = angle_deg(data['normalised'], data['centres'][data['labels']])
  return {int(c): float(theta[data['labels'] == c].mean()) for c in np.unique(data['labels'])}


def _colours(labels: np.ndarray):
  import matplotlib.pyplot as plt

  cmap = plt.get_cmap('tab10' if labels.max() < 10 else 'tab20')
  return cmap(labels % cmap.N)


def _draw(ax, data: dict[str, Any], raw: bool) -> None:
  points = data['features'] if raw else data['normalised']
  colours = _colours(data['labels'])
  dim = data['dim']
  if dim == 2:
    if not raw:
      circle = np.linspace(0, 2 * np.pi, 361)
      ax.plot(np.cos(circle), np.sin(circle), color='0.8', lw=0.8)
    ax.scatter(points[:, 0], points[:, 1], c=colours, s=4, alpha=0.6, linewidths=0)
    if data['centres'] is not None:
      reach = 1.2 if not raw else np.abs(points).max()
      for c, centre in enumerate(data['centres']):
        ax.plot(
          [0, reach * centre[0]],
          [0, reach * centre[1]],
          '--',
          lw=1,
          color=_colours(np.array([c]))[0],
        )
    ax.set_aspect('equal')
  elif dim == 3:
    if not raw:
      u, v = np.mgrid[0 : 2 * np.pi : 25j, 0 : np.pi : 13j]
      ax.plot_wireframe(
        np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color='0.85', lw=0.4
      )
    ax.scatter(points[:, 0], points[:, 1], points[:, 2], c=colours, s=4, alpha=0.6)
    if data['centres'] is not None and not raw:
      for c, centre in enumerate(data['centres']):
        ax.plot(
          [0, 1.3 * centre[0]],
          [0, 1.3 * centre[1]],
          [0, 1.3 * centre[2]],
          '--',
          lw=1,
          color=_colours(np.array([c]))[0],
        )
  else:
    ax.scatter(data['tsne'][:, 0], data['tsne'][:, 1], c=colours, s=4, alpha=0.6, linewidths=0)
  kind = 'raw features' if raw else ('t-SNE (cosine)' if dim > 3 else 'normalised')
  ax.set_title(f"{data['label']}\nstep {data['step']}, {dim}-d, {kind}", fontsize=9)


def plot(runs: Sequence[dict[str, Any]], raw: bool = False):
  import matplotlib.pyplot as plt

  ncols = min(4, len(runs))
  nrows = math.ceil(len(runs) / ncols)
  fig = plt.figure(figsize=(4 * ncols, 4 * nrows))
  for i, data in enumerate(runs):
    projection = '3d' if data['dim'] == 3 else None
    _draw(fig.add_subplot(nrows, ncols, i + 1, projection=projection), data, raw)
  fig.tight_layout()
  return fig


def write(
  workdirs: Sequence[str],
  out_dir: str,
  *,
  step: int | None = None,
  max_samples: int = 1000,
  name: str = NAME,
) -> dict[str, str]:
  """Writes <name>.{png,csv,json} (and <name>_raw.png for 2-d/3-d runs) into `out_dir`."""
  runs = [collect(w, step, max_samples) for w in workdirs]
  paths = {'png': output.save_figure(plot(runs), out_dir, name)}
  low = [r for r in runs if r['dim'] <= 3]
  if low:
    paths['raw_png'] = output.save_figure(plot(low, raw=True), out_dir, f'{name}_raw')
  dmax = max(r['dim'] for r in runs)
  header = (
    ['run', 'step', 'label']
    + [f'f{i}' for i in range(dmax)]
    + [f'n{i}' for i in range(dmax)]
    + ['tsne0', 'tsne1']
  )

  def rows():
    for r in runs:
      pad = [float('nan')] * (dmax - r['dim'])
      for i in range(len(r['labels'])):
        tsne_xy = list(r['tsne'][i]) if r['tsne'] is not None else [float('nan')] * 2
        yield (
          [r['label'], r['step'], int(r['labels'][i])]
          + list(r['features'][i])
          + pad
          + list(r['normalised'][i])
          + pad
          + tsne_xy
        )

  paths['csv'] = output.write_csv(header, rows(), out_dir, name)
  summary = [
    {k: r[k] for k in ('workdir', 'label', 'step', 'dim', 'centres', 'mean_angle_to_centre_deg')}
    | {'num_points': len(r['labels'])}
    for r in runs
  ]
  paths['json'] = output.write_json({'runs': summary}, out_dir, name)
  return paths


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    '--workdir', action='append', required=True, help='a training run (repeat for several runs)'
  )
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
  parser.add_argument(
    '--max_samples', type=int, default=1000, help='training images embedded per run'
  )
  args = parser.parse_args(argv)
  for path in write(args.workdir, args.out, step=args.step, max_samples=args.max_samples).values():
    print(path)


if __name__ == '__main__':
  main()
