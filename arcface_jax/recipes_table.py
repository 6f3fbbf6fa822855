"""The published recipes' table (configs/recipes.py) as Markdown, written into the README.

  python -m arcface_jax.recipes_table                       # print the table
  python -m arcface_jax.recipes_table --write README.md     # replace the table in README.md
  python -m arcface_jax.recipes_table --check README.md     # exit 1 if README.md's table is stale

The table sits between the lines `<!-- recipes: begin -->` and `<!-- recipes: end -->`; the recipe
files read the same rows, so the README cannot drift from what `--config configs/<row>.py` trains.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from typing import Any, Sequence

BEGIN = '<!-- recipes: begin (python -m arcface_jax.recipes_table --write README.md) -->'
END = '<!-- recipes: end -->'
DEFAULT_TABLE = os.path.join('configs', 'recipes.py')
_BACKBONES = {'iresnet50': 'IResNet-50', 'iresnet100': 'IResNet-100'}
_LOSSES = {'arcface': 'ArcFace', 'cosface': 'CosFace'}


def load_table(path: str = DEFAULT_TABLE) -> dict[str, dict[str, Any]]:
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist; run from the repository root or pass --table')
  return runpy.run_path(path)['RECIPES']


def _data(row: dict[str, Any]) -> str:
  if not (row['images'] and row['identities']):
    return f'{row["dataset"]} (sizes read from the data)'
  return f'{row["dataset"]} ({row["images"]:,} / {row["identities"]:,})'


def _schedule(row: dict[str, Any]) -> str:
  if row['schedule'] == 'step':
    boundaries = ', '.join(f'{b // 1000}K' for b in row['lr_boundaries'])
    return f'÷10 at {boundaries}; {row["steps"] // 1000}K steps'
  return f'warm-up, polynomial to 0 over {row["epochs"]} epochs'


def render(table: dict[str, dict[str, Any]]) -> str:
  """The Markdown table, one line per row of `table`."""
  lines = [
    '| recipe | data (images / identities) | backbone | loss | Partial FC | batch, lr | '
    'lr schedule | published (source) |',
    '|---|---|---|---|---|---|---|---|',
  ]
  for name, row in table.items():
    loss = row['loss']
    margin = f'{_LOSSES.get(loss["name"], loss["name"])} s={loss["s"]:g} m={loss["m"]:g}'
    backbone = _BACKBONES.get(row['backbone'], row['backbone'])
    lines.append(
      f'| `configs/{name}.py` | {_data(row)} | {backbone} | '
      f'{margin} | {"r=" + format(row["sample_rate"], "g") if row["sample_rate"] < 1 else "–"} | '
      f'{row["batch"]}, {row["lr"]:g} | {_schedule(row)} | {row["published"]} '
      f'({row["source"]}) |'
    )
  return '\n'.join(lines) + '\n'


def replace_table(text: str, table_markdown: str, path: str = 'README.md') -> str:
  """`text` with the lines between BEGIN and END replaced by `table_markdown`."""
  if BEGIN not in text or END not in text:
    raise ValueError(
      f'{path} has no recipes table markers; add the lines\n{BEGIN}\n{END}\nwhere the table belongs'
    )
  head, rest = text.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  return f'{head}{BEGIN}\n{table_markdown}{END}{tail}'


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog='python -m arcface_jax.recipes_table',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument('--table', default=DEFAULT_TABLE, help='the recipes table (Python file)')
  action = parser.add_mutually_exclusive_group()
  action.add_argument('--write', metavar='FILE', help='replace the table in FILE')
  action.add_argument('--check', metavar='FILE', help='exit 1 if the table in FILE is stale')
  args = parser.parse_args(argv)
  try:
    markdown = render(load_table(args.table))
    target = args.write or args.check
    if target is None:
      print(markdown, end='')
      return 0
    with open(target, encoding='utf-8') as f:
      text = f.read()
    updated = replace_table(text, markdown, target)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.check:
    if updated != text:
      print(
        f'{target}: the recipes table differs from {args.table}; run python -m '
        f'arcface_jax.recipes_table --write {target}',
        file=sys.stderr,
      )
      return 1
    return 0
  with open(target, 'w', encoding='utf-8') as f:
    f.write(updated)
  return 0


if __name__ == '__main__':
  sys.exit(main())
