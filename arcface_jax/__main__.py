"""`python -m arcface_jax`: lists the commands, one line each (see arcface_jax.commands)."""

from arcface_jax.commands import listing

if __name__ == '__main__':
  print(listing())
