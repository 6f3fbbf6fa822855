"""A search's records and results: each cell's `search_cell.json` marker, the last value of every
TensorBoard scalar a run logged, and the results a finished search writes (results.json,
results.csv, the metric's heatmap, TensorBoard hparams)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import struct
from typing import Any

from etils import epath

from arcface_jax import paths
from arcface_jax.search_grid import Cell, SearchError, safe_name

DONE_MARKER = 'search_cell.json'


def read_scalars(logdir: paths.PathLike) -> dict[str, float]:
  """The last value of every scalar in the TensorBoard event files under `logdir`."""
  from tensorboardX.proto import event_pb2

  last: dict[str, tuple[int, float]] = {}
  directory = epath.Path(logdir)
  if not directory.is_dir():
    return {}
  for child in sorted(directory.iterdir(), key=lambda p: p.name):
    if 'tfevents' not in child.name:
      continue
    data = child.read_bytes()
    offset = 0
    while offset + 12 <= len(data):  # TFRecord: length, crc, payload, crc
      (length,) = struct.unpack('<Q', data[offset : offset + 8])
      payload = data[offset + 12 : offset + 12 + length]
      offset += 12 + length + 4
      if len(payload) < length:
        break  # a record still being written
      event = event_pb2.Event.FromString(payload)
      for value in event.summary.value:
        if value.HasField('simple_value') and event.step >= last.get(value.tag, (-1, 0.0))[0]:
          last[value.tag] = (event.step, float(value.simple_value))
  return {tag: value for tag, (_, value) in last.items()}


def resolve_metric(metric: str, scalars: dict[str, float]) -> str:
  for candidate in (metric, f'eval/{metric}', f'train/{metric}'):
    if candidate in scalars:
      return candidate
  raise SearchError(
    f'--metric {metric}: the run logged no such scalar; it logged '
    f'{", ".join(sorted(scalars)) or "nothing"}'
  )


def read_marker(cell_dir: epath.Path) -> dict[str, Any] | None:
  """A cell's `search_cell.json` record; None before it finishes or when unreadable."""
  try:
    return json.loads((cell_dir / DONE_MARKER).read_text())
  except (OSError, ValueError):
    return None


def write_results(
  workdir: paths.PathLike, cells: list[Cell], *, metric: str, higher_is_better: bool
) -> dict[str, Any]:
  root = epath.Path(workdir)
  records: list[dict[str, Any]] = []
  for cell in cells:
    record = read_marker(root / cell.name)
    if record is None:  # run_search writes every cell's marker before it gets here
      raise SearchError(
        f'{root / cell.name / DONE_MARKER} is missing or unreadable; run the search again'
      )
    records.append(record)
  logged = set().union(*[r['metrics'] for r in records])
  tag = resolve_metric(metric, {t: 0.0 for t in logged})
  for record in records:
    value = record['metrics'].get(tag, math.nan)
    record['metric'] = value if record['status'] == 'finished' else math.nan
  ranked = [r for r in records if not math.isnan(r['metric'])]
  best = (max if higher_is_better else min)(ranked, key=lambda r: r['metric']) if ranked else None
  keys = list(cells[0].values)
  result = {
    'metric': tag,
    'higher_is_better': higher_is_better,
    'grid': keys,
    'best': best and {'name': best['name'], 'values': best['values'], 'metric': best['metric']},
    'cells': records,
  }
  (root / 'results.json').write_text(json.dumps(result, indent=2))
  table = io.StringIO(newline='')
  writer = csv.writer(table)
  writer.writerow(['cell', *keys, tag, 'status'])
  for r in records:
    writer.writerow([r['name'], *[r['values'][k] for k in keys], r['metric'], r['status']])
  (root / 'results.csv').write_text(table.getvalue())
  _heatmap(root, records, keys, tag, higher_is_better)
  _log_hparams(root, records, tag)
  return result


def _heatmap(
  workdir: epath.Path, records: list[dict], keys: list[str], tag: str, higher_is_better: bool
) -> str:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import numpy as np

  rows_key, cols_key = keys[0], (keys[1] if len(keys) > 1 else None)
  rows = sorted({r['values'][rows_key] for r in records})
  cols = sorted({r['values'][cols_key] for r in records}) if cols_key else [None]
  pick = np.nanmax if higher_is_better else np.nanmin
  grid = np.full((len(rows), len(cols)), np.nan)
  for i, row in enumerate(rows):
    for j, col in enumerate(cols):
      values = [
        r['metric']
        for r in records
        if r['values'][rows_key] == row and (cols_key is None or r['values'][cols_key] == col)
      ]
      finite = [v for v in values if not math.isnan(v)]
      grid[i, j] = pick(finite) if finite else np.nan
  fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(cols), 1.2 + 0.8 * len(rows)))
  image = ax.imshow(grid, cmap='viridis' if higher_is_better else 'viridis_r', aspect='auto')
  fig.colorbar(image, ax=ax)
  ax.set_xticks(range(len(cols)), [str(c) if c is not None else '' for c in cols])
  ax.set_yticks(range(len(rows)), [str(r) for r in rows])
  ax.set_xlabel(cols_key or '')
  ax.set_ylabel(rows_key)
  for (i, j), value in np.ndenumerate(grid):
    ax.text(j, i, 'n/a' if np.isnan(value) else f'{value:.4g}', ha='center', va='center', color='w')
  reduced = f'; best over {", ".join(keys[2:])}' if len(keys) > 2 else ''
  ax.set_title(
    f'{tag} ({"higher" if higher_is_better else "lower"} is better{reduced})', fontsize=9
  )
  path = workdir / (safe_name(tag.replace('/', '_')) + '.png')
  fig.tight_layout()
  with path.open('wb') as f:
    fig.savefig(f, format='png', dpi=120)
  plt.close(fig)
  return os.fspath(path)


def _log_hparams(workdir: epath.Path, records: list[dict], tag: str) -> None:
  import tempfile

  from tensorboardX import SummaryWriter

  logdir = workdir / 'tensorboard'
  if logdir.exists():
    logdir.rmtree()  # written afresh with every cell on each start
  # SummaryWriter appends to local files; the finished files are copied (a gs:// workdir).
  with tempfile.TemporaryDirectory(prefix='arcface_jax_hparams_') as local:
    with SummaryWriter(local) as writer:
      for r in records:
        hparams = {k: v for k, v in r['values'].items()}
        writer.add_hparams(hparams, {f'hparam/{tag}': r['metric']}, name=r['name'])
    paths.copy_local_tree(local, logdir)
