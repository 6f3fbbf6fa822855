"""Every loss trained with one recipe, and the paper-style comparison table of them.

  python -m analysis.loss_table --config configs/toy.py:arcface,3d --seeds 2 --out docs/loss_table
  python -m analysis.loss_table --config configs/casia.py --seeds 1 --out figs/casia_table

Each loss of LOSSES is trained from `--config` with only config.loss replaced (its name and the
settings of the row), once per seed (config.seed = 0, 1, ...), in <runs>/<loss>/seed<k>; a
finished run is reused, an interrupted one resumes from its last checkpoint, and JAX's
compilation cache in <runs>/.jax_cache lets seed 1 (and a rerun) load the programs seed 0
compiled. Each run's wall time and CPU time (user + system of this process and its children,
from getrusage: what the run cost, however busy the machine) are recorded. Runs recorded in an
earlier <out>/loss_table.json for the same recipe are kept in the table until retrained, so the
table only grows. The last checkpoint is scored on the config's held-out verification
pairs (digits or synthetic identities: held-out classes; a real config: its last .bin set) with
the 10-fold protocol: accuracy and TAR at FAR = 1e-3. Writes <out>/loss_table.md (mean ± std
over seeds and the training time), loss_table.png (bars with the std as error bars),
loss_table.csv (one line per run) and loss_table.json. A table with runs missing says which and
how to resume.

With a CASIA-WebFace config and LFW/CFP-FP/AgeDB .bin files this is the ArcFace paper's Table 2
protocol with the later losses added; the committed docs/loss_table.md is the embedded digits
benchmark; its CPU-time column shows what the whole table costs on this CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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
  'elasticface_arc_plus': (
    dict(name='elasticface_arc', plus=True),
    'ElasticFace+, Boutros et al., CVPRW 2022',
  ),
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


def score_run(workdir: str, num_pairs: int) -> dict[str, str | float]:
  """Accuracy (10-fold) and TAR@FAR=1e-3 of the run's last checkpoint on held-out pairs."""
  from analysis.runs import Run
  from arcface_jax.evaluation import verification

  run = Run(workdir)
  pairs = run.verification_pairs(num_pairs)
  if pairs is None:
    raise SystemExit(
      f'{workdir}: the config has no verification pairs (data.source digits or '
      'synthetic, or eval.bins)'
    )
  set_name, images, issame = pairs
  embeddings = run.embed(run.variables(run.resolve_step(None)), images, flip=True)
  scores = verification.evaluate(embeddings, issame, nfolds=10, far_target=FAR_TARGET)
  return {
    'set': set_name,
    'pairs': int(len(issame)),
    'accuracy': float(scores['accuracy']),
    'tar_at_far': float(scores['tar_at_far']),
  }


