"""`python -m arcface_jax.app`: serve the demo page (see `arcface_jax.app`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

EPILOG = """examples:
  python -m arcface_jax.app --model runs/mine --gallery people.gallery
  python -m arcface_jax.app --model runs/mine --model mobile.jax_export
  python -m arcface_jax.app            # the embedded demo, as `make app` serves it

Without --model the page serves the embedded demo: the model in --demo-workdir (trained first on
the embedded synthetic identities if missing, a few minutes on a CPU) and a gallery of held-out
identities; its uploads are aligned crops. Without --gallery each model keeps its gallery beside
it (<workdir>/people.gallery or <export>.gallery), created at the first enrolment. The page is
served on 127.0.0.1 only unless --host says otherwise; it is never shared through a public link.
"""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog='python -m arcface_jax.app',
    epilog=EPILOG,
    formatter_class=argparse.RawDescriptionHelpFormatter,
    description='A web page (Gradio) to try face models: identify the people in a photo from '
    'a gallery ("unknown" for strangers), verify two photos, enrol people, and map the '
    'gallery.',
  )
  parser.add_argument(
    '--model',
    action='append',
    default=[],
    metavar='M',
    help='a training workdir or an exported .jax_export model (with its .json '
    'beside it); repeat for more models in the dropdown',
  )
  parser.add_argument(
    '--gallery',
    metavar='G',
    help='the gallery file shared by every model '
    '(only the model it was made with can use it); created at the first '
    'enrolment',
  )
  parser.add_argument(
    '--host', default='127.0.0.1', help='address to serve on (default 127.0.0.1: this machine only)'
  )
  parser.add_argument('--port', type=int, default=7860, help='port (default 7860)')
  parser.add_argument(
    '--demo-workdir',
    default='runs/demo',
    metavar='W',
    help='where the embedded demo model lives (without --model)',
  )
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  for path in args.model:
    if not os.path.exists(path):
      print(f'error: --model {path}: no such workdir or file', file=sys.stderr)
      return 2
  if args.gallery and os.path.isdir(args.gallery):
    print(f'error: --gallery {args.gallery} is a folder; give a file name', file=sys.stderr)
    return 2
  if not 0 < args.port < 65536:
    print(f'error: --port {args.port}: expected 1 .. 65535', file=sys.stderr)
    return 2
  from arcface_jax.faces import cli as faces_cli
  from arcface_jax.faces import compilation

  compilation.enable_persistent_cache()  # before anything compiles: a second start is quick
  # The faces commands' console: one bare line before each compile and calibration, the
  # libraries' chatter (orbax, HTTP requests) kept at warnings.
  faces_cli._log_plainly()
  logging.getLogger('httpx').setLevel(logging.WARNING)  # Gradio's own requests, one per start
  from arcface_jax.app import page as page_lib
  from arcface_jax.app.service import PageProblem, PageService, gallery_beside

  models, gallery = args.model, args.gallery
  if not models:  # the embedded demo
    from arcface_jax.app import default

    default.ensure_trained(args.demo_workdir)
    models, gallery = [args.demo_workdir], gallery or gallery_beside(args.demo_workdir)
  service = PageService(models, gallery)
  print(f'loading {models[0]}', flush=True)
  try:
    recognizer = service.recognizer(models[0])
  except PageProblem as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  examples, allowed = None, []
  if not args.model:
    examples = default.prepare(recognizer, args.demo_workdir, service.gallery_path(models[0]))
    allowed.append(os.path.join(args.demo_workdir, 'app_examples'))
  if args.host not in ('127.0.0.1', 'localhost', '::1'):
    print(
      f'warning: serving on {args.host}: anyone who can reach this address can use the page, '
      'enrol people and see the gallery',
      file=sys.stderr,
    )
  page = page_lib.build_page(service, examples)
  try:
    page_lib.launch(page, host=args.host, port=args.port, allowed_paths=allowed)
  except OSError as e:
    print(
      f'error: cannot serve on {args.host}:{args.port} ({e}); pass another --port', file=sys.stderr
    )
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
