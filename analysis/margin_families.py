"""Families of target-logit curves and decision boundaries for the margins that move in training.

  python -m analysis.margin_families --out figs/

The later margins have no single curve: MagFace's margin grows with the feature norm a, AdaFace's
changes with the standardised norm ẑ (image quality), ElasticFace draws m_i ~ N(m, σ²) per sample,
and CurricularFace lifts the logits of hard negatives by a running t. Each gets a family:
  magface          a ∈ {10, 35, 60, 85, 110} (l_a … u_a)
  adaface          ẑ ∈ {−1, −0.5, 0, 0.5, 1}
  elasticface_*    m − 2σ … m + 2σ
  curricularface   the target curve (ArcFace's), and the logit of a negative at θ_j against a
                   target at 60° for t ∈ {0, 0.33, 0.67, 1}: cos θ_j(t + cos θ_j) once cos θ_j
                   exceeds cos(60° + m)
Top row: target logit against θ; bottom row: class 1's decision boundary θ2 = arccos f(θ1)
(analysis.decision_margins: above it class 1 wins; the diagonal is the margin-free boundary).
Every curve comes from `margins.get(...).target_logit`. Writes margin_families.{png,csv,json}.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Sequence, TypeVar

import jax.numpy as jnp
import numpy as np

from analysis import output
from analysis.decision_margins import boundary
from arcface_jax import margins

NAME = 'margin_families'
TARGET_DEG = 60.0

_Kind = TypeVar('_Kind')


def _margin(name: str, kind: type[_Kind]) -> _Kind:
  """margins.get(name) with the paper's defaults, typed as the class that `name` always builds."""
  margin = margins.get(name)
  assert isinstance(margin, kind), f'margins.get({name!r}) built a {type(margin).__name__}'
  return margin


def families() -> dict[str, dict[str, Any]]:
  """Per loss: label, parameter name, and (value, member label) pairs."""
  mag = _margin('magface', margins.MagFaceMargin)
  arc = _margin('elasticface_arc', margins.ElasticFaceMargin)
  cos = _margin('elasticface_cos', margins.ElasticFaceMargin)
  return {
    'magface': dict(
      label='MagFace: m(a), feature norm a',
      param='a',
      members=[(a, f'a = {a:g}') for a in np.linspace(mag.l_a, mag.u_a, 5)],
    ),
    'adaface': dict(
      label='AdaFace: standardised norm ẑ',
      param='z',
      members=[(z, f'ẑ = {z:+g}') for z in (-1.0, -0.5, 0.0, 0.5, 1.0)],
    ),
    'elasticface_arc': dict(
      label=f'ElasticFace-Arc: m ~ N({arc.m}, {arc.sigma}²)',
      param='m',
      members=[
        (arc.m + k * arc.sigma, f'm = {arc.m + k * arc.sigma:.2f}') for k in (-2, -1, 0, 1, 2)
      ],
    ),
    'elasticface_cos': dict(
      label=f'ElasticFace-Cos: m ~ N({cos.m}, {cos.sigma}²)',
      param='m',
      members=[
        (cos.m + k * cos.sigma, f'm = {cos.m + k * cos.sigma:.2f}') for k in (-2, -1, 0, 1, 2)
      ],
    ),
    'curricularface': dict(
      label=f'CurricularFace: negatives vs a target at {TARGET_DEG:g}°',
      param='t',
      members=[(t, f't = {t:.2f}') for t in (0.0, 1 / 3, 2 / 3, 1.0)],
    ),
  }


def curve(key: str, value: float, theta: np.ndarray) -> np.ndarray:
  """The family member's target logit at `theta` (radians); curricularface: the negative's logit."""
  t = jnp.asarray(theta, jnp.float32)
  if key == 'magface':
    out = _margin('magface', margins.MagFaceMargin).target_logit(t, norm=value)
  elif key == 'adaface':
    out = _margin('adaface', margins.AdaFaceMargin).target_logit(t, scaler=value)
  elif key.startswith('elasticface'):
    out = _margin(key, margins.ElasticFaceMargin).target_logit(t, m=value)
  else:
    curricular = _margin('curricularface', margins.CurricularFaceMargin)
    out = curricular.negative_logit(jnp.cos(t), math.radians(TARGET_DEG), value)
  return np.asarray(out, np.float64)


