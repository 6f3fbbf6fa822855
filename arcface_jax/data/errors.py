"""Errors raised by data sources, shared by every source and the input pipeline.

A long run must survive a few bad samples, but not a bad dataset: sources raise
`CorruptSampleError` for one unreadable sample (the pipeline skips and counts it) and
`DatasetError` for a file or directory that is unusable as a whole (the run stops with that one
message, which names the path and what to do).
"""

from __future__ import annotations

from typing import Any


class DatasetError(ValueError):
  """A dataset file or directory is unusable as a whole; the message names it and the fix."""


class CorruptSampleError(Exception):
  """One sample cannot be read or decoded; `key` identifies it (record key or file path)."""

  def __init__(self, key: object, reason: str):
    super().__init__(f'{key}: {reason}')
    self.key = key
    self.reason = reason


def read_or_error(source: Any, index: int) -> tuple[Any, int] | CorruptSampleError:
  """`source[index]` as (image, int label), or its CorruptSampleError returned rather than
  raised: the element type of a source's `read_many` list."""
  try:
    image, label = source[index]
  except CorruptSampleError as e:
    return e
  return image, int(label)
