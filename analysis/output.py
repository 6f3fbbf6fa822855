"""Writing figures and the data behind them: the Agg backend, PNG, CSV and JSON files.

Every analysis command writes a PNG together with the numbers it was drawn from, so a figure can
be re-checked (and tested) without reading pixels.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Iterable, Mapping, Sequence

import matplotlib

# Headless by default: the commands run on servers and in CI, where no display exists.
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend choice)
import numpy as np  # noqa: E402
from etils import epath


def ensure_dir(path: str) -> str:
  """Creates `path` (local, or a gs:// prefix through etils.epath) and returns it."""
  epath.Path(path).mkdir(parents=True, exist_ok=True)
  return path


def _in(out_dir: str, name: str) -> epath.Path:
  return epath.Path(ensure_dir(out_dir)) / name


def save_figure(
  fig: 'plt.Figure', out_dir: str, name: str, dpi: int = 120, *, tight: bool = True
) -> str:
  """Saves `fig` as <out_dir>/<name>.png (cropped to its content when `tight`), closes it,
  returns the path."""
  path = _in(out_dir, f'{name}.png')
  # Drawn into memory and written in one piece: an object-store stream takes whole uploads, and
  # savefig on a stream that cannot seek is not guaranteed.
  png = io.BytesIO()
  fig.savefig(png, format='png', dpi=dpi, bbox_inches='tight' if tight else None)
  plt.close(fig)
  path.write_bytes(png.getvalue())
  return os.fspath(path)


def _plain(value: Any) -> Any:
  """numpy scalars and arrays → Python numbers and lists (JSON has no NaN: those become None)."""
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, np.ndarray):
    return _plain(value.tolist())
  if isinstance(value, (np.floating, float)):
    value = float(value)
    return value if np.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.bool_):
    return bool(value)
  return value


def write_text(text: str, out_dir: str, name: str) -> str:
  """<out_dir>/<name> (a full file name: `table.md`) holding `text`; returns the path."""
  path = _in(out_dir, name)
  path.write_text(text)
  return os.fspath(path)


def read_text(path: str) -> str:
  return epath.Path(path).read_text()


def exists(path: str) -> bool:
  return epath.Path(path).exists()


def write_json(data: Any, out_dir: str, name: str) -> str:
  path = _in(out_dir, f'{name}.json')
  path.write_text(json.dumps(_plain(data), indent=2))
  return os.fspath(path)


def write_csv(header: Sequence[str], rows: Iterable[Sequence[Any]], out_dir: str, name: str) -> str:
  """A CSV with `header`; floats written with repr precision, NaN as an empty cell."""
  path = _in(out_dir, f'{name}.csv')
  table = io.StringIO(newline='')
  writer = csv.writer(table)
  writer.writerow(header)
  for row in rows:
    writer.writerow(
      ['' if isinstance(v, float) and not np.isfinite(v) else v for v in (_plain(v) for v in row)]
    )
  path.write_text(table.getvalue())
  return os.fspath(path)


def read_csv(path: str) -> tuple[list[str], list[list[str]]]:
  """(header, rows of strings): what tests and the report read back."""
  rows = list(csv.reader(io.StringIO(epath.Path(path).read_text(), newline='')))
  return rows[0], rows[1:]


def read_json(path: str) -> Any:
  return json.loads(epath.Path(path).read_text())