def compute(num: int = 361) -> dict[str, Any]:
  """{'theta_deg', 'families': {key: {label, param, members: [{value, label, f,
  boundary_deg}]}}}."""
  theta_deg = np.linspace(0.0, 180.0, num)
  theta = np.deg2rad(theta_deg)
  out = {}
  for key, family in families().items():
    members = []
    for value, label in family['members']:
      f = curve(key, value, theta)
      members.append(
        dict(value=float(value), label=label, f=f, boundary_deg=np.rad2deg(boundary(f)))
      )
    out[key] = dict(label=family['label'], param=family['param'], members=members)
  curricular = margins.get('curricularface')
  out['curricularface']['target'] = np.asarray(
    curricular.target_logit(jnp.asarray(theta, jnp.float32)), np.float64
  )
  return {'theta_deg': theta_deg, 'families': out}


def plot(data: dict[str, Any]):
  import matplotlib.pyplot as plt

  theta = data['theta_deg']
  fams = data['families']
  fig, axes = plt.subplots(2, len(fams), figsize=(4.2 * len(fams), 8.5))
  for col, (key, fam) in enumerate(fams.items()):
    top, bottom = axes[0, col], axes[1, col]
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(fam['members'])))
    top.plot(theta, np.cos(np.deg2rad(theta)), 'k:', lw=0.8, label='cos θ')
    for member, colour in zip(fam['members'], colours):
      top.plot(theta, member['f'], color=colour, label=member['label'])
      if key != 'curricularface':
        bottom.plot(theta, member['boundary_deg'], color=colour, label=member['label'])
    if key == 'curricularface':
      top.axvline(TARGET_DEG, color='grey', lw=0.6)
      top.set(ylabel='negative logit / s', xlabel='θ_j (degrees)')
      bottom.plot(theta, np.rad2deg(boundary(fam['target'])), 'r', label='target (ArcFace curve)')
    else:
      top.set(ylabel='target logit / s', xlabel='θ (degrees)')
    bottom.plot([0, 180], [0, 180], 'k:', lw=0.6)
    bottom.set(
      xlabel='θ1 (degrees)',
      ylabel='θ2 on class 1\'s boundary (degrees)',
      xlim=(0, 180),
      ylim=(0, 180),
    )
    top.set(
      title=fam['label'],
      xlim=(0, 180),
      ylim=(-1.6, 1.6) if key != 'curricularface' else (-1.1, 2.1),
    )
    top.title.set_fontsize(9)
    for ax in (top, bottom):
      ax.set_xticks(range(0, 181, 45))
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
  fig.suptitle('Margins that move: target logit (top) and decision boundary (bottom) per member')
  fig.tight_layout()
  return fig


def write(out_dir: str, num: int = 361) -> dict[str, str]:
  """Writes margin_families.{png,csv,json}; returns their paths by extension."""
  data = compute(num)
  columns = [(k, m) for k, fam in data['families'].items() for m in fam['members']]
  header = ['theta_deg'] + [f"{k}_{fam_param(data, k)}={m['value']:.4g}" for k, m in columns]
  rows = (
    [data['theta_deg'][i]] + [m['f'][i] for _, m in columns] for i in range(len(data['theta_deg']))
  )
  csv_path = output.write_csv(header, rows, out_dir, NAME)
  meta = {
    k: {
      'label': fam['label'],
      'param': fam['param'],
      'values': [m['value'] for m in fam['members']],
    }
    for k, fam in data['families'].items()
  }
  json_path = output.write_json(
    {'target_deg_for_curricularface': TARGET_DEG, 'families': meta}, out_dir, NAME
  )
  png_path = output.save_figure(plot(data), out_dir, NAME)
  return {'png': png_path, 'csv': csv_path, 'json': json_path}


def fam_param(data: dict[str, Any], key: str) -> str:
  return data['families'][key]['param']


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