def cpu_seconds() -> float:
  """User + system CPU time of this process (all threads) and its waited-for children."""
  own = resource.getrusage(resource.RUSAGE_SELF)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def train_run(config: Any, workdir: str) -> dict[str, Any]:
  """Trains (or finds finished) `workdir`; returns its times.

  {'seconds': wall, 'cpu_seconds': CPU (None for a run timed before CPU time was recorded),
  'resumed_from': the step an interrupted run resumed from (0: trained in one go; its times
  then cover only the part after the resume)}.
  """
  from arcface_jax import trainer
  from arcface_jax.inference import checkpoint_steps

  timing = os.path.join(workdir, 'loss_table_time.json')
  if os.path.exists(timing) and checkpoint_steps(workdir)[-1:] == [config.train.num_steps]:
    with open(timing) as f:
      recorded = json.load(f)
    return {
      'seconds': float(recorded['seconds']),
      'cpu_seconds': recorded.get('cpu_seconds'),
      'resumed_from': int(recorded.get('resumed_from', 0)),
    }
  done = checkpoint_steps(workdir) if os.path.isdir(workdir) else []
  start, start_cpu = time.perf_counter(), cpu_seconds()
  trainer.train_and_evaluate(config, workdir)
  times = {
    'seconds': time.perf_counter() - start,
    'cpu_seconds': cpu_seconds() - start_cpu,
    'resumed_from': done[-1] if done else 0,
  }
  if checkpoint_steps(workdir)[-1:] != [config.train.num_steps]:
    raise SystemExit(
      f'[loss_table] {workdir} stopped before step {config.train.num_steps}; run '
      'the same command again to resume'
    )
  with open(timing, 'w') as f:
    json.dump(times, f)
  return times


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per loss, in LOSSES order: mean and std over seeds of accuracy, TAR and the times."""
  rows = []
  for loss in [name for name in LOSSES if any(r['loss'] == name for r in results)]:
    runs = sorted((r for r in results if r['loss'] == loss), key=lambda r: r['seed'])
    acc = np.array([r['accuracy'] for r in runs])
    tar = np.array([r['tar_at_far'] for r in runs])
    secs = np.array([r['seconds'] for r in runs])
    # CPU time is unknown for runs recorded before it was measured: the mean only when all have it.
    cpus = [r['cpu_seconds'] for r in runs if r.get('cpu_seconds') is not None]
    rows.append(
      dict(
        loss=loss,
        paper=LOSSES[loss][1],
        config=LOSSES[loss][0],
        seeds=len(runs),
        seed_list=[r['seed'] for r in runs],
        accuracy=acc.mean(),
        accuracy_std=acc.std(),
        tar_at_far=tar.mean(),
        tar_at_far_std=tar.std(),
        seconds=secs.mean(),
        cpu_seconds=float(np.mean(cpus)) if len(cpus) == len(runs) else None,
        set=runs[0]['set'],
        pairs=runs[0]['pairs'],
      )
    )
  return rows


def _status_lines(
  results: list[dict[str, Any]],
  config_spec: str,
  seeds: int,
  losses: Sequence[str],
  out_dir: str,
  runs_dir: str,
  note: str,
) -> list[str]:
  """The machine, the totals, and (when runs are missing) which ones and how to resume."""
  cpus = [r.get('cpu_seconds') for r in results]
  timed = [c for c in cpus if c is not None]
  load = ', '.join(f'{x:.1f}' for x in os.getloadavg())
  lines = [
    f'Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), '
    f'load average {load} when this table was written. {note}'.rstrip(),
    '',
    f'Total over the {len(results)} runs present: wall time '
    f'{sum(r["seconds"] for r in results) / 60:.1f} min'
    + (
      f', CPU time {sum(timed) / 60:.1f} min'
      + (f' ({len(timed)} runs timed)' if len(timed) < len(results) else '')
      if timed
      else ''
    )
    + '.',
  ]
  resumed = [f'{r["loss"]} seed {r["seed"]}' for r in results if r.get('resumed_from')]
  if resumed:
    lines.append(
      f'Resumed after an interruption (times cover the last part only): {", ".join(resumed)}.'
    )
  earlier = [f'{r["loss"]} seed {r["seed"]}' for r in results if r.get('earlier')]
  if earlier:
    lines.append(
      f'From an earlier invocation whose run directory is gone (no CPU time '
      f'recorded): {", ".join(earlier)}.'
    )
  present = {(r['loss'], r['seed']) for r in results}
  missing = [
    f'{loss} seed {seed}' for seed in range(seeds) for loss in losses if (loss, seed) not in present
  ]
  if missing:
    lines += [
      '',
      f'**Partial: {len(present)} of {len(losses) * seeds} runs '
      f'({len(losses)} losses × {seeds} seeds) are present; missing: '
      f'{", ".join(missing)}.** Resume with `python -m analysis.loss_table --config '
      f"'{config_spec}' --seeds {seeds} --out {out_dir} --runs {runs_dir}`: finished runs "
      f'in {runs_dir} are reused and an interrupted one continues from its checkpoint.',
    ]
  return lines


def markdown(
  rows: list[dict[str, Any]], config_spec: str, steps: int, status: Sequence[str] = ()
) -> str:
  config_names = lambda r: ', '.join(f'{k}={v}' for k, v in r['config'].items())
  lines = [
    f'# Loss comparison: `{config_spec}`, {steps} steps, up to '
    f'{max(r["seeds"] for r in rows)} seed(s)',
    '',
    f'Verification on {rows[0]["pairs"]} held-out pairs ({rows[0]["set"]}), 10-fold '
    'protocol; mean ± std over seeds. Times are per run (mean over seeds), compilation '
    'included: wall clock, and CPU time (user + system of the training process, from '
    'getrusage), which does not grow when other jobs share the machine. Made by '
    '`python -m analysis.loss_table`.',
    '',
    '| loss | config.loss | paper | accuracy (%) | TAR@FAR=1e-3 (%) | seeds '
    '| wall time (s) | CPU time (s) |',
    '|---|---|---|---|---|---|---|---|',
  ]
  for r in rows:
    cpu = '—' if r.get('cpu_seconds') is None else f'{r["cpu_seconds"]:.0f}'
    lines.append(
      f'| {r["loss"]} | {config_names(r)} | {r["paper"]} | '
      f'{100 * r["accuracy"]:.2f} ± {100 * r["accuracy_std"]:.2f} | '
      f'{100 * r["tar_at_far"]:.2f} ± {100 * r["tar_at_far_std"]:.2f} | '
      f'{r["seeds"]} | {r["seconds"]:.0f} | {cpu} |'
    )
  if status:
    lines += [''] + list(status)
  return '\n'.join(lines) + '\n'


def plot(rows: list[dict[str, Any]], title: str):
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  x = np.arange(len(rows))
  for ax, key, label in (
    (axes[0], 'accuracy', 'verification accuracy (%)'),
    (axes[1], 'tar_at_far', 'TAR @ FAR = 1e-3 (%)'),
  ):
    ax.bar(
      x,
      [100 * r[key] for r in rows],
      yerr=[100 * r[key + '_std'] for r in rows],
      color=['tab:blue' if r['loss'] in WAVE1 else 'tab:orange' for r in rows],
      capsize=3,
    )
    ax.set_xticks(x, [r['loss'] for r in rows], rotation=60, ha='right', fontsize=8)
    ax.set_ylabel(label)
    low = min(100 * (r[key] - r[key + '_std']) for r in rows)
    ax.set_ylim(max(0.0, low - 5), 100)
    ax.grid(axis='y', alpha=0.3)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def earlier_results(out_dir: str, config_spec: str, steps: int) -> list[dict[str, Any]]:
  """The runs an earlier invocation recorded in <out>/loss_table.json for the same recipe."""
  path = f'{out_dir}/{NAME}.json'
  if not output.exists(path):
    return []
  recorded = output.read_json(path)
  if recorded.get('config') != config_spec or recorded.get('steps') != steps:
    return []
  return [
    dict(r, earlier=r.get('earlier', False) or not os.path.isdir(r['workdir']))
    for r in recorded.get('runs', [])
    if r.get('loss') in LOSSES
  ]


def run_table(
  config_spec: str,
  seeds: int,
  out_dir: str,
  runs_dir: str,
  losses: Sequence[str] | None = None,
  num_pairs: int = 3000,
  note: str = '',
) -> str:
  """Trains and scores every (loss, seed), writes the table files; returns the .md path."""
  from arcface_jax.search import enable_compilation_cache

  losses = list(losses) if losses else list(LOSSES)
  unknown = sorted(set(losses) - set(LOSSES))
  if unknown:
    raise SystemExit(f'unknown losses {unknown}; valid: {list(LOSSES)}')
  steps = recipe(config_spec, losses[0], 0).train.num_steps
  os.makedirs(runs_dir, exist_ok=True)
  print(f'[loss_table] compilation cache: {enable_compilation_cache(runs_dir)}', flush=True)
  earlier = {
    (r['loss'], r['seed']): r
    for r in earlier_results(out_dir, config_spec, steps)
    if r['loss'] in losses and r['seed'] < seeds
  }
  finished = lambda loss, seed: os.path.exists(
    os.path.join(runs_dir, loss, f'seed{seed}', 'loss_table_time.json')
  )
  # First the runs the table lacks, seeds outermost (every loss gets one run before the spread),
  # then those it only has from an earlier invocation (to time them again).
  order = sorted(
    ((loss, seed) for seed in range(seeds) for loss in losses),
    key=lambda ls: (ls in earlier and not finished(*ls), ls[1], losses.index(ls[0])),
  )
  results: dict[tuple[str, int], dict[str, Any]] = dict(earlier)
  path = ''
  for loss, seed in order:
    config = recipe(config_spec, loss, seed)
    workdir = os.path.join(runs_dir, loss, f'seed{seed}')
    print(f'[loss_table] {loss} seed {seed}: training in {workdir}', flush=True)
    times = train_run(config, workdir)
    scores = score_run(workdir, num_pairs)
    cpu = times['cpu_seconds']
    print(
      f'[loss_table] {loss} seed {seed}: accuracy {scores["accuracy"]:.4f}, TAR@FAR=1e-3 '
      f'{scores["tar_at_far"]:.4f}, wall {times["seconds"]:.0f} s, CPU '
      f'{"?" if cpu is None else f"{cpu:.0f}"} s',
      flush=True,
    )
    results[loss, seed] = dict(loss=loss, seed=seed, workdir=workdir, **times, **scores)
    # Rewritten after every run: an interrupted table still shows what is done.
    path = write_table(
      list(results.values()),
      config_spec,
      steps,
      seeds,
      out_dir,
      losses=losses,
      runs_dir=runs_dir,
      note=note,
    )
  return path


def write_table(
  results: list[dict[str, Any]],
  config_spec: str,
  steps: int,
  seeds: int,
  out_dir: str,
  *,
  losses: Sequence[str] | None = None,
  runs_dir: str = 'runs/loss_table',
  note: str = '',
) -> str:
  """loss_table.md/.png/.csv/.json of the runs so far; returns the .md path."""
  results = sorted(results, key=lambda r: (list(LOSSES).index(r['loss']), r['seed']))
  rows = summarise(results)
  status = _status_lines(
    results, config_spec, seeds, list(losses or LOSSES), out_dir, runs_dir, note
  )
  output.ensure_dir(out_dir)
  path = output.write_text(markdown(rows, config_spec, steps, status), out_dir, f'{NAME}.md')
  fig = plot(rows, f'{config_spec}: {steps} steps, up to {seeds} seed(s) per loss')
  output.save_figure(fig, out_dir, NAME, dpi=120, tight=False)  # local or gs://
  output.write_csv(
    (
      'loss',
      'seed',
      'accuracy',
      'tar_at_far',
      'seconds',
      'cpu_seconds',
      'resumed_from',
      'earlier',
      'workdir',
    ),
    [
      (
        r['loss'],
        r['seed'],
        r['accuracy'],
        r['tar_at_far'],
        r['seconds'],
        r.get('cpu_seconds'),
        r.get('resumed_from', 0),
        bool(r.get('earlier')),
        r['workdir'],
      )
      for r in results
    ],
    out_dir,
    NAME,
  )
  output.write_json(
    {'config': config_spec, 'steps': steps, 'seeds': seeds, 'rows': rows, 'runs': results},
    out_dir,
    NAME,
  )
  return path


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--config', required=True, help='the shared recipe, e.g. configs/toy.py:3d')
  parser.add_argument('--seeds', type=int, default=1, help='runs per loss (seeds 0..N-1)')
  parser.add_argument('--out', default='figs/loss_table', help='where the table files go')
  parser.add_argument('--runs', default='runs/loss_table', help='where the runs are trained')
  parser.add_argument('--losses', nargs='*', default=None, help=f'a subset of {list(LOSSES)}')
  parser.add_argument('--pairs', type=int, default=3000, help='held-out verification pairs')
  parser.add_argument(
    '--note', default='', help='a sentence for the table, e.g. what else ran on the machine'
  )
  args = parser.parse_args(argv)
  if args.seeds < 1:
    parser.error(f'--seeds={args.seeds} must be >= 1')
  spec = args.config
  if not os.path.exists(spec.partition(':')[0]):
    parser.error(f'--config {spec}: file {spec.partition(":")[0]} does not exist')
  print(run_table(spec, args.seeds, args.out, args.runs, args.losses, args.pairs, args.note))


if __name__ == '__main__':
  main()
