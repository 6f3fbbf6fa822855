"""The loss table's rows and files: LOSSES (each row's config.loss overrides and paper), the
summary over seeds, and <out>/loss_table.md (mean ± std and the times, with the machine and what
is missing), .png (bars, std as error bars), .csv (one line per run) and .json, which a later
invocation reads back (`earlier_results`) so the table only grows.

`analysis.loss_table` trains and scores the runs and calls `write_table` after each one.
"""

from __future__ import annotations

import os
import platform
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
