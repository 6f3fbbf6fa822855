"""Training reports: a console line every N steps and TensorBoard event files.

Per-step metrics stay on the device until a report is due, so the loop does not wait on the device
every step; at report time they are fetched in one transfer and averaged. Event records are
written and flushed on the calling thread: a failed write (disk full) is then one exception at the
report that caused it, not a traceback from a background writer thread followed by more.

An event file is appended to, which an object store cannot do: for a `gs://` workdir the events
are written to a local temporary file and the whole file is uploaded to `<workdir>/tensorboard/`
at most every `UPLOAD_EVERY_S` seconds and when the run ends (what tensorboardX's own GCS writer
does on every flush, without the rate limit).
"""

from __future__ import annotations

import json
import logging as logging_std
import os
import shutil
import sys
import tempfile
import time
import traceback as traceback_std
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from arcface_jax import paths, write_errors

UPLOAD_EVERY_S = 60.0


_CHATTY_LIBRARIES = ('/orbax/', '/tensorstore/', '/tensorflow_datasets/', '/grain/')


class _QuietLibraries(logging_std.Filter):
  """Keeps warnings from checkpoint/data libraries but drops their per-save INFO chatter.

  Their errors about a failed write (an OS error code in the text: disk full) are dropped too:
  each background writer logs its own traceback, and the trainer reports the failure once.
  """

  def filter(self, record: logging_std.LogRecord) -> bool:
    if not any(part in record.pathname for part in _CHATTY_LIBRARIES):
      return True
    if record.levelno >= logging_std.ERROR:
      error = record.exc_info[1] if record.exc_info else None
      return (
        write_errors.failed_write(error) is None and 'os_error_code=' not in record.getMessage()
      )
    return record.levelno >= logging_std.WARNING


def _is_late_callback_on_closed_loop(unraisable: Any) -> bool:
  """When one write of an asynchronous checkpoint fails, orbax closes its event loop and the
  other writes' completion callbacks find it closed: harmless, and reported by the trainer."""
  error = unraisable.exc_value
  frames = traceback_std.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
  return (
    isinstance(error, RuntimeError)
    and str(error) == 'Event loop is closed'
    and any(f.name == 'call_soon_threadsafe' for f in frames)
  )


class _QuietUnraisableHook:
  """sys.unraisablehook that drops the closed-loop noise and passes the rest to `previous`."""

  quiets_closed_loops = True  # how quiet_library_logs recognises an installed one

  def __init__(self, previous: Callable[[Any], None]):
    self._previous = previous

  def __call__(self, unraisable: Any) -> None:
    if not _is_late_callback_on_closed_loop(unraisable):
      self._previous(unraisable)


