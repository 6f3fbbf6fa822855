"""Evaluates a training run's checkpoint: verification sets, IJB-B/C 1:1, 1:N identification.

  python -m arcface_jax.evaluate --workdir runs/ms1m [--step 180000] \
      [--bins data/lfw.bin data/cfp_fp.bin ...] [--ijb data/IJBC --ijb_target IJBC] \
      [--gallery faces/gallery --probe faces/probe] [--test] [--batch_size 256]

With no evaluation named, the verification sets the run's config evaluates during training
(config.eval) are used; naming any (--bins, --ijb, --gallery/--probe, --test) runs only those.
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

import numpy as np
from absl import app, logging
from absl.flags import argparse_flags
from etils import epath

from arcface_jax import paths


def _verification(embedder: Any, bins: Sequence[str] | None, batch_size: int,
                  nfolds: int) -> dict[str, dict[str, float]]:
  from arcface_jax.data.verification_bin import load_bin
  from arcface_jax.evaluation import evaluators, verification
  from arcface_jax.evaluation.extract import extract_embeddings

  config, size = embedder.config, embedder.image_size
  if bins is None:
    sets = evaluators.load_sets(config)
  else:
    sets = []
    for entry in bins:
      path = evaluators.resolve_bin(entry, config.eval.bin_dir)
      images, issame = load_bin(path, image_size=(size, size))
      sets.append((os.path.splitext(os.path.basename(path))[0], images, issame))
  results = {}
  for name, images, issame in sets:
    embeddings, xnorm = extract_embeddings(embedder.apply, images, batch_size=batch_size,
                                           mean=embedder.mean, std=embedder.std,
                                           mesh=embedder.mesh)
    scores = verification.evaluate(embeddings, issame, nfolds=nfolds)
    logging.info('[%s][%d] XNorm: %f', name, embedder.step, xnorm)
    logging.info('[%s][%d] Accuracy-Flip: %1.5f+-%1.5f', name, embedder.step, scores['accuracy'],
                 scores['std'])
    logging.info('[%s][%d] TAR@FAR=%g: %1.5f+-%1.5f (threshold %.2f)', name, embedder.step,
                 scores['far_target'], scores['tar_at_far'], scores['tar_at_far_std'],
                 scores['threshold'])
    results[name] = {'accuracy': scores['accuracy'], 'std': scores['std'],
                     'threshold': scores['threshold'], 'tar_at_far': scores['tar_at_far'],
                     'tar_at_far_std': scores['tar_at_far_std'],
                     'far_target': scores['far_target'], 'xnorm': xnorm,
                     'pairs': int(len(issame))}
  return results


def evaluate_embedder(embedder: Any, *, bins: Sequence[str] | None = None,
                      ijb_dir: str | None = None, ijb_target: str = 'IJBC',
                      gallery: str | None = None, probe: str | None = None, test: bool = False,
                      workdir: paths.PathLike | None = None, batch_size: int | None = None,
                      out_dir: paths.PathLike | None = None) -> dict[str, Any]:
  """Every requested evaluation of one embedder (see arcface_jax.inference.Embedder).

  The config's verification sets run only when no evaluation is named (no bins, IJB, gallery or
  test): asking for one thing does not pay for the others. `test` needs the run's `workdir` (the
  classifier head is read from its checkpoint).
  """
  from arcface_jax.evaluation import closed_set, identification, ijb
  from arcface_jax.evaluation.extract import extract_embeddings

  config = embedder.config
  batch_size = batch_size or config.eval.batch_size

  def embed(images: np.ndarray, flip: bool = True) -> np.ndarray:
    return extract_embeddings(embedder.apply, images, batch_size=batch_size, mean=embedder.mean,
                              std=embedder.std, flip=flip, mesh=embedder.mesh)[0]

  results: dict[str, Any] = {'step': int(embedder.step)}
  if bins is not None or not (ijb_dir or gallery or probe or test):
    results['verification'] = _verification(embedder, bins, batch_size, config.eval.nfolds)
  if ijb_dir:
    ijb_out = epath.Path(out_dir) / 'ijb' if out_dir else None
    outcome = ijb.evaluate_ijb(embed, ijb_dir, ijb_target, out_dir=ijb_out,
                               image_size=embedder.image_size, label=f'step {embedder.step}')
    for line in ijb.format_table(outcome['tar_at_far'], outcome['target']).splitlines():
      logging.info('[%s][%d] %s', outcome['target'], embedder.step, line)
    outcome['tar_at_far'] = {f'{k:g}': v for k, v in outcome['tar_at_far'].items()}
    results['ijb'] = outcome
  if gallery or probe:
    if not (gallery and probe):
      raise ValueError('identification needs both --gallery and --probe')
    size = embedder.image_size
    gallery_images, gallery_labels = identification.read_identity_folder(gallery, size)
    probe_images, probe_labels = identification.read_identity_folder(probe, size)
    outcome = identification.evaluate_identification(
        embed(gallery_images), gallery_labels, embed(probe_images), probe_labels)
    logging.info('[identification][%d] rank-1 %.5f rank-5 %.5f (%d mated, %d non-mated probes, '
                 '%d identities)', embedder.step, outcome['rank1'], outcome['rank5'],
                 outcome['num_mated'], outcome['num_nonmated'], outcome['num_identities'])
    for far, entry in outcome.get('dir_at_far', {}).items():
      logging.info('[identification][%d] DIR@FAR=%g: %.5f', embedder.step, far, entry['dir'])
    if 'dir_at_far' in outcome:
      outcome['dir_at_far'] = {f'{k:g}': v for k, v in outcome['dir_at_far'].items()}
    results['identification'] = outcome
  if test:
    if workdir is None:
      raise ValueError('--test reads the classifier head from a training run: pass its --workdir')
    outcome = closed_set.evaluate_test_split(lambda images: embed(images, flip=False), config,
                                             workdir, embedder.step)
    logging.info('[test][%d] top-1 classifier head %s, nearest class centre %.5f (%d photos, %d '
                 'classes)', embedder.step,
                 f'{outcome["head_top1"]:.5f}' if 'head_top1' in outcome else 'n/a (no head)',
                 outcome['nearest_centre_top1'], outcome['images'], outcome['classes'])
    results['test'] = outcome
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
      logging.warning('%s is unreadable (%s); it is kept as %s.bad and a new one is written',
                      path, e, path)
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
  from arcface_jax.evaluation import evaluators

  # Every named input is checked before the model is restored, so a typo costs no restore.
  bins = kwargs.get('bins')
  if bins is not None:
    bin_dir = reporting.read_config(workdir).eval.bin_dir
    kwargs['bins'] = [evaluators.resolve_bin(entry, bin_dir) for entry in bins]
  for flag in ('ijb_dir', 'gallery', 'probe'):
    if kwargs.get(flag) and not os.path.isdir(kwargs[flag]):
      raise FileNotFoundError(f'--{flag.replace("_dir", "")} {kwargs[flag]} is not a directory')

  if kwargs.get('test'):
    from arcface_jax.evaluation import closed_set
    closed_set.require_test_split(reporting.read_config(workdir))

  import jax
  from arcface_jax.inference import load_embedder

  embedder = load_embedder(workdir, step)
  out_dir = epath.Path(workdir) / 'eval' / f'step_{embedder.step}'
  results = evaluate_embedder(embedder, out_dir=out_dir, workdir=workdir, **kwargs)
  path = epath.Path(workdir) / 'eval' / f'step_{embedder.step}.json'
  if jax.process_index() == 0:
    merged = _write_results(path, results)
    kept = sorted(set(merged) - set(results) - {'step'})
    logging.info('results written to %s%s', path,
                 f' (earlier results kept: {", ".join(kept)})' if kept else '')
    if 'test' in results:
      _write_test_scalars(workdir, embedder.step, results['test'])
  results['path'] = os.fspath(path)
  return results


def parse_args(argv: list[str]) -> argparse.Namespace:
  # argparse (with absl's logging flags) rather than absl flags: --bins takes several paths.
  parser = argparse_flags.ArgumentParser(
      description='Evaluate a training run\'s checkpoint.',
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument('--workdir', required=True, help='the training run directory')
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default latest)')
  parser.add_argument('--bins', nargs='+', default=None,
                      help='verification .bin paths or names (default: config.eval of the run)')
  parser.add_argument('--ijb', default=None, help='IJB-B/C root (meta/, loose_crop/)')
  parser.add_argument('--ijb_target', default='IJBC', choices=('IJBB', 'IJBC'))
  parser.add_argument('--gallery', default=None, help='gallery folder, one sub-folder per id')
  parser.add_argument('--probe', default=None, help='probe folder, one sub-folder per identity')
  parser.add_argument('--test', action='store_true',
                      help='closed-set top-1 accuracy (classifier head, nearest class centre) on '
                      'the run\'s test split (folder runs with data.split_by=image, '
                      'data.test_fraction > 0)')
  parser.add_argument('--batch_size', type=int, default=None,
                      help='images per batch (default config.eval.batch_size)')
  return parser.parse_args(argv[1:])


def main(args: argparse.Namespace) -> None:
  from arcface_jax import distributed
  from arcface_jax.data.errors import DatasetError

  distributed.initialize_if_launched()
  try:
    evaluate_run(args.workdir, args.step, bins=args.bins, ijb_dir=args.ijb,
                 ijb_target=args.ijb_target, gallery=args.gallery, probe=args.probe,
                 test=args.test, batch_size=args.batch_size)
  except (DatasetError, FileNotFoundError, ValueError) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_args)
