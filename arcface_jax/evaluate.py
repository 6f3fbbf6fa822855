"""Evaluates a training run's checkpoint: verification sets, IJB-B/C 1:1, 1:N identification.

  python -m arcface_jax.evaluate --workdir runs/ms1m [--step 180000] \
      [--bins data/lfw.bin data/cfp_fp.bin ...] [--ijb data/IJBC --ijb_target IJBC] \
      [--gallery faces/gallery --probe faces/probe] [--test] [--batch_size 256]

Every evaluation is an evaluator of the registry in arcface_jax.evaluation.evaluators, the same
ones the trainer runs periodically. With no evaluation named, the run's config.eval.evaluators
(by default `verification`: the sets of config.eval) are run; naming any (--bins, --ijb,
--gallery/--probe, --test) runs only those.
`--test` is closed-set accuracy on the run's test split (folder runs with data.split_by=image and
data.test_fraction > 0): top-1 of the classifier head and of the nearest class centre.
`--bins` takes paths or names looked up in config.eval.bin_dir (lfw → <bin_dir>/lfw.bin). Each
verification set is logged as the reference does (`[lfw][step] Accuracy-Flip: 0.99817+-0.00229`,
plus XNorm); every result goes to <workdir>/eval/step_<N>.json, merged into what earlier runs of
the command wrote there (a verification set replaces only its own entry), and IJB scores, the
TAR@FAR table and the ROC figure to <workdir>/eval/step_<N>/. Test accuracy also goes to
TensorBoard (<workdir>/tensorboard, `test/...`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import ml_collections
from absl import app, logging
from absl.flags import argparse_flags
from etils import epath

from arcface_jax import paths


def requested_evaluators(
  config: ml_collections.ConfigDict,
  *,
  bins: Sequence[str] | None = None,
  ijb_dir: str | None = None,
  ijb_target: str | None = None,
  gallery: str | None = None,
  probe: str | None = None,
  test: bool = False,
  workdir: paths.PathLike | None = None,
  batch_size: int | None = None,
) -> list[Any]:
  """The registry's evaluators the command line names, else those of config.eval.evaluators.

  Asking for one thing does not pay for the others: naming any evaluation (bins, IJB, gallery,
  test) runs only those, and `bins` replaces the config's verification sets.
  """
  from arcface_jax.evaluation import evaluators

  common = {'workdir': workdir, 'batch_size': batch_size}
  if gallery or probe:
    if not (gallery and probe):
      raise ValueError('identification needs both --gallery and --probe')
  if bins is None and not (ijb_dir or gallery or test):
    return [evaluators.get(name, config, **common) for name in evaluators.configured_names(config)]
  chosen = []
  if bins is not None:
    chosen.append(evaluators.get('verification', config, bins=bins, **common))
  if ijb_dir:
    chosen.append(evaluators.get('ijb', config, dir=ijb_dir, target=ijb_target, **common))
  if gallery:
    chosen.append(evaluators.get('identification', config, gallery=gallery, probe=probe, **common))
  if test:
    chosen.append(evaluators.get('test', config, **common))
  return chosen


def evaluate_embedder(
  embedder: Any, chosen: Sequence[Any] | None = None, **kwargs: Any
) -> dict[str, Any]:
  """Every requested evaluation of one embedder (see arcface_jax.inference.Embedder).

  `chosen` evaluators, or those `requested_evaluators(embedder.config, **kwargs)` picks; `test`
  needs the run's `workdir` (the classifier head is read from its checkpoint). Returns
  {'step': N, '<evaluator>': its details, ...}.
  """
  results: dict[str, Any] = {'step': int(embedder.step)}
  if chosen is None:
    chosen = requested_evaluators(embedder.config, **kwargs)
  for evaluator in chosen:
    evaluator.run(embedder, int(embedder.step))
    results[evaluator.name] = evaluator.details
  return results


def merge_results(previous: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
  """`new` written over `previous`: verification sets merged by name, other sections replaced."""
  merged = dict(previous)
  for key, value in new.items():
    if key == 'verification' and isinstance(previous.get(key), dict):
      merged[key] = {**previous[key], **value}
    else:
      merged[key] = value
  return merged


def _write_results(path: epath.Path, results: dict[str, Any]) -> dict[str, Any]:
  """Merges `results` into the JSON at `path` (if any) and writes it atomically; returns it."""
  previous: dict[str, Any] = {}
  if path.exists():
    try:
      previous = json.loads(path.read_text())
    except (OSError, ValueError) as e:
      logging.warning(
        '%s is unreadable (%s); it is kept as %s.bad and a new one is written', path, e, path
      )
      path.replace(f'{path}.bad')
  merged = merge_results(previous, results)
  path.parent.mkdir(parents=True, exist_ok=True)
  paths.write_text_atomic(path, json.dumps(merged, indent=2))
  return merged


def _write_test_scalars(workdir: paths.PathLike, step: int, outcome: dict[str, Any]) -> None:
  import tempfile

  from tensorboardX import SummaryWriter

  # SummaryWriter appends to a local file; a new event file is copied next to the run's others.
  with tempfile.TemporaryDirectory(prefix='arcface_jax_test_scalars_') as local:
    writer = SummaryWriter(local)
    try:
      for key in ('head_top1', 'nearest_centre_top1'):
        if key in outcome:
          writer.add_scalar(f'test/{key}', float(outcome[key]), step)
    finally:
      writer.close()
    paths.copy_local_tree(local, epath.Path(workdir) / 'tensorboard')


def evaluate_run(workdir: paths.PathLike, step: int | None = None, **kwargs: Any) -> dict[str, Any]:
  """Loads `workdir`'s checkpoint (latest or `step`), evaluates it and writes the JSON results."""
  from arcface_jax import reporting
  from arcface_jax.evaluation.verification_evaluator import resolve_bin

  # Every named input is checked before the model is restored, so a typo costs no restore.
  bins = kwargs.get('bins')
  if bins is not None:
    bin_dir = reporting.read_config(workdir).eval.bin_dir
    kwargs['bins'] = [resolve_bin(entry, bin_dir) for entry in bins]
  for flag in ('ijb_dir', 'gallery', 'probe'):
    if kwargs.get(flag) and not paths.is_dir(kwargs[flag]):  # local or gs://
      raise FileNotFoundError(f'--{flag.replace("_dir", "")} {kwargs[flag]} is not a directory')

  # The evaluators check their options (and `test` the split) here, before the restore too.
  chosen = requested_evaluators(reporting.read_config(workdir), workdir=workdir, **kwargs)

  import jax

  from arcface_jax.inference import load_embedder

  embedder = load_embedder(workdir, step)
  results = evaluate_embedder(embedder, chosen)
  path = epath.Path(workdir) / 'eval' / f'step_{embedder.step}.json'
  if jax.process_index() == 0:
    merged = _write_results(path, results)
    kept = sorted(set(merged) - set(results) - {'step'})
    logging.info(
      'results written to %s%s', path, f' (earlier results kept: {", ".join(kept)})' if kept else ''
    )
    if 'test' in results:
      _write_test_scalars(workdir, embedder.step, results['test'])
  results['path'] = os.fspath(path)
  return results


