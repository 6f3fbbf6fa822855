"""`python -m arcface_jax.faces`: see `arcface_jax.faces.cli`."""

import sys

from arcface_jax.faces.cli import main

if __name__ == '__main__':
  sys.exit(main())
