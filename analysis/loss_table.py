"""Every loss trained with one recipe, and the paper-style comparison table of them.

  python -m analysis.loss_table --config configs/toy.py:arcface,3d --seeds 2 --out docs/loss_table
  python -m analysis.loss_table --config configs/casia.py --seeds 1 --out figs/casia_table

Each loss of LOSSES is trained from `--config` with only config.loss replaced (its name and the
settings of the row), once per seed (config.seed = 0, 1, ...), in <runs>/<loss>/seed<k>; a
finished run is reused. The last checkpoint is scored on the config's held-out verification
pairs (digits or synthetic identities: held-out classes; a real config: its last .bin set) with
the 10-fold protocol: accuracy and TAR at FAR = 1e-3. Writes <out>/loss_table.md (mean ± std
over seeds and the training time), loss_table.png (bars with the std as error bars),
loss_table.csv (one line per run) and loss_table.json.

With a CASIA-WebFace config and LFW/CFP-FP/AgeDB .bin files this is the ArcFace paper's Table 2
protocol with the later losses added; the committed docs/loss_table.md is the embedded digits
benchmark, which runs on two CPU cores in under an hour.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Sequence

import numpy as np

from analysis import output

# table row → (config.loss overrides, paper). Plain softmax and SphereFace keep their own scale.
LOSSES: dict[str, tuple[dict[str, Any], str]] = {
    'softmax': (dict(name='softmax'), 'unnormalised softmax with bias'),
    'norm_softmax': (dict(name='norm_softmax'), 'NormFace, Wang et al., ACM MM 2017'),
    'sphereface': (dict(name='sphereface'), 'SphereFace, Liu et al., CVPR 2017'),
    'cosface': (dict(name='cosface'), 'CosFace, Wang et al., CVPR 2018'),
    'arcface': (dict(name='arcface'), 'ArcFace, Deng et al., CVPR 2019'),
    'combined': (dict(name='combined'), 'ArcFace paper, combined margin CM1'),
    'subcenter': (dict(name='subcenter'), 'Sub-center ArcFace, Deng et al., ECCV 2020'),
    'curricularface': (dict(name='curricularface'), 'CurricularFace, Huang et al., CVPR 2020'),
    'magface': (dict(name='magface'), 'MagFace, Meng et al., CVPR 2021'),
    'adaface': (dict(name='adaface'), 'AdaFace, Kim et al., CVPR 2022'),
    'elasticface_arc': (dict(name='elasticface_arc'), 'ElasticFace, Boutros et al., CVPRW 2022'),
    'elasticface_cos': (dict(name='elasticface_cos'), 'ElasticFace, Boutros et al., CVPRW 2022'),
    'elasticface_arc_plus': (dict(name='elasticface_arc', plus=True),
                             'ElasticFace+, Boutros et al., CVPRW 2022'),
}
# The ArcFace paper's comparison (blue bars); the later losses are orange.
WAVE1 = ('softmax', 'norm_softmax', 'sphereface', 'cosface', 'arcface', 'combined')
NAME = 'loss_table'
FAR_TARGET = 1e-3


def recipe(config_spec: str, loss: str, seed: int) -> Any:
  """The shared recipe with config.loss set to the row `loss` and config.seed to `seed`."""
  from arcface_jax.config_files import load_config
  config = load_config(config_spec)
  base_scale = config.loss.s
  for key in ('m', 'm1', 'm2', 'm3', 'easy_margin', 'plus', 'sigma'):
    config.loss[key] = None  # the row's paper defaults, not the recipe's own loss settings
  config.loss.update(LOSSES[loss][0])
  # The recipe's scale for every normalised loss; plain softmax has none, A-softmax uses ‖x‖.
  config.loss.s = None if loss in ('softmax', 'sphereface') else base_scale
  config.seed = int(seed)
  return config


def score_run(workdir: str, num_pairs: int) -> dict[str, float]:
  """Accuracy (10-fold) and TAR@FAR=1e-3 of the run's last checkpoint on held-out pairs."""
  from analysis.runs import Run
  from arcface_jax.evaluation import verification
  run = Run(workdir)
  pairs = run.verification_pairs(num_pairs)
  if pairs is None:
    raise SystemExit(f'{workdir}: the config has no verification pairs (data.source digits or '
                     'synthetic, or eval.bins)')
  set_name, images, issame = pairs
  embeddings = run.embed(run.variables(run.resolve_step(None)), images, flip=True)
  scores = verification.evaluate(embeddings, issame, nfolds=10, far_target=FAR_TARGET)
  return {'set': set_name, 'pairs': int(len(issame)), 'accuracy': float(scores['accuracy']),
          'tar_at_far': float(scores['tar_at_far'])}


