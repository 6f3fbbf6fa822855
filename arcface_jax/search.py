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

import json
import sys
from typing import Any, Callable, Sequence

import ml_collections
from absl import app, logging
from etils import epath

from arcface_jax import paths
from arcface_jax import train as train_cli  # --config (with --config.* overrides) and --workdir
from arcface_jax.compilation_cache import CompileCounter, enable_compilation_cache
from arcface_jax.search_grid import Cell, SearchError, metric_direction, parse_grid
from arcface_jax.search_results import (
  DONE_MARKER,
  read_marker,
  read_scalars,
  resolve_metric,
  write_results,
)

# The names this command's users import from it; they live in the modules above.
__all__ = [
  'DONE_MARKER',
  'Cell',
  'CompileCounter',
  'SearchError',
  'enable_compilation_cache',
  'main',
  'metric_direction',
  'parse_args',
  'parse_grid',
  'read_scalars',
  'resolve_metric',
  'run_search',
  'write_results',
]


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
    previous = read_marker(cell_dir)
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