def parse_args(argv: list[str]) -> argparse.Namespace:
  # argparse (with absl's logging flags) rather than absl flags: --bins takes several paths.
  parser = argparse_flags.ArgumentParser(
    description='Evaluate a training run\'s checkpoint.',
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog=__doc__,
  )
  parser.add_argument('--workdir', required=True, help='the training run directory')
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default latest)')
  parser.add_argument(
    '--bins',
    nargs='+',
    default=None,
    help='verification .bin paths or names (default: config.eval of the run)',
  )
  parser.add_argument('--ijb', default=None, help='IJB-B/C root (meta/, loose_crop/)')
  parser.add_argument(
    '--ijb_target',
    default=None,
    choices=('IJBB', 'IJBC'),
    help='which IJB protocol (default config.eval.ijb.target, IJBC)',
  )
  parser.add_argument('--gallery', default=None, help='gallery folder, one sub-folder per id')
  parser.add_argument('--probe', default=None, help='probe folder, one sub-folder per identity')
  parser.add_argument(
    '--test',
    action='store_true',
    help='closed-set top-1 accuracy (classifier head, nearest class centre) on '
    'the run\'s test split (folder runs with data.split_by=image, '
    'data.test_fraction > 0)',
  )
  parser.add_argument(
    '--batch_size', type=int, default=None, help='images per batch (default config.eval.batch_size)'
  )
  return parser.parse_args(argv[1:])


def main(args: argparse.Namespace) -> None:
  from arcface_jax import distributed
  from arcface_jax.config_checks import ConfigError
  from arcface_jax.data.errors import DatasetError

  distributed.initialize_if_launched()
  try:
    evaluate_run(
      args.workdir,
      args.step,
      bins=args.bins,
      ijb_dir=args.ijb,
      ijb_target=args.ijb_target,
      gallery=args.gallery,
      probe=args.probe,
      test=args.test,
      batch_size=args.batch_size,
    )
  except (ConfigError, DatasetError, FileNotFoundError, ValueError) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_args)
