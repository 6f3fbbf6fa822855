"""Grid search over config values: one training run per cell, a table, a heatmap, the best cell.

  python -m arcface_jax.search --config configs/finetune.py --workdir runs/grid \\
      --grid train.learning_rate=1e-3,1e-2,1e-1 --grid train.momentum=0.5,0.9,0.99 \\
      [--metric eval/val/accuracy] [--lower_is_better | --higher_is_better] [--config.x=y ...]

Each cell trains in its own directory under --workdir, named by its values
(`learning_rate=0.001,momentum=0.5`); `--config.*` overrides apply to every cell. A cell that
finishes writes `search_cell.json` (its values and final metrics) there, and a finished cell is
never run again, so after a crash or Ctrl-C the same command carries on where it stopped (the
interrupted cell resumes from its own checkpoint). A cell whose training diverges is recorded as
such and not retried; one stopped by a config or data error is recorded and retried next time.

The metric is any TensorBoard scalar the runs log, read at its last step: `eval/<set>/accuracy`
(default `eval/val/accuracy`, the validation pairs' accuracy), `train/loss`, ... A bare name is
looked up under eval/ then train/. Accuracy-like metrics (accuracy, tar_at_far) are higher-is-
better and loss-like ones (loss, std) lower-is-better; for any other, say which with
--higher_is_better or --lower_is_better.

Outputs in --workdir: results.csv and results.json (every cell's values, metric and status),
<metric>.png (a heatmap over the first two grid keys; further keys are reduced to their best),
and TensorBoard hparams (tensorboard/). The best cell is printed.

Compilation: the learning rate, momentum and weight decay are runtime values of the optimizer
state (arcface_jax/optim.py), so cells that differ only in them compile to the same programs; the
persistent compilation cache (JAX's, in $JAX_COMPILATION_CACHE_DIR or --workdir/.jax_cache) then
serves the second cell's train step without compiling it. Each cell's log says how many programs
it compiled and how many it loaded.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import logging as logging_std
import math
import os
import re
import struct
import sys
from typing import Any, Callable, Sequence

import ml_collections
from absl import app, logging
from etils import epath

from arcface_jax import paths
from arcface_jax import train as train_cli  # --config (with --config.* overrides) and --workdir

DONE_MARKER = 'search_cell.json'
HIGHER_IS_BETTER = ('accuracy', 'tar_at_far')
LOWER_IS_BETTER = ('loss', 'std')


class SearchError(ValueError):
  """A grid or metric the search cannot use; the message names it."""


@dataclasses.dataclass
class Cell:
  values: dict[str, Any]  # config key → value
  name: str  # directory name under the search workdir


def _parse_value(key: str, text: str, current: Any) -> Any:
  if isinstance(current, bool):
    if text.lower() in ('true', 'false'):
      return text.lower() == 'true'
    raise SearchError(f'--grid {key}: {text!r} is not true or false')
  for kind in (int, float):
    if isinstance(current, kind):
      try:
        return kind(text) if kind is float else int(text)
      except ValueError:
        raise SearchError(
          f'--grid {key}: {text!r} is not a{"n int" if kind is int else " float"}'
          f' (config {key} = {current!r})'
        ) from None
  if isinstance(current, str):
    return text
  raise SearchError(
    f'--grid {key}: config values of type {type(current).__name__} cannot be '
    'searched (use numbers, strings or booleans)'
  )


def parse_grid(specs: Sequence[str], config: ml_collections.ConfigDict) -> list[Cell]:
  """Every combination of the `--grid KEY=V1,V2` values, checked against `config`."""
  if not specs:
    raise SearchError('give at least one --grid KEY=V1,V2,...')
  axes: list[tuple[str, list[Any]]] = []
  for spec in specs:
    key, sep, values = spec.partition('=')
    key = key.strip()
    texts = [v.strip() for v in values.split(',')]
    if not sep or not key or not all(texts):
      raise SearchError(
        f'--grid {spec!r}: expected KEY=V1,V2,... e.g. train.learning_rate=1e-3,1e-2'
      )
    try:
      current = _lookup(config, key)
    except (AttributeError, KeyError):
      raise SearchError(
        f'--grid {spec!r}: config has no key {key!r} (every key is declared in configs/base.py)'
      ) from None
    if any(key == k for k, _ in axes):
      raise SearchError(f'--grid {key} is given twice')
    axes.append((key, [_parse_value(key, t, current) for t in texts]))
  short = [k.rsplit('.', 1)[-1] for k, _ in axes]
  labels = short if len(set(short)) == len(short) else [k for k, _ in axes]
  cells = []
  for combo in itertools.product(*[values for _, values in axes]):
    name = ','.join(f'{label}={_safe(v)}' for label, v in zip(labels, combo))
    cells.append(Cell(dict(zip([k for k, _ in axes], combo)), name))
  return cells


def _lookup(config: ml_collections.ConfigDict, key: str) -> Any:
  node = config
  for part in key.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise KeyError(key)
    node = node[part]
  if isinstance(node, ml_collections.ConfigDict):
    raise KeyError(key)
  return node


def _safe(value: Any) -> str:
  return re.sub(r'[^A-Za-z0-9._+-]', '_', str(value))


def metric_direction(metric: str, lower: bool | None, higher: bool | None) -> bool:
  """True when higher is better; SearchError when it cannot be told."""
  if lower and higher:
    raise SearchError('give only one of --lower_is_better and --higher_is_better')
  if lower or higher:
    return bool(higher)
  leaf = metric.rsplit('/', 1)[-1]
  if any(word in leaf for word in HIGHER_IS_BETTER):
    return True
  if any(word in leaf for word in LOWER_IS_BETTER):
    return False
  raise SearchError(
    f'--metric {metric}: is higher or lower better? Add --higher_is_better or --lower_is_better'
  )


# ---------------------------------------------------------------- reading the runs' scalars


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


# ---------------------------------------------------------------- counting compilations


class CompileCounter(logging_std.Handler):
  """Counts the programs XLA compiles and those the persistent cache serves, by name."""

  _HIT = re.compile(r"Persistent compilation cache hit for '([^']+)'")
  _MISS = re.compile(r"PERSISTENT COMPILATION CACHE MISS for '([^']+)'")

  def __init__(self) -> None:
    super().__init__(logging_std.DEBUG)
    self.compiled: list[str] = []
    self.loaded: list[str] = []

  def emit(self, record: logging_std.LogRecord) -> None:
    message = record.getMessage()
    for pattern, into in ((self._HIT, self.loaded), (self._MISS, self.compiled)):
      match = pattern.search(message)
      if match:
        into.append(match.group(1))

  def __enter__(self) -> 'CompileCounter':
    self._logger = logging_std.getLogger('jax._src.compiler')
    self._saved = (self._logger.level, self._logger.propagate)
    self._logger.setLevel(logging_std.DEBUG)
    self._logger.propagate = False  # its DEBUG lines would flood the console
    self._logger.addHandler(self)
    return self

  def __exit__(self, *exc) -> None:
    self._logger.removeHandler(self)
    self._logger.setLevel(self._saved[0])
    self._logger.propagate = self._saved[1]


def enable_compilation_cache(workdir: paths.PathLike) -> str:
  """JAX's persistent compilation cache (kept if already configured), caching every program.

  JAX reads and writes the cache through etils.epath, so a gs:// workdir holds it too.
  """
  import jax

  # `values` is the typed way to read an option (the attribute form is dynamic)
  configured = jax.config.values['jax_compilation_cache_dir']
  directory = configured or os.fspath(epath.Path(workdir) / '.jax_cache')
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return directory


# ---------------------------------------------------------------- the search


def run_search(
  config: ml_collections.ConfigDict,
  workdir: paths.PathLike,
  cells: list[Cell],
  *,
  metric: str,
  higher_is_better: bool,
  train_fn: Callable[..., Any] | None = None,
  **train_kwargs: Any,
) -> dict[str, Any]:
  """Trains every unfinished cell, then writes the results; returns results.json's content."""
  import copy

  from arcface_jax import trainer
  from arcface_jax.data.errors import DatasetError

  train_fn = trainer.train_and_evaluate if train_fn is None else train_fn
  root = epath.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  enable_compilation_cache(root)
  for index, cell in enumerate(cells, 1):
    cell_dir = root / cell.name
    previous = _read_marker(cell_dir)
    if previous and previous['status'] in ('finished', 'diverged'):
      logging.info(
        'cell %d/%d %s: %s before, skipped', index, len(cells), cell.name, previous['status']
      )
      continue
    cell_config = copy.deepcopy(config)
    for key, value in cell.values.items():
      cell_config.update_from_flattened_dict({key: value})
    logging.info('cell %d/%d %s: training in %s', index, len(cells), cell.name, cell_dir)
    status, error = 'finished', ''
    with CompileCounter() as counter:
      try:
        train_fn(cell_config, cell_dir, **train_kwargs)
      except trainer.TrainingDivergedError as e:
        status, error = 'diverged', str(e)
      except (trainer.ConfigError, DatasetError) as e:
        status, error = 'failed', str(e)
    logging.info(
      'cell %d/%d %s: %s; compiled %d programs (%s), loaded %d from the compilation cache',
      index,
      len(cells),
      cell.name,
      status,
      len(counter.compiled),
      ', '.join(counter.compiled) or 'none',
      len(counter.loaded),
    )
    record = {
      'name': cell.name,
      'values': cell.values,
      'status': status,
      'error': error,
      'metrics': read_scalars(cell_dir / 'tensorboard'),
      'compiled': counter.compiled,
      'loaded_from_cache': counter.loaded,
    }
    (cell_dir / DONE_MARKER).write_text(json.dumps(record, indent=2))
  return write_results(root, cells, metric=metric, higher_is_better=higher_is_better)


