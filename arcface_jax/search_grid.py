"""A search's grid and metric: `--grid KEY=V1,V2` specs parsed into cells (checked against the
config), each cell's directory name, and whether the metric is better higher or lower."""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any, Sequence

import ml_collections

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
    name = ','.join(f'{label}={safe_name(v)}' for label, v in zip(labels, combo))
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


def safe_name(value: Any) -> str:
  """`value` as part of a directory or file name: other characters than [A-Za-z0-9._+-] become _."""
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
