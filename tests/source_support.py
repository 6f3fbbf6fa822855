"""Shared by the pipeline tests: a source's `read_many` answered from its single reads."""

from arcface_jax.data.errors import CorruptSampleError


def read_each(source, indices):
  """`source[i]` for each index, an unreadable one as its CorruptSampleError (as `read_many`)."""
  out = []
  for i in indices:
    try:
      out.append(source[i])
    except CorruptSampleError as e:
      out.append(e)
  return out