def _read_marker(cell_dir: epath.Path) -> dict[str, Any] | None:
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
    record = _read_marker(root / cell.name)
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
  path = workdir / (_safe(tag.replace('/', '_')) + '.png')
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


def parse_args(argv: Sequence[str]) -> Any:
  parser = train_cli.config_parser('arcface_jax.search', __doc__)
  parser.add_argument(
    '--grid',
    action='append',
    default=[],
    metavar='KEY=V1,V2,...',
    help='a config key and its values (repeat for more keys)',
  )
  parser.add_argument(
    '--metric', default='eval/val/accuracy', help='TensorBoard scalar to rank the cells by'
  )
  parser.add_argument(
    '--lower_is_better', action='store_true', default=None, help='the metric is better when lower'
  )
  parser.add_argument(
    '--higher_is_better', action='store_true', default=None, help='the metric is better when higher'
  )
  return train_cli.parse_config_args(parser, argv)


def main(args: Any) -> None:
  config = args.config
  try:
    cells = parse_grid(args.grid, config)
    higher = metric_direction(args.metric, args.lower_is_better, args.higher_is_better)
  except (OSError, SearchError) as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
    sys.exit(2)
  from arcface_jax import distributed

  distributed.initialize_if_launched()
  try:
    result = run_search(config, args.workdir, cells, metric=args.metric, higher_is_better=higher)
  except SearchError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  best = result['best']
  direction = 'higher' if higher else 'lower'
  if best is None:
    print(f'no cell finished with a value of {result["metric"]}; see results.csv')
    sys.exit(1)
  print(
    f'best: {best["name"]}  {result["metric"]}={best["metric"]:.5g} ({direction} is better; '
    f'{len(result["cells"])} cells in {args.workdir}/results.csv)'
  )


if __name__ == '__main__':
  app.run(main, flags_parser=parse_args)
