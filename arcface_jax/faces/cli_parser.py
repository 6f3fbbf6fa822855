"""The command line of `python -m arcface_jax.faces`: each subcommand's options, help and example.

`arcface_jax.faces.cli` runs the commands; this module only says what they accept.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import NoReturn

EXAMPLES = {
  'detect': 'python -m arcface_jax.faces detect raw_photos/ --out my_faces/\n'
  '  python -m arcface_jax.faces detect party.jpg --json',
  'enroll': 'python -m arcface_jax.faces enroll --model runs/mine --photos my_faces/ '
  '--out people.gallery',
  'identify': 'python -m arcface_jax.faces identify --model runs/mine --gallery people.gallery '
  'party.jpg',
  'verify': 'python -m arcface_jax.faces verify --model runs/mine a.jpg b.jpg --json',
  'grid': 'python -m arcface_jax.faces grid --model runs/mine --photos test_faces/ --out grid.png',
  'calibrate': 'python -m arcface_jax.faces calibrate --model backbone.jax_export '
  '--photos strangers/',
}
HELP = {
  'detect': 'Find faces in photos: box, score and 5 landmarks per face; --out writes aligned '
  'crops <stem>_<k>.png, keeping the folder layout (one sub-folder per person stays '
  'one, ready to train on). Folders are read recursively; unreadable files are '
  'skipped and named.',
  'enroll': 'Build a gallery from a folder with one sub-folder of photos per person (the '
  'largest face of each photo); the "unknown" threshold is calibrated on the '
  "model's held-out people or on --calibrate photos of strangers.",
  'identify': 'Name every face in photos from a gallery, or "unknown", with its cosine score, '
  'the runner-up and the threshold used (at its FPIR).',
  'verify': 'Say whether the largest faces of two photos are the same person: '
  '{"same": bool, "score": s, "threshold": t} at a calibrated FAR.',
  'grid': 'A 3×3 figure of photos from a folder (one sub-folder per person) with true and '
  'predicted names, wrong ones in red, and the accuracy over the whole folder.',
  'calibrate': 'Keep a calibration with the model: photos of people it was neither trained on '
  'nor will enrol (one sub-folder per person), embedded and stored beside an export '
  '(<file>.calibration.npz) or in a workdir; verify and enroll then set their thresholds '
  'on them (FAR, FPIR) instead of asking for --threshold.',
}
JSON_FORMATS = {
  'detect': '[{"photo": P, "faces": [{"box": [x1,y1,x2,y2], "score": s, "landmarks": [[x,y]×5]}]}]',
  'identify': '[{"photo": P, "faces": [{"box": [...], "name": N, "score": s, '
  '"runner_up": N2, "runner_up_score": s2, "threshold": t, "fpir": f, ...}]}]',
  'verify': '{"same": bool, "score": s, "threshold": t, "far": f, "threshold_kind": k}',
}


class UsageError(Exception):
  """Exit 2 with one line."""


class _Parser(argparse.ArgumentParser):
  def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
    self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def build_parser() -> argparse.ArgumentParser:
  """The parser of every subcommand (argparse; usage errors exit 2 with one line)."""
  parser = _Parser(
    prog='python -m arcface_jax.faces',
    description='Faces in, names out: detect and align faces in photos, enrol '
    'people in a gallery, identify and verify.',
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog='examples:\n  ' + '\n  '.join(EXAMPLES.values()),
  )
  commands = parser.add_subparsers(dest='command', required=True, parser_class=_Parser)

  def command(name: str) -> argparse.ArgumentParser:
    epilog = f'example:\n  {EXAMPLES[name]}'
    if name in JSON_FORMATS:
      epilog += f'\n\n--json prints:\n  {JSON_FORMATS[name]}'
    sub = commands.add_parser(
      name,
      help=HELP[name],
      description=textwrap.fill(HELP[name], 79),
      epilog=epilog,
      formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_argument(
      '--aligned',
      action='store_true',
      help='the photos are already aligned face crops (no detection)',
    )
    return sub

  def model_argument(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
      '--model',
      required=True,
      help='a training workdir (latest checkpoint) or an exported .jax_export',
    )

  detect = command('detect')
  detect.add_argument('photos', nargs='+', metavar='PHOTO|DIR')
  detect.add_argument('--out', help='write aligned crops <stem>_<k>.png here')
  detect.add_argument('--size', type=int, default=112, help='crop side in pixels (default 112)')
  detect.add_argument('--json', action='store_true', help='print the faces as JSON')

  enroll = command('enroll')
  model_argument(enroll)
  enroll.add_argument('--photos', required=True, help='one sub-folder of photos per person')
  enroll.add_argument('--out', required=True, help='the gallery file to write')
  enroll.add_argument(
    '--calibrate',
    metavar='DIR',
    help='photos of other people, neither trained on nor enrolled, to set '
    "the threshold (default: the model's held-out people)",
  )
  enroll.add_argument(
    '--fpir',
    type=float,
    default=None,
    help='false-positive identification rate of the threshold (default 0.01)',
  )

  identify = command('identify')
  model_argument(identify)
  identify.add_argument('--gallery', required=True, help='a gallery written by `enroll`')
  identify.add_argument('photos', nargs='+', metavar='PHOTO|DIR')
  identify.add_argument('--json', action='store_true', help='print the answers as JSON')
  identify.add_argument(
    '--threshold', type=float, help="a cosine threshold instead of the gallery's calibrated one"
  )

  verify = command('verify')
  model_argument(verify)
  verify.add_argument('photo_a', metavar='PHOTO_A')
  verify.add_argument('photo_b', metavar='PHOTO_B')
  verify.add_argument('--json', action='store_true', help='print the answer as JSON')
  verify.add_argument(
    '--threshold', type=float, help='a cosine threshold instead of the calibrated one'
  )
  verify.add_argument(
    '--calibrate',
    metavar='DIR',
    help='photos of strangers, one sub-folder per person, to calibrate on',
  )
  verify.add_argument(
    '--far', type=float, default=None, help='false-accept rate of the threshold (default 0.001)'
  )

  grid = command('grid')
  model_argument(grid)
  grid.add_argument('--photos', required=True, help='test photos, one sub-folder per person')
  grid.add_argument('--out', required=True, help='the figure to write (.png)')
  grid.add_argument(
    '--gallery',
    help='name faces from this gallery (default: every other photo of --photos, leave-one-out)',
  )
  grid.add_argument('--seed', type=int, default=0, help='which 9 photos are shown')

  calibrate = command('calibrate')
  model_argument(calibrate)
  calibrate.add_argument(
    '--photos', required=True, help='photos of strangers, one sub-folder per person'
  )
  return parser