def quiet_library_logs() -> None:
  """Installs the filter on absl's handler (idempotent), and quiets orbax's closed-loop noise."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())
  if not getattr(sys.unraisablehook, 'quiets_closed_loops', False):
    sys.unraisablehook = _QuietUnraisableHook(sys.unraisablehook)


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}:{minutes:02d}:{secs:02d}'


class Reporter:
  """Accumulates step metrics and writes console lines and TensorBoard scalars (process 0)."""

  def __init__(
    self,
    workdir: paths.PathLike,
    *,
    total_steps: int,
    global_batch_size: int,
    log_every: int,
    first_step: int = 0,
  ):
    self.total_steps = total_steps
    self.global_batch_size = global_batch_size
    self.log_every = max(log_every, 1)
    self._pending: list[Mapping[str, Any]] = []
    self._window_start = time.perf_counter()
    self._window_first_step = first_step
    self._writer = None
    self._upload: _EventUpload | None = None
    if jax.process_index() == 0:
      # Imported here: tensorboardX pulls in protobuf, which only process 0 needs.
      from tensorboardX.event_file_writer import EventsWriter

      logdir = epath.Path(workdir) / 'tensorboard'
      logdir.mkdir(parents=True, exist_ok=True)
      if paths.is_remote(logdir):
        self._upload = _EventUpload(logdir)
        self._writer = EventsWriter(os.path.join(self._upload.local_dir, 'events'))
      else:
        self._writer = EventsWriter(os.path.join(logdir, 'events'))
    self.last: dict[str, float] = {}

  def restart_clock(self, step: int) -> None:
    """Excludes compilation or evaluation time from the next images/s figure."""
    self._window_start = time.perf_counter()
    self._window_first_step = step

  def add(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float] | None:
    """Records one step's (device) metrics; returns the averaged report when one is due."""
    self._pending.append(metrics)
    if step % self.log_every and step != self.total_steps:
      return None
    return self.flush(step)

  def flush(self, step: int) -> dict[str, float] | None:
    if not self._pending:
      return None
    fetched = jax.device_get(self._pending)
    self._pending = []
    report = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    elapsed = time.perf_counter() - self._window_start
    steps = step - self._window_first_step
    images_per_s = steps * self.global_batch_size / elapsed if elapsed > 0 else 0.0
    eta = (self.total_steps - step) * elapsed / steps if steps else 0.0
    report['images_per_s'] = images_per_s
    self.restart_clock(step)
    self.last = report
    extras = ' '.join(
      f'{k}={v:.4g}'
      for k, v in sorted(report.items())
      if k not in ('loss', 'learning_rate', 'images_per_s')
    )
    logging.info(
      'step %d/%d loss=%.4f lr=%.5f images/s=%.1f ETA %s %s',
      step,
      self.total_steps,
      report['loss'],
      report['learning_rate'],
      images_per_s,
      format_duration(eta),
      extras,
    )
    self.scalars(step, report, prefix='train/')
    return report

  def scalars(self, step: int, values: Mapping[str, float], prefix: str = '') -> None:
    if self._writer is None:
      return
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.summary import scalar

    writer, self._writer = self._writer, None  # after a failed write, write nothing more
    for name, value in values.items():
      writer.write_event(
        Event(wall_time=time.time(), step=int(step), summary=scalar(prefix + name, float(value)))
      )
    writer.flush()
    if self._upload is not None:
      self._upload.maybe_upload()
    self._writer = writer

  def close(self) -> None:
    if self._writer is not None:
      writer, self._writer = self._writer, None
      writer.close()
      if self._upload is not None:
        self._upload.maybe_upload(force=True)
    if self._upload is not None:
      self._upload.cleanup()
      self._upload = None


class _EventUpload:
  """Mirrors the local event files of a remote workdir into `<workdir>/tensorboard/`."""

  def __init__(self, logdir: epath.Path):
    self.logdir = logdir
    self.local_dir = tempfile.mkdtemp(prefix='arcface_jax_events_')
    self._last = time.monotonic()

  def maybe_upload(self, force: bool = False) -> None:
    if not force and time.monotonic() - self._last < UPLOAD_EVERY_S:
      return
    for name in sorted(os.listdir(self.local_dir)):
      with open(os.path.join(self.local_dir, name), 'rb') as f:
        (self.logdir / name).write_bytes(f.read())
    self._last = time.monotonic()

  def cleanup(self) -> None:
    shutil.rmtree(self.local_dir, ignore_errors=True)


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[prefix + key] = value
  return flat


def config_changes(old: dict, new: dict) -> list[str]:
  """'key: old → new' for every leaf that differs between two config dicts (JSON form)."""
  old_flat, new_flat = _flatten(old), _flatten(new)
  return [
    f'{key}: {old_flat.get(key, "(absent)")!r} → {new_flat.get(key, "(absent)")!r}'
    for key in sorted(set(old_flat) | set(new_flat))
    if old_flat.get(key) != new_flat.get(key)
  ]


def write_config(workdir: paths.PathLike, config: ml_collections.ConfigDict) -> epath.Path:
  """The resolved config, as JSON (machine-readable) next to the run's outputs.

  When the workdir already holds a run whose config differs, the differences are logged: the
  run resumes from checkpoints trained with the old values (longer training is a legitimate
  change; a new loss or initialisation usually wants a fresh --workdir).
  """
  path = epath.Path(workdir) / 'config.json'
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if jax.process_index() == 0:
    if path.exists():
      try:
        changes = config_changes(json.loads(path.read_text()), json.loads(text))
      except (OSError, ValueError):
        changes = ['(the previous config.json is unreadable)']
      if changes:
        logging.warning(
          '%s: this run\'s config differs from the one saved there (%d keys: %s); '
          'checkpoints in it were trained with the old values; use a new --workdir '
          'to start afresh',
          path,
          len(changes),
          '; '.join(changes[:10]),
        )
    path.write_text(text)
  return path


def read_config(workdir: paths.PathLike) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    raise FileNotFoundError(f'{path} not found: is {workdir} the --workdir of a training run?')
  return ml_collections.ConfigDict(json.loads(path.read_text()))
