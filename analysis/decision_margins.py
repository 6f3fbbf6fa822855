"""Binary decision boundaries of every loss in the (θ1, θ2) plane, and the margin width.

  python -m analysis.decision_margins --out figs/

Two classes, a feature at angle θ1 from centre 1 and θ2 from centre 2. Class 1 wins where its
target logit beats the other class's plain logit, f(θ1) > cos θ2; class 2 wins where
f(θ2) > cos θ1; where neither holds lies the decision margin (shaded grey), which the paper's
figure shows. f is `margins.get(...).target_logit`, so each panel is the loss that trains.

The margin width is measured from the margin-free boundary θ1 = θ2 to class 1's boundary at
θ1 = θ: in angle space arccos(f(θ)) − θ (ArcFace: m everywhere the curve is cos(θ + m)), in cos
space cos θ − f(θ) (CosFace: m everywhere). Writes decision_margins.{png,csv,json}.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Sequence

import numpy as np

from analysis import output
from analysis.logit_curves import target_logit_and_grad
from analysis.margin_specs import MarginSpec, all_specs, describe

NAME = 'decision_margins'
CLASS1, CLASS2, MARGIN = 1, 2, 0


def regions(f: np.ndarray, theta: np.ndarray) -> np.ndarray:
  """Region labels (θ2 index, θ1 index): CLASS1, CLASS2 or MARGIN, given f = target_logit(theta)."""
  cos = np.cos(theta)
  class1 = f[None, :] > cos[:, None]  # f(θ1) > cos θ2, θ1 along columns
  class2 = f[:, None] > cos[None, :]  # f(θ2) > cos θ1, θ2 along rows
  labels = np.full(class1.shape, MARGIN, np.int8)
  labels[class1] = CLASS1
  labels[class2 & ~class1] = CLASS2
  return labels


def boundary(f: np.ndarray) -> np.ndarray:
  """θ2 (radians) on class 1's boundary f(θ1) = cos θ2; NaN where f < −1 (class 1 never wins)."""
  inside = (f >= -1.0) & (f <= 1.0)
  return np.where(inside, np.arccos(np.clip(f, -1.0, 1.0)), np.nan)


def margin_widths(f: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(width in angle space, radians; width in cos space) of the margin at θ (see module doc)."""
  return boundary(f) - theta, np.cos(theta) - f


def compute(num: int = 361, specs: Sequence[MarginSpec] | None = None) -> dict[str, Any]:
  """{'theta_deg': (num,), 'losses': {key: {label, params, f, boundary_deg, width_angle_deg,
  width_cos, regions (num, num), fractions}}} on a θ grid over [0°, 180°]."""
  theta_deg = np.linspace(0.0, 180.0, num)
  theta = np.deg2rad(theta_deg)
  losses = {}
  for spec in specs or all_specs():
    mg = spec.build()
    f, _ = target_logit_and_grad(mg, theta)
    labels = regions(f, theta)
    width_angle, width_cos = margin_widths(f, theta)
    losses[spec.key] = dict(
      label=spec.label,
      name=spec.name,
      params=describe(mg),
      f=f,
      boundary_deg=np.rad2deg(boundary(f)),
      width_angle_deg=np.rad2deg(width_angle),
      width_cos=width_cos,
      regions=labels,
      fractions={
        'class1': float(np.mean(labels == CLASS1)),
        'class2': float(np.mean(labels == CLASS2)),
        'margin': float(np.mean(labels == MARGIN)),
      },
    )
  return {'theta_deg': theta_deg, 'losses': losses}


def plot(data: dict[str, Any]):
  import matplotlib.pyplot as plt
  from matplotlib.colors import ListedColormap

  theta = data['theta_deg']
  losses = data['losses']
  ncols = 4
  nrows = math.ceil(len(losses) / ncols) + 1
  fig = plt.figure(figsize=(4 * ncols, 4 * nrows))
  # Index order MARGIN (0), CLASS1 (1), CLASS2 (2).
  cmap = ListedColormap(['#b0b0b0', '#f4a6a6', '#a6c8f4'])
  for i, loss in enumerate(losses.values()):
    ax = fig.add_subplot(nrows, ncols, i + 1)
    ax.imshow(
      loss['regions'],
      origin='lower',
      extent=(0, 180, 0, 180),
      cmap=cmap,
      vmin=0,
      vmax=2,
      interpolation='nearest',
    )
    ax.plot(theta, loss['boundary_deg'], 'r--', lw=1)  # class 1's boundary
    ax.plot(loss['boundary_deg'], theta, 'b--', lw=1)  # class 2's, mirrored
    ax.plot([0, 180], [0, 180], 'k:', lw=0.6)
    ax.set(
      title=f"{loss['label']}\nmargin area {100 * loss['fractions']['margin']:.1f}%",
      xlabel='θ1 (degrees)',
      ylabel='θ2 (degrees)',
      xlim=(0, 180),
      ylim=(0, 180),
    )
    ax.title.set_fontsize(9)
    ax.set_xticks(range(0, 181, 45))
    ax.set_yticks(range(0, 181, 45))
  ax_a = fig.add_subplot(nrows, 2, 2 * nrows - 1)
  ax_c = fig.add_subplot(nrows, 2, 2 * nrows)
  for loss in losses.values():
    ax_a.plot(theta, loss['width_angle_deg'], label=loss['label'])
    ax_c.plot(theta, loss['width_cos'], label=loss['label'])
  ax_a.set(
    xlabel='θ (degrees)',
    ylabel='arccos f(θ) − θ (degrees)',
    title='Margin width in angle space',
    xlim=(0, 180),
  )
  ax_c.set(
    xlabel='θ (degrees)', ylabel='cos θ − f(θ)', title='Margin width in cos space', xlim=(0, 180)
  )
  for ax in (ax_a, ax_c):
    ax.grid(alpha=0.3)
  ax_c.legend(fontsize=7)
  fig.suptitle(
    'Decision margins, two classes: red = class 1 wins, blue = class 2 wins, grey = margin'
  )
  fig.tight_layout()
  return fig


def write(out_dir: str, num: int = 361) -> dict[str, str]:
  """Writes decision_margins.{png,csv,json} into `out_dir`; returns their paths by extension."""
  data = compute(num)
  keys = list(data['losses'])
  fields = ('boundary_deg', 'width_angle_deg', 'width_cos')
  header = ['theta_deg'] + [f'{field}_{k}' for k in keys for field in fields]
  rows = (
    [data['theta_deg'][i]] + [data['losses'][k][field][i] for k in keys for field in fields]
    for i in range(len(data['theta_deg']))
  )
  csv_path = output.write_csv(header, rows, out_dir, NAME)
  summary = {
    k: {
      'label': v['label'],
      'name': v['name'],
      'params': v['params'],
      'region_fractions': v['fractions'],
    }
    for k, v in data['losses'].items()
  }
  json_path = output.write_json(
    {'grid_points': len(data['theta_deg']), 'losses': summary}, out_dir, NAME
  )
  png_path = output.save_figure(plot(data), out_dir, NAME)
  return {'png': png_path, 'csv': csv_path, 'json': json_path}


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--num', type=int, default=361, help='θ grid points over [0°, 180°]')
  args = parser.parse_args(argv)
  for path in write(args.out, args.num).values():
    print(path)


if __name__ == '__main__':
  main()
