"""`python -m arcface_jax.faces SUBCOMMAND`: detect, enroll, identify, verify, grid, calibrate.

Exit status: 0 when anything was processed (a folder run skips unreadable files, counts them and
names them in the summary on stderr); 1 when nothing could be (every photo unreadable, or no face
where one is needed); 2 for usage errors, one line on stderr (a missing model or gallery, a
gallery made with another model, no way to set a threshold). Results go to stdout (`--json`: the
formats in `cli_parser.JSON_FORMATS`), progress and summaries to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Sequence

from arcface_jax.faces.cli_parser import UsageError, build_parser

# ------------------------------------------------------------------ commands


def _summary(
  processed: int, skipped: list[tuple[str, str]], not_photos: Sequence[str], what: str
) -> None:
  line = f'{processed} photos {what}'
  if skipped:
    line += f'; {len(skipped)} skipped: ' + '; '.join(f'{p} ({r})' for p, r in skipped[:10])
    line += ' ...' if len(skipped) > 10 else ''
  if not_photos:
    line += f'; {len(not_photos)} files without a photo extension passed over'
  print(line, file=sys.stderr)


def _iterate(photo_list: Any, desc: str):
  from tqdm import tqdm

  return tqdm(
    photo_list.photos, desc=desc, unit='photo', disable=len(photo_list.photos) < 2, file=sys.stderr
  )


def _run_detect(args: argparse.Namespace) -> int:
  from arcface_jax.data.decode import encode_image
  from arcface_jax.faces import images, recognizer

  if args.size < 16:
    raise UsageError(f'--size {args.size}: crops need at least 16 pixels')
  listing = images.list_photos(args.photos)
  detector = None if args.aligned else _detector()
  results, skipped, written = [], [], 0
  for path, relative in _iterate(listing, 'detecting'):
    try:
      rgb = images.load_image(path)
    except images.ImageError as e:
      skipped.append((path, str(e).removeprefix(f'{path}: ')))
      continue
    faces = (
      [recognizer.whole_image_face(rgb, args.size)]
      if args.aligned
      else recognizer.find_faces(rgb, detector, args.size)
    )
    results.append({'photo': path, 'faces': [face.to_json() for face in faces]})
    if args.out:
      folder = os.path.join(args.out, relative)
      os.makedirs(folder, exist_ok=True)
      stem = os.path.splitext(os.path.basename(path))[0]
      for k, face in enumerate(faces):
        with open(os.path.join(folder, f'{stem}_{k}.png'), 'wb') as f:
          f.write(encode_image(face.crop))
        written += 1
  if args.json:
    print(json.dumps(results, indent=2))
  else:
    for result in results:
      print(f'{result["photo"]}: {len(result["faces"])} face(s)')
      for face in result['faces']:
        print(f'  box {face["box"]} score {face["score"]:.3f}')
  found = sum(len(r['faces']) for r in results)
  _summary(
    len(results),
    skipped,
    listing.not_photos,
    f'read, {found} faces found' + (f', {written} crops written to {args.out}' if args.out else ''),
  )
  return 0 if results else 1


def _detector() -> Any:
  from arcface_jax.faces.mtcnn import MTCNN

  return MTCNN()


def _recognizer(args: argparse.Namespace) -> Any:
  from arcface_jax.faces import FaceRecognizer

  kwargs = {'far': args.far} if getattr(args, 'far', None) is not None else {}
  recognizer = FaceRecognizer.load(args.model, **kwargs)
  print(f'model {recognizer.model.describe()}', file=sys.stderr)
  if not recognizer.info.detect_faces and not args.aligned:
    print(
      'this model was trained on crops that are not photos of faces, so its inputs are taken '
      'as aligned crops (as with --aligned)',
      file=sys.stderr,
    )
  return recognizer


def _run_enroll(args: argparse.Namespace) -> int:
  from arcface_jax.faces import Gallery, thresholds

  recognizer = _recognizer(args)
  fpir = thresholds.DEFAULT_FPIR if args.fpir is None else args.fpir
  gallery = Gallery.enroll(
    recognizer,
    args.photos,
    calibrate=args.calibrate,
    aligned=args.aligned or None,
    fpir=fpir,
    progress=True,
  )
  gallery.save(args.out)
  _summary(
    len(gallery.embeddings),
    gallery.skipped,
    (),
    f'enrolled ({len(gallery.names)} people) into {args.out}',
  )
  if gallery.threshold is None:
    print(
      'no calibration photos: identify will need --threshold T (or enrol again with '
      '--calibrate DIR)',
      file=sys.stderr,
    )
  else:
    print(f'"unknown" {gallery.threshold.describe()}', file=sys.stderr)
  return 0


def _run_identify(args: argparse.Namespace) -> int:
  from arcface_jax.faces import Gallery, images

  gallery = Gallery.load(args.gallery)
  recognizer = _recognizer(args)
  gallery.check_model(recognizer.info, args.model)
  if args.threshold is None:
    gallery.threshold_or_error()
  listing = images.list_photos(args.photos)
  results, skipped, used = [], [], None
  for path, _ in _iterate(listing, 'identifying'):
    try:
      answers = recognizer.identify(
        path, gallery, aligned=args.aligned or None, threshold=args.threshold
      )
    except images.ImageError as e:
      skipped.append((path, str(e).removeprefix(f'{path}: ')))
      continue
    used = answers[0].threshold if answers else used
    results.append({'photo': path, 'faces': [a.to_json() for a in answers]})
  if args.json:
    print(json.dumps(results, indent=2))
  else:
    for result in results:
      print(f'{result["photo"]}: ' + ('no face' if not result['faces'] else ''))
      for face in result['faces']:
        second = (
          f'; runner-up {face["runner_up"]} {face["runner_up_score"]:.3f}'
          if face['runner_up']
          else ''
        )
        best = '' if face['name'] == face['best_match'] else f'best {face["best_match"]} '
        print(f'  {face["name"]} ({best}score {face["score"]:.3f}{second}) at {face["box"]}')
  if used is not None:
    print(f'"unknown" {used.describe()}', file=sys.stderr)
  _summary(len(results), skipped, listing.not_photos, 'identified')
  return 0 if results else 1


def _run_verify(args: argparse.Namespace) -> int:
  recognizer = _recognizer(args)
  if args.calibrate:
    recognizer.calibrate(args.calibrate, aligned=args.aligned or None, progress=True)
  answer = recognizer.verify(
    args.photo_a, args.photo_b, aligned=args.aligned or None, threshold=args.threshold
  )
  if args.json:
    print(json.dumps(answer.to_json(), indent=2))
  else:
    print(f'{"same person" if answer.same else "different people"}: score {answer.score:.4f}')
  print(answer.threshold.describe(), file=sys.stderr)
  return 0


def _run_grid(args: argparse.Namespace) -> int:
  from arcface_jax.faces import Gallery, grid

  recognizer = _recognizer(args)
  gallery = Gallery.load(args.gallery) if args.gallery else None
  accuracy = grid.write_grid(
    recognizer, args.photos, args.out, gallery=gallery, aligned=args.aligned or None, seed=args.seed
  )
  print(f'wrote {args.out}: {accuracy.describe()}', file=sys.stderr)
  return 0


def _log_plainly() -> None:
  """Progress lines (what is compiling, calibrating) on stderr as bare messages."""
  from absl import flags
  from absl import logging as absl_logging

  from arcface_jax import reporting

  if not flags.FLAGS.is_parsed():  # argparse parsed the command line; absl has no flags here
    flags.FLAGS.mark_as_parsed()
  logging.getLogger('jax').setLevel(logging.WARNING)  # e.g. "Unable to initialize backend"
  absl_logging.use_absl_handler()
  absl_logging.get_absl_handler().setFormatter(logging.Formatter('%(message)s'))
  absl_logging.set_verbosity(absl_logging.INFO)
  reporting.quiet_library_logs()


def _run_calibrate(args: argparse.Namespace) -> int:
  from arcface_jax.faces import CalibrationError, thresholds

  recognizer = _recognizer(args)
  calibration = recognizer.calibrate(args.photos, aligned=args.aligned or None, progress=True)
  path = thresholds.kept_path(recognizer.model)
  thresholds.write_calibration(path, calibration, recognizer.info.fingerprint)
  people = len(set(calibration.identities))
  print(f'kept {len(calibration)} faces of {people} people in {path}', file=sys.stderr)
  try:
    print(f'verify: {recognizer.verify_threshold().describe()}', file=sys.stderr)
  except CalibrationError as e:  # one person: no impostor pairs, identify's FPIR still works
    print(f'verify: {e}', file=sys.stderr)
  return 0


RUNNERS = {
  'detect': _run_detect,
  'enroll': _run_enroll,
  'identify': _run_identify,
  'verify': _run_verify,
  'grid': _run_grid,
  'calibrate': _run_calibrate,
}


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  from arcface_jax.faces import compilation

  compilation.enable_persistent_cache()  # before anything compiles: a second run starts fast
  _log_plainly()
  from arcface_jax.faces import CalibrationError, GalleryError, ImageError, ModelError, NoFaceError

  prog = f'python -m arcface_jax.faces {args.command}'
  try:
    return RUNNERS[args.command](args)
  except (UsageError, ModelError, GalleryError, CalibrationError) as e:
    print(f'{prog}: error: {e}', file=sys.stderr)
    return 2
  except ImageError as e:  # a photo named on the command line (verify) or a missing path
    print(f'{prog}: error: {e}', file=sys.stderr)
    return 2 if 'no such file' in str(e) else 1
  except NoFaceError as e:
    print(f'{prog}: error: {e}', file=sys.stderr)
    return 1