def train_run(config: Any, workdir: str) -> float:
  """Trains (or finds finished) `workdir`; returns its training time in seconds."""
  from arcface_jax import trainer
  from arcface_jax.inference import checkpoint_steps
  timing = os.path.join(workdir, 'loss_table_time.json')
  if os.path.exists(timing) and checkpoint_steps(workdir)[-1:] == [config.train.num_steps]:
    with open(timing) as f:
      return float(json.load(f)['seconds'])
  start = time.perf_counter()
  trainer.train_and_evaluate(config, workdir)
  seconds = time.perf_counter() - start
  if checkpoint_steps(workdir)[-1:] != [config.train.num_steps]:
    raise SystemExit(f'[loss_table] {workdir} stopped before step {config.train.num_steps}; run '
                     'the same command again to resume')
  with open(timing, 'w') as f:
    json.dump({'seconds': seconds}, f)
  return seconds


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per loss, in LOSSES order: mean and std over seeds of accuracy, TAR and time."""
  rows = []
  for loss in dict.fromkeys(r['loss'] for r in results):
    runs = [r for r in results if r['loss'] == loss]
    acc = np.array([r['accuracy'] for r in runs])
    tar = np.array([r['tar_at_far'] for r in runs])
    secs = np.array([r['seconds'] for r in runs])
    rows.append(dict(loss=loss, paper=LOSSES[loss][1], config=LOSSES[loss][0], seeds=len(runs),
                     accuracy=acc.mean(), accuracy_std=acc.std(), tar_at_far=tar.mean(),
                     tar_at_far_std=tar.std(), seconds=secs.mean(), set=runs[0]['set'],
                     pairs=runs[0]['pairs']))
  return rows


def markdown(rows: list[dict[str, Any]], config_spec: str, steps: int) -> str:
  config_names = lambda r: ', '.join(f'{k}={v}' for k, v in r['config'].items())
  lines = [f'# Loss comparison: `{config_spec}`, {steps} steps, up to '
           f'{max(r["seeds"] for r in rows)} seed(s)', '',
           f'Verification on {rows[0]["pairs"]} held-out pairs ({rows[0]["set"]}), 10-fold '
           'protocol; mean ± std over seeds. Training time: wall-clock of the whole run, '
           'compilation included. Made by `python -m analysis.loss_table`.', '',
           '| loss | config.loss | paper | accuracy (%) | TAR@FAR=1e-3 (%) | seeds '
           '| training time (s) |',
           '|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f'| {r["loss"]} | {config_names(r)} | {r["paper"]} | '
                 f'{100 * r["accuracy"]:.2f} ± {100 * r["accuracy_std"]:.2f} | '
                 f'{100 * r["tar_at_far"]:.2f} ± {100 * r["tar_at_far_std"]:.2f} | '
                 f'{r["seeds"]} | {r["seconds"]:.0f} |')
  return '\n'.join(lines) + '\n'


def plot(rows: list[dict[str, Any]], title: str):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  x = np.arange(len(rows))
  for ax, key, label in ((axes[0], 'accuracy', 'verification accuracy (%)'),
                         (axes[1], 'tar_at_far', 'TAR @ FAR = 1e-3 (%)')):
    ax.bar(x, [100 * r[key] for r in rows], yerr=[100 * r[key + '_std'] for r in rows],
           color=['tab:blue' if r['loss'] in WAVE1 else 'tab:orange' for r in rows], capsize=3)
    ax.set_xticks(x, [r['loss'] for r in rows], rotation=60, ha='right', fontsize=8)
    ax.set_ylabel(label)
    low = min(100 * (r[key] - r[key + '_std']) for r in rows)
    ax.set_ylim(max(0.0, low - 5), 100)
    ax.grid(axis='y', alpha=0.3)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def run_table(config_spec: str, seeds: int, out_dir: str, runs_dir: str,
              losses: Sequence[str] | None = None, num_pairs: int = 3000) -> str:
  """Trains and scores every (loss, seed), writes the table files; returns the .md path."""
  losses = list(losses) if losses else list(LOSSES)
  unknown = sorted(set(losses) - set(LOSSES))
  if unknown:
    raise SystemExit(f'unknown losses {unknown}; valid: {list(LOSSES)}')
  results, steps, path = [], None, ''
  # Seeds outermost: the first pass gives every loss one run, later passes add the spread.
  for seed in range(seeds):
    for loss in losses:
      config = recipe(config_spec, loss, seed)
      steps = config.train.num_steps
      workdir = os.path.join(runs_dir, loss, f'seed{seed}')
      print(f'[loss_table] {loss} seed {seed}: training in {workdir}', flush=True)
      seconds = train_run(config, workdir)
      scores = score_run(workdir, num_pairs)
      print(f'[loss_table] {loss} seed {seed}: accuracy {scores["accuracy"]:.4f}, TAR@FAR=1e-3 '
            f'{scores["tar_at_far"]:.4f}, {seconds:.0f} s', flush=True)
      results.append(dict(loss=loss, seed=seed, seconds=seconds, workdir=workdir, **scores))
      # Rewritten after every run: an interrupted table still shows what is done.
      path = write_table(results, config_spec, steps, seeds, out_dir)
  return path


def write_table(results: list[dict[str, Any]], config_spec: str, steps: int, seeds: int,
                out_dir: str) -> str:
  """loss_table.md/.png/.csv/.json of the runs so far; returns the .md path."""
  rows = summarise(results)
  output.ensure_dir(out_dir)
  path = os.path.join(out_dir, f'{NAME}.md')
  with open(path, 'w') as f:
    f.write(markdown(rows, config_spec, steps))
  fig = plot(rows, f'{config_spec}: {steps} steps, up to {seeds} seed(s) per loss')
  fig.savefig(os.path.join(out_dir, f'{NAME}.png'), dpi=120)
  import matplotlib.pyplot as plt
  plt.close(fig)
  output.write_csv(('loss', 'seed', 'accuracy', 'tar_at_far', 'seconds', 'workdir'),
                   [(r['loss'], r['seed'], r['accuracy'], r['tar_at_far'], r['seconds'],
                     r['workdir']) for r in results], out_dir, NAME)
  output.write_json({'config': config_spec, 'steps': steps, 'rows': rows, 'runs': results},
                    out_dir, NAME)
  return path


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', required=True, help='the shared recipe, e.g. configs/toy.py:3d')
  parser.add_argument('--seeds', type=int, default=1, help='runs per loss (seeds 0..N-1)')
  parser.add_argument('--out', default='figs/loss_table', help='where the table files go')
  parser.add_argument('--runs', default='runs/loss_table', help='where the runs are trained')
  parser.add_argument('--losses', nargs='*', default=None, help=f'a subset of {list(LOSSES)}')
  parser.add_argument('--pairs', type=int, default=3000, help='held-out verification pairs')
  args = parser.parse_args(argv)
  if args.seeds < 1:
    parser.error(f'--seeds={args.seeds} must be >= 1')
  spec = args.config
  if not os.path.exists(spec.partition(':')[0]):
    parser.error(f'--config {spec}: file {spec.partition(":")[0]} does not exist')
  print(run_table(spec, args.seeds, args.out, args.runs, args.losses, args.pairs))


if __name__ == '__main__':
  main()
