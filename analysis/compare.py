"""Training curves and verification accuracy of several runs on shared axes.

  python -m analysis.compare --workdir runs/toy/softmax --workdir runs/toy/arcface --out figs/

Reads each run's TensorBoard scalars (analysis.events: tensorboardX's protobufs, no TensorFlow)
and draws one panel per tag with every run on it: the loss, the mean angle to the target centre,
the hardest negative's cosine, the learning rate, and every `eval/<set>/accuracy` the runs
logged. A last panel shows each run's best accuracy per verification set as bars.

Writes <name>.png, <name>.csv (run, tag, step, value) and <name>.json (per run: workdir, loss
settings, last value of every tag, best accuracy and its step per set).
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Sequence

import numpy as np

from analysis import output
from analysis.events import read_scalars
from analysis.runs import run_label

NAME = 'compare'
TRAIN_TAGS = (
  'train/loss',
  'train/theta_target_deg',
  'train/cos_hardest_negative',
  'train/learning_rate',
)


def accuracy_tags(tags: Sequence[str]) -> list[str]:
  return sorted(t for t in tags if t.startswith('eval/') and t.endswith('/accuracy'))


def collect(workdirs: Sequence[str]) -> list[dict[str, Any]]:
  """Per run: workdir, label, loss settings and its scalars (tag → (steps, values))."""
  from arcface_jax import reporting

  runs = []
  for workdir in workdirs:
    config = reporting.read_config(workdir)
    runs.append(
      dict(
        workdir=workdir,
        label=run_label(workdir, config),
        loss={k: v for k, v in config.loss.to_dict().items() if v is not None},
        scalars=read_scalars(workdir),
      )
    )
  return runs


def summarise(run: dict[str, Any]) -> dict[str, Any]:
  scalars = run['scalars']
  best = {}
  for tag in accuracy_tags(list(scalars)):
    steps, values = scalars[tag]
    i = int(np.argmax(values))
    best[tag.split('/')[1]] = {'accuracy': float(values[i]), 'step': int(steps[i])}
  return {
    'workdir': run['workdir'],
    'label': run['label'],
    'loss': run['loss'],
    'last': {
      tag: {'step': int(s[-1]), 'value': float(v[-1])} for tag, (s, v) in sorted(scalars.items())
    },
    'best_accuracy': best,
  }


def plot(runs: Sequence[dict[str, Any]], tags: Sequence[str]):
  import matplotlib.pyplot as plt

  sets = sorted({s for r in runs for s in summarise(r)['best_accuracy']})
  panels = len(tags) + (1 if sets else 0)
  ncols = min(3, panels)
  nrows = math.ceil(panels / ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
  axes = axes.ravel()
  colours = plt.get_cmap('tab10')
  for ax, tag in zip(axes, tags):
    for i, run in enumerate(runs):
      if tag in run['scalars']:
        steps, values = run['scalars'][tag]
        marker = 'o' if len(steps) < 20 else None
        ax.plot(steps, values, marker=marker, ms=3, color=colours(i % 10), label=run['label'])
    ax.set(title=tag, xlabel='step')
    ax.grid(alpha=0.3)
    if tag == 'train/loss':
      ax.set_yscale('log')
  if sets:
    ax = axes[len(tags)]
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
      best = summarise(run)['best_accuracy']
      values = [best.get(s, {}).get('accuracy', np.nan) for s in sets]
      bars = ax.bar(
        np.arange(len(sets)) + i * width, values, width, color=colours(i % 10), label=run['label']
      )
      ax.bar_label(bars, fmt='%.3f', fontsize=6, rotation=90, padding=2)
    ax.set_xticks(np.arange(len(sets)) + 0.4 - width / 2, sets, fontsize=8)
    ax.set(title='best verification accuracy', ylim=(0.5, 1.0))
    ax.grid(alpha=0.3, axis='y')
  for ax in axes[panels:]:
    ax.axis('off')
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  return fig


def write(
  workdirs: Sequence[str], out_dir: str, tags: Sequence[str] | None = None, name: str = NAME
) -> dict[str, str]:
  """Writes <name>.{png,csv,json} comparing `workdirs`; returns their paths by extension."""
  runs = collect(workdirs)
  present = {t for r in runs for t in r['scalars']}
  if tags is None:
    tags = [t for t in TRAIN_TAGS if t in present] + accuracy_tags(sorted(present))
  rows = (
    (run['label'], tag, int(s), float(v))
    for run in runs
    for tag, (steps, values) in sorted(run['scalars'].items())
    for s, v in zip(steps, values)
  )
  csv_path = output.write_csv(('run', 'tag', 'step', 'value'), rows, out_dir, name)
  json_path = output.write_json(
    {'tags': list(tags), 'runs': [summarise(r) for r in runs]}, out_dir, name
  )
  png_path = output.save_figure(plot(runs, tags), out_dir, name)
  return {'png': png_path, 'csv': csv_path, 'json': json_path}


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    '--workdir', action='append', required=True, help='a training run (repeat for several runs)'
  )
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument(
    '--tag',
    action='append',
    default=None,
    help='scalar tags to draw (default: loss, angles, lr, eval accuracy)',
  )
  args = parser.parse_args(argv)
  for path in write(args.workdir, args.out, args.tag).values():
    print(path)


if __name__ == '__main__':
  main()
