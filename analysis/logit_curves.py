"""Target logit against θ for every margin (paper Fig. 4b), and its gradient d/dθ.

  python -m analysis.logit_curves --out figs/

Each curve is `margins.get(...).target_logit` evaluated on a θ grid over [0°, 180°]; the gradient
panel is `jax.grad` of the same function (per radian), so both show what training optimises,
fallback branches included. (target_logit goes through cos θ, so at exactly 0° and 180°, where
sin θ = 0, its gradient is 0; the CSV keeps those values, the plot leaves them out.) Writes logit_curves.png, logit_curves.csv (θ, value and d/dθ per
margin) and logit_curves.json (labels and margin parameters).
"""

from __future__ import annotations

import argparse
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from analysis import output
from analysis.margin_specs import MarginSpec, all_specs, describe

NAME = 'logit_curves'


def target_logit_and_grad(mg: Any, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(target_logit(θ), d target_logit / dθ) at angles `theta` in radians, float32."""
  fn = lambda t: mg.target_logit(t)
  angles = jnp.asarray(theta, jnp.float32)
  value = jax.jit(jax.vmap(fn))(angles)
  grad = jax.jit(jax.vmap(jax.grad(fn)))(angles)
  return np.asarray(value, np.float64), np.asarray(grad, np.float64)


def compute(num: int = 721, specs: Sequence[MarginSpec] | None = None) -> dict[str, Any]:
  """{'theta_deg': (num,), 'curves': {key: {'label', 'value', 'grad', 'params', 'note'}}}."""
  theta_deg = np.linspace(0.0, 180.0, num)
  curves = {}
  for spec in specs or all_specs():
    mg = spec.build()
    value, grad = target_logit_and_grad(mg, np.deg2rad(theta_deg))
    curves[spec.key] = dict(
      label=spec.label, name=spec.name, value=value, grad=grad, params=describe(mg), note=spec.note
    )
  return {'theta_deg': theta_deg, 'curves': curves}


def plot(data: dict[str, Any]):
  import matplotlib.pyplot as plt

  theta = data['theta_deg']
  fig, (ax_v, ax_g) = plt.subplots(1, 2, figsize=(13, 5))
  for curve in data['curves'].values():
    # Softmax's curve (per unit norms) coincides with NormSoftmax's: drawn wide and faint beneath.
    style = dict(lw=5, alpha=0.3) if curve['note'].startswith('unnormalised') else dict(lw=1.6)
    ax_v.plot(theta, curve['value'], label=curve['label'], **style)
    # At exactly 0° and 180° sin θ = 0 and the chain rule through cos θ gives 0: the limit from
    # inside differs (e.g. −sin m for ArcFace), so the panel leaves the two end points out.
    ax_g.plot(theta[1:-1], curve['grad'][1:-1], label=curve['label'], **style)
  ax_v.set(
    xlabel='θ between feature and target centre (degrees)',
    ylabel='target logit',
    title='Target logit (paper Fig. 4b)',
    xlim=(0, 180),
  )
  # A-softmax with m = 4 falls to −7 at 180°: clip the view so the other curves stay readable
  # (the CSV holds the full range).
  ax_v.set_ylim(max(-2.5, ax_v.get_ylim()[0]), 1.1)
  ax_g.set(
    xlabel='θ (degrees)',
    ylabel='d target logit / dθ (per radian)',
    title='Gradient of the target logit (jax.grad)',
    xlim=(0, 180),
  )
  for ax in (ax_v, ax_g):
    ax.set_xticks(np.arange(0, 181, 30))
    ax.grid(alpha=0.3)
  ax_v.legend(fontsize=8)
  return fig


def write(out_dir: str, num: int = 721) -> dict[str, str]:
  """Writes logit_curves.{png,csv,json} into `out_dir`; returns their paths by extension."""
  data = compute(num)
  keys = list(data['curves'])
  header = ['theta_deg'] + keys + [f'd_{k}' for k in keys]
  rows = (
    [data['theta_deg'][i]]
    + [data['curves'][k]['value'][i] for k in keys]
    + [data['curves'][k]['grad'][i] for k in keys]
    for i in range(len(data['theta_deg']))
  )
  csv_path = output.write_csv(header, rows, out_dir, NAME)
  meta = {
    k: {f: v for f, v in c.items() if f not in ('value', 'grad')} for k, c in data['curves'].items()
  }
  json_path = output.write_json({'gradient_units': 'per radian', 'curves': meta}, out_dir, NAME)
  png_path = output.save_figure(plot(data), out_dir, NAME)
  return {'png': png_path, 'csv': csv_path, 'json': json_path}


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--num', type=int, default=721, help='θ grid points over [0°, 180°]')
  args = parser.parse_args(argv)
  for path in write(args.out, args.num).values():
    print(path)


if __name__ == '__main__':
  main()
