"""`make figures`: train the digits toy once per loss and write the report of all of them.

  python -m analysis.toy_figures --out figs/toy [--runs runs/toy] [--dim 3] [--losses arcface cosface]

Each loss of configs/toy.py is trained in <runs>/<loss> (a finished run is reused: the trainer
resumes from its last checkpoint and has nothing left to do). Every kept checkpoint is then
scored on held-out digit pairs (analysis.angles), and the accuracy is added to the run's
TensorBoard scalars as eval/digits_heldout/accuracy, as an evaluator would log it, so the
comparison figure shows it next to the training curves. Last, analysis.report writes
<out>/index.html with every figure.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Sequence

from analysis import angles, report
from arcface_jax.inference import checkpoint_steps

TOY_CONFIG = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'toy.py'
)


def toy_losses() -> list[str]:
  import runpy

  return list(runpy.run_path(TOY_CONFIG)['LOSSES'])


def toy_config(loss: str, dim: int = 2, steps: int | None = None) -> Any:
  """configs/toy.py:<loss>[,3d], with `steps` (and checkpoints at quarters of it) if given."""
  from arcface_jax.config_files import load_config

  config = load_config(f"{TOY_CONFIG}:{loss}{',3d' if dim == 3 else ''}")
  if steps:
    config.train.num_steps = steps
    config.train.checkpoint_every = max(1, steps // 4)
    config.train.warmup_steps = min(config.train.warmup_steps, max(1, steps // 4))
    config.train.log_every = min(config.train.log_every, max(1, steps // 4))
  return config


def log_heldout_accuracy(workdir: str, data: dict[str, Any]) -> None:
  """Adds the angle pass's verification accuracy per checkpoint to the run's event files."""
  from tensorboardX import SummaryWriter

  writer = SummaryWriter(os.path.join(workdir, 'tensorboard'), filename_suffix='.heldout')
  try:
    for step, entry in sorted(data['steps'].items()):
      result = entry.get('verification')
      if result is not None:
        writer.add_scalar(f"eval/{result['set']}/accuracy", result['accuracy'], step)
        writer.add_scalar(f"eval/{result['set']}/std", result['std'], step)
  finally:
    writer.close()


def run_all(
  out_dir: str,
  runs_dir: str = 'runs/toy',
  losses: Sequence[str] | None = None,
  dim: int = 2,
  steps: int | None = None,
  max_samples: int = 1000,
  num_pairs: int = 600,
) -> str:
  """Trains (or reuses) every toy run, scores it, writes the report; returns index.html's path."""
  from arcface_jax import trainer

  losses = list(losses) if losses else toy_losses()
  workdirs, angle_files = [], {}
  for loss in losses:
    workdir = os.path.join(runs_dir, loss)
    print(f'[toy] training {loss} in {workdir}', flush=True)
    config = toy_config(loss, dim, steps)
    trainer.train_and_evaluate(config, workdir)
    if checkpoint_steps(workdir)[-1:] != [config.train.num_steps]:
      # The trainer returns after saving when interrupted (SIGINT/SIGTERM): stop here too.
      raise SystemExit(
        f'[toy] {loss} stopped before step {config.train.num_steps}; run the '
        'same command again to resume'
      )
    data = angles.compute_for_run(workdir, max_samples=max_samples, num_pairs=num_pairs)
    log_heldout_accuracy(workdir, data)
    angle_files[workdir] = angles.write_data(data, out_dir, name=f'angles_{loss}')
    workdirs.append(workdir)
  title = f'arcface_jax toy: digits, {dim}-d embeddings, one run per loss'
  return report.write_report(
    workdirs, out_dir, title=title, angle_files=angle_files, max_samples=max_samples
  )


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--out', required=True, help='output directory of the report')
  parser.add_argument('--runs', default='runs/toy', help='where the toy runs are trained')
  parser.add_argument(
    '--losses', nargs='*', default=None, help='toy losses to train (default: all of configs/toy.py)'
  )
  parser.add_argument('--dim', type=int, choices=(2, 3), default=2, help='embedding dimension')
  parser.add_argument(
    '--steps', type=int, default=None, help='training steps per run (default: the config\'s)'
  )
  args = parser.parse_args(argv)
  runs_dir = args.runs if args.dim == 2 else args.runs.rstrip('/') + '3d'
  print(run_all(args.out, runs_dir, args.losses, args.dim, args.steps))


if __name__ == '__main__':
  main()
