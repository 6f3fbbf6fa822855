"""Train-step throughput, and the training loop's overhead over the bare jitted step.

  .venv/bin/python benchmarks/train_step.py [--config configs/synthetic.py] [--steps 60] [--runs 3]

Bare step: the jitted train step over batches already on the device, timed to the last result.
Loop: `train_and_evaluate` itself (input pipeline, host-to-device transfer, metric bookkeeping,
checkpoint policy), timed between two steps at which the device has caught up (after warm-up, so
compilation is excluded). Evaluation and periodic checkpoints are off in both. Bare and loop run
back to back in each run and the overhead is the median of the per-run ratios.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface_jax import losses, models, optim, parallel, seeding, trainer  # noqa: E402
from arcface_jax.config_files import load_config  # noqa: E402
from arcface_jax.data import pipeline, sources  # noqa: E402
from arcface_jax.train_state import create_train_state  # noqa: E402
from arcface_jax.train_step import make_train_step  # noqa: E402


def bare_step_seconds(config, mesh, batches, steps: int) -> float:
  source = sources.get_train_source(config.data)
  num_classes = config.data.num_classes or source.num_classes
  model = models.from_config(config)
  objective = losses.build_objective(config.loss, num_classes=num_classes,
                                     embedding_dim=config.model.embedding_dim,
                                     init_std=config.head.init_std)
  schedule = optim.make_schedule(config.train)
  tx = optim.make_optimizer(config.train)
  state = jax.jit(lambda k: create_train_state(k, model, objective, tx, config.data.image_size),
                  out_shardings=parallel.replicated(mesh))(seeding.keys(0))
  step = jax.jit(make_train_step(model, objective, tx, schedule, jax.random.PRNGKey(1)),
                 in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
                 out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)),
                 donate_argnums=(0,))
  device_batches = [parallel.global_batch(mesh, b) for b in batches]
  for b in device_batches[:3]:  # compile and warm up
    state, metrics = step(state, b)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for i in range(steps):
    state, metrics = step(state, device_batches[i % len(device_batches)])
  jax.block_until_ready((state, metrics))
  return (time.perf_counter() - start) / steps


def loop_seconds(config, mesh, steps: int, warmup: int = 20) -> float:
  """Per-step time of `train_and_evaluate` between steps `warmup` and `warmup + steps`.

  The reporter fetches metrics (a device sync) every `warmup` steps, just before the step
  callback runs, so both timestamps are taken with the device caught up.
  """
  config.train.num_steps = warmup + steps
  config.train.log_every = warmup
  assert steps % warmup == 0
  stamps = {}

  def stamp(step):
    if step in (warmup, warmup + steps):
      stamps[step] = time.perf_counter()

  with tempfile.TemporaryDirectory() as workdir:
    trainer.train_and_evaluate(config, workdir, mesh=mesh, step_callback=stamp)
  return (stamps[warmup + steps] - stamps[warmup]) / steps


def main() -> None:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default='configs/synthetic.py')
  parser.add_argument('--steps', type=int, default=60, help='a multiple of 20')
  parser.add_argument('--runs', type=int, default=3)
  args = parser.parse_args()
  config = load_config(args.config)
  config.eval.every_steps = 0
  config.eval.synthetic_pairs = 0
  config.eval.bins = ()
  config.train.checkpoint_every = 0
  mesh = parallel.make_mesh()
  loader = pipeline.TrainLoader(
      sources.get_train_source(config.data), global_batch_size=config.train.batch_size,
      seed=seeding.integer_seed(seeding.keys(config)['data']), image_size=config.data.image_size,
      mean=config.data.mean, std=config.data.std, flip=config.data.flip)
  iterator = loader.iterate(0)
  batches = [next(iterator) for _ in range(16)]
  # Let the abandoned iterator's reader threads drain, so they do not compete with the bare step.
  del iterator
  gc.collect()
  time.sleep(3)

  bare, loop = [], []
  for _ in range(args.runs):
    bare.append(bare_step_seconds(config, mesh, batches, args.steps))
    loop.append(loop_seconds(config, mesh, args.steps))
  bare_s, loop_s = statistics.median(bare), statistics.median(loop)
  # Bare and loop are measured back to back in each run; the ratio within a run is what survives
  # a machine whose load changes between runs.
  ratios = [l / b for b, l in zip(bare, loop)]
  batch = config.train.batch_size
  print(f'config {args.config}: model {config.model.name}, {config.data.image_size}px, '
        f'global batch {batch}, {jax.device_count()} {jax.devices()[0].platform} device(s)')
  print(f'bare jitted step : {bare_s * 1e3:8.1f} ms/step  {batch / bare_s:9.1f} images/s '
        f'(runs: {", ".join(f"{b * 1e3:.1f}" for b in bare)})')
  print(f'training loop    : {loop_s * 1e3:8.1f} ms/step  {batch / loop_s:9.1f} images/s '
        f'(runs: {", ".join(f"{s * 1e3:.1f}" for s in loop)})')
  print(f'loop / bare per run: {", ".join(f"{r:.3f}" for r in ratios)}')
  print(f'loop overhead over the bare step (median of per-run ratios): '
        f'{100 * (statistics.median(ratios) - 1):+.1f}% (goal <= 5%)')

if __name__ == '__main__':
  main()
