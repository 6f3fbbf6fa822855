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
      prog='python -m arcface_jax.app', epilog=EPILOG,
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description='A web page (Gradio) to try face models: identify the people in a photo from '
      'a gallery ("unknown" for strangers), verify two photos, enrol people, and map the '
      'gallery.')
  parser.add_argument('--model', action='append', default=[], metavar='M',
                      help='a training workdir or an exported .jax_export model (with its .json '
                      'beside it); repeat for more models in the dropdown')
  parser.add_argument('--gallery', metavar='G', help='the gallery file shared by every model '
                      '(only the model it was made with can use it); created at the first '
                      'enrolment')
  parser.add_argument('--host', default='127.0.0.1',
                      help='address to serve on (default 127.0.0.1: this machine only)')
  parser.add_argument('--port', type=int, default=7860, help='port (default 7860)')
  parser.add_argument('--demo-workdir', default='runs/demo', metavar='W',
                      help='where the embedded demo model lives (without --model)')
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  # This package's progress lines (loading, compiling, calibrating) on the console; the
  # libraries' chatter (orbax, HTTP requests) stays at warnings.
  handler = logging.StreamHandler()
  handler.setFormatter(logging.Formatter('%(message)s'))
  ours = logging.getLogger('arcface_jax')
  ours.addHandler(handler)
  ours.setLevel(logging.INFO)
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
  from arcface_jax.app import page as page_lib
  from arcface_jax.app.service import PageProblem, PageService
  allowed: list[str] = []
  examples = None
  models = args.model
  if not models:
    from arcface_jax.app import default
    model, gallery, examples = default.prepare(args.demo_workdir, args.gallery)
    models, args.gallery = [model], gallery
    allowed.append(os.path.join(model, 'app_examples'))
  service = PageService(models, args.gallery)
  print(f'loading {models[0]} (the first use compiles the model: seconds)', flush=True)
  try:
    service.recognizer(models[0])
  except PageProblem as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.host not in ('127.0.0.1', 'localhost', '::1'):
    print(f'warning: serving on {args.host}: anyone who can reach this address can use the page, '
          'enrol people and see the gallery', file=sys.stderr)
  page = page_lib.build_page(service, examples)
  try:
    page_lib.launch(page, host=args.host, port=args.port, allowed_paths=allowed)
  except OSError as e:
    print(f'error: cannot serve on {args.host}:{args.port} ({e}); pass another --port',
          file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
