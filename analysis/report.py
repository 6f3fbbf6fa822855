"""One HTML page with the figures of given runs and the configs that made them.

  python -m analysis.report --workdir runs/toy/softmax --workdir runs/toy/arcface --out figs/

Draws, into --out: the loss figures (logit curves, decision margins; they depend on no run), the
runs' embeddings, their training curves and accuracy side by side, and each run's angle
distributions over its checkpoints; then writes index.html, which shows every figure with links
to its data files, a table of the runs (loss settings, last loss, best accuracy) and each run's
config.json. Paths in the page are relative, so the folder can be moved or served as is. The
workdirs and --out may be local or URIs (`gs://bucket/report`): files go through `etils.epath`.
"""

from __future__ import annotations

import argparse
import html
import os
import re
from typing import Any, Mapping, Sequence

from etils import epath

from analysis import (
  angles,
  compare,
  decision_margins,
  embeddings,
  logit_curves,
  margin_families,
  output,
)

LOSS_FIELDS = ('name', 's', 'm', 'm1', 'm2', 'm3', 'easy_margin', 'straight_through')
_STYLE = """
body { font-family: sans-serif; max-width: 1400px; margin: 2em auto; color: #222; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 4px 8px; }
pre { background: #f6f6f6; padding: 0.5em; font-size: 12px; overflow-x: auto; }
.data { font-size: 12px; color: #555; }
"""


def safe_name(label: str) -> str:
  """A file-name stem from a run label."""
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', label).strip('_') or 'run'


def _rel(path: str, out_dir: str) -> str:
  # String arithmetic only: the same for a local folder and a gs:// prefix.
  return html.escape(os.path.relpath(path, out_dir))


def figure_section(title: str, paths: Mapping[str, str], out_dir: str, caption: str = '') -> str:
  """A <section> with the PNGs of `paths` and links to their data files."""
  images = ''.join(
    f'<img src="{_rel(p, out_dir)}" alt="{html.escape(title)}">'
    for p in paths.values()
    if p.endswith('.png')
  )
  data = ', '.join(
    f'<a href="{_rel(p, out_dir)}">{html.escape(os.path.basename(p))}</a>'
    for p in paths.values()
    if not p.endswith('.png')
  )
  return (
    f'<section><h2>{html.escape(title)}</h2><p>{html.escape(caption)}</p>{images}'
    f'<p class="data">data: {data}</p></section>'
  )


def runs_table(summary: Sequence[Mapping[str, Any]]) -> str:
  rows = []
  for run in summary:
    loss = ', '.join(f'{k}={v}' for k, v in run['loss'].items() if k in LOSS_FIELDS)
    last = run['last'].get('train/loss')
    last_text = '–' if last is None else f"{last['value']:.4f} (step {last['step']})"
    best = (
      '; '.join(
        f"{name} {b['accuracy']:.4f} (step {b['step']})" for name, b in run['best_accuracy'].items()
      )
      or '–'
    )
    cells = (run['label'], loss, last_text, best)
    rows.append('<tr>' + ''.join(f'<td>{html.escape(c)}</td>' for c in cells) + '</tr>')
  return (
    '<table><tr><th>run</th><th>loss</th><th>last train loss</th>'
    f'<th>best verification accuracy</th></tr>{"".join(rows)}</table>'
  )


def config_section(workdir: str, label: str) -> str:
  path = epath.Path(workdir) / 'config.json'
  text = path.read_text()
  return (
    f'<details><summary>{html.escape(label)}: {html.escape(os.fspath(path))}</summary>'
    f'<pre>{html.escape(text)}</pre></details>'
  )


def write_report(
  workdirs: Sequence[str],
  out_dir: str,
  *,
  title: str = 'arcface_jax analysis',
  angle_files: Mapping[str, Mapping[str, str]] | None = None,
  with_angles: bool = True,
  max_samples: int = 1000,
) -> str:
  """Draws every figure of `workdirs` into `out_dir` and writes index.html; returns its path.

  `angle_files` maps a workdir to angle files already written (analysis.angles' paths), which
  are then used instead of drawn again; `with_angles=False` leaves the angle figures out.
  """
  output.ensure_dir(out_dir)
  angle_files = dict(angle_files or {})
  sections = [
    figure_section(
      'Target logit curves',
      logit_curves.write(out_dir),
      out_dir,
      'Target logit against θ for every margin (paper Fig. 4b) and its gradient, '
      'from margins.get(...).target_logit and jax.grad.',
    ),
    figure_section(
      'Decision margins',
      decision_margins.write(out_dir),
      out_dir,
      'Two classes in the (θ1, θ2) plane: class 1 wins where f(θ1) > cos θ2, '
      'class 2 where f(θ2) > cos θ1, grey = margin; and the margin width.',
    ),
    figure_section(
      'Margins that move',
      margin_families.write(out_dir),
      out_dir,
      'MagFace (feature norm), AdaFace (standardised norm), ElasticFace (drawn '
      'margin) and CurricularFace (hard negatives by t): a family of target '
      'curves and decision boundaries each.',
    ),
  ]
  if workdirs:
    compared = compare.write(workdirs, out_dir)
    sections.append(
      figure_section(
        'Embeddings',
        embeddings.write(workdirs, out_dir, max_samples=max_samples),
        out_dir,
        'Normalised training features of each run (circle / sphere / t-SNE) with its class '
        'centres (dashed), and the raw features.',
      )
    )
    sections.append(
      figure_section(
        'Training curves and verification accuracy',
        compared,
        out_dir,
        'Every run on shared axes, from its event files.',
      )
    )
    summary = output.read_json(compared['json'])['runs']
    for workdir, run in zip(workdirs, summary):
      paths = angle_files.get(workdir)
      if paths is None and with_angles:
        paths = angles.write_for_run(workdir, out_dir, name=f"angles_{safe_name(run['label'])}")
      if paths is not None:
        sections.append(
          figure_section(
            f"Angle distributions: {run['label']}",
            paths,
            out_dir,
            'θ to the own class centre, between centres, and of held-out pairs, at each kept '
            'checkpoint.',
          )
        )
    configs = ''.join(config_section(w, r['label']) for w, r in zip(workdirs, summary))
    sections.insert(0, f'<section><h2>Runs</h2>{runs_table(summary)}{configs}</section>')
  return write_page(out_dir, title, sections)


def write_page(out_dir: str, title: str, sections: Sequence[str]) -> str:
  """Writes <out_dir>/index.html (local or gs://) holding `sections`; returns its path."""
  page = (
    f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}'
    f'</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>'
    + ''.join(sections)
    + '</body></html>'
  )
  path = epath.Path(out_dir) / 'index.html'
  path.write_text(page)
  return os.fspath(path)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    '--workdir', action='append', default=[], help='a training run (repeat for several runs)'
  )
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--title', default='arcface_jax analysis')
  parser.add_argument(
    '--no_angles', action='store_true', help='leave out the per-checkpoint angle figures'
  )
  parser.add_argument(
    '--max_samples', type=int, default=1000, help='training images embedded per run'
  )
  args = parser.parse_args(argv)
  print(
    write_report(
      args.workdir,
      args.out,
      title=args.title,
      with_angles=not args.no_angles,
      max_samples=args.max_samples,
    )
  )


if __name__ == '__main__':
  main()
