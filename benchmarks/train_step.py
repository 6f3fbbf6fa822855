"""Train-step throughput, and the training loop's overhead over the bare jitted step.

  .venv/bin/python benchmarks/train_step.py [--config configs/synthetic.py] [--window 20]
      [--windows 12] [--warmup 20] [--skip_decoding]

One `train_and_evaluate` run (input pipeline, host-to-device transfer, metric reports every
`window` steps, divergence checks, checkpoint policy) whose step callback, at each report (where
the loop has just synced with the device), times `window` steps of the bare jitted step: the same
step function, compiled alone, over uint8 batches already on the device, timed to its last result.
The loop's window is the time from the end of one bare window to the next report. Bare and loop
windows thus alternate every few seconds, so a shared machine's changing load falls on both; the
overhead is the median of the per-window ratios loop / bare − 1. Evaluation and periodic
checkpoints are off. The last line is `RESULT loop_overhead=<fraction> ...`.

Two runs share the bare step: the config's pipeline as users run it (`loop_overhead`; the demo's
decoded images are cached after the first epoch, `config.data.cache_mib`), then one that decodes
every batch (`loop_overhead_decoding`), as a dataset too large for that cache does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface_jax import compiler_options, losses, models, optim, parallel, seeding, trainer  # noqa: E402
from arcface_jax.config_files import load_config  # noqa: E402
from arcface_jax.data import pipeline, sources  # noqa: E402
from arcface_jax.train_state import create_train_state  # noqa: E402
from arcface_jax.train_step import make_train_step  # noqa: E402


class BareStep:
  """The trainer's step function over batches already on the device (uint8, normalised inside)."""

  def __init__(self, config, mesh, host_batches):
    num_classes = config.data.num_classes or sources.get_train_source(config.data).num_classes
    model = models.from_config(config)
    objective = losses.from_config(config, num_classes=num_classes, mesh=mesh)
    tx, schedule = optim.from_config(config)
    replicated = parallel.replicated(mesh)
    keys = seeding.keys(config)  # the trainer's keys: the same initial weights
    self.state = jax.jit(
      lambda keys: create_train_state(keys, model, objective, tx, config.data.image_size),
      out_shardings=replicated,
    )(keys)
    self.step = jax.jit(
      make_train_step(
        model,
        objective,
        tx,
        schedule,
        keys['dropout'],
        image_mean=config.data.mean,
        image_std=config.data.std,
      ),
      in_shardings=(replicated, parallel.batch_sharding(mesh)),
      out_shardings=(replicated, replicated),
      donate_argnums=(0,),
      compiler_options=compiler_options.for_devices(mesh.devices.flat),
    )
    self.batches = [parallel.global_batch(mesh, b) for b in host_batches]
    assert self.batches[0]['image'].dtype == 'uint8'
    self.seconds_per_step(3)  # compile and warm up

  def seconds_per_step(self, steps: int) -> float:
    start = time.perf_counter()
    for i in range(steps):
      self.state, metrics = self.step(self.state, self.batches[i % len(self.batches)])
    jax.block_until_ready((self.state, metrics))
    return (time.perf_counter() - start) / steps


def measure(
  config, mesh, bare: BareStep, *, window: int, windows: int, warmup: int
) -> tuple[list[float], list[float]]:
  """(loop, bare) seconds per step of each window, alternating inside one training run."""
  if warmup % window:
    raise SystemExit(f'--warmup {warmup} must be a multiple of --window {window}')
  config.train.num_steps = warmup + windows * window
  config.train.log_every = window  # the reporter syncs with the device at every window's end
  loop_s: list[float] = []
  bare_s: list[float] = []
  window_start = None

  def at_step(step: int) -> None:
    nonlocal window_start
    if step % window or step < warmup:
      return
    if window_start is not None:
      loop_s.append((time.perf_counter() - window_start) / window)
    if step < config.train.num_steps:
      bare_s.append(bare.seconds_per_step(window))
      window_start = time.perf_counter()

  with tempfile.TemporaryDirectory() as workdir:
    trainer.train_and_evaluate(config, workdir, mesh=mesh, step_callback=at_step)
  return loop_s, bare_s[: len(loop_s)]


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--config', default='configs/synthetic.py')
  parser.add_argument('--window', type=int, default=20, help='steps per timed window')
  parser.add_argument('--windows', type=int, default=12, help='timed windows of each kind')
  parser.add_argument('--warmup', type=int, default=20, help='loop steps before the first window')
  parser.add_argument(
    '--skip_decoding', action='store_true', help='time only the default (cached) pipeline'
  )
  args = parser.parse_args()
  config = load_config(args.config)
  config.eval.every_steps = 0
  config.eval.synthetic_pairs = 0
  config.eval.bins = ()
  config.train.checkpoint_every = 0
  mesh = parallel.make_mesh()
  loader = pipeline.TrainLoader(
    sources.get_train_source(config.data),
    global_batch_size=config.train.batch_size,
    seed=seeding.integer_seed(seeding.keys(config)['data']),
    image_size=config.data.image_size,
    flip=config.data.flip,
  )
  bare = BareStep(config, mesh, [loader.batch(step) for step in range(16)])
  batch = config.train.batch_size
  print(
    f'config {args.config}: model {config.model.name}, {config.data.image_size}px, '
    f'global batch {batch}, {jax.device_count()} {jax.devices()[0].platform} device(s), '
    f'jax {jax.__version__}, windows of {args.window} steps'
  )
  # The variants of the module docstring: the config as users run it, then decoding every batch.
  variants = [('as configured', config.data.cache_mib, 'loop_overhead')]
  if not args.skip_decoding:
    variants.append(('decoding every batch', 0, 'loop_overhead_decoding'))
  results: dict[str, str] = {}
  for name, cache_mib, key in variants:
    config.data.cache_mib = cache_mib
    loop_s, bare_s = measure(
      config, mesh, bare, window=args.window, windows=args.windows, warmup=args.warmup
    )
    ratios = [loop_time / bare_time for loop_time, bare_time in zip(loop_s, bare_s)]
    overhead = statistics.median(ratios) - 1
    bare_med, loop_med = statistics.median(bare_s), statistics.median(loop_s)
    print(f'--- pipeline {name} (config.data.cache_mib={cache_mib}), {len(ratios)} windows')
    print(
      f'bare jitted step : {bare_med * 1e3:8.1f} ms/step  {batch / bare_med:9.1f} images/s '
      f'(windows: {", ".join(f"{b * 1e3:.1f}" for b in bare_s)})'
    )
    print(
      f'training loop    : {loop_med * 1e3:8.1f} ms/step  {batch / loop_med:9.1f} images/s '
      f'(windows: {", ".join(f"{s * 1e3:.1f}" for s in loop_s)})'
    )
    print(f'loop / bare per window: {", ".join(f"{r:.3f}" for r in ratios)}')
    print(f'loop overhead over the bare step (median of per-window ratios): {100 * overhead:+.1f}%')
    results[key] = f'{overhead:.4f}'
    if key == 'loop_overhead':  # the step times of the configured run
      results.update(
        bare_ms=f'{bare_med * 1e3:.1f}', loop_ms=f'{loop_med * 1e3:.1f}', windows=str(len(ratios))
      )
  print('RESULT ' + ' '.join(f'{key}={value}' for key, value in results.items()))


if __name__ == '__main__':
  main()
