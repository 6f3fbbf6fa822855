"""Train-step throughput, and the training loop's overhead over the bare jitted step.

  .venv/bin/python benchmarks/train_step.py [--config configs/synthetic.py] [--steps 60] [--runs 3]

Bare step: the jitted train step over batches already on the device, timed to the last result.
Loop: `train_and_evaluate` itself (input pipeline, host-to-device transfer, metric bookkeeping,
checkpoint policy) run for N and 2N steps in fresh workdirs; the difference divided by N is its
steady-state time per step, so compilation and start-up cancel out (the persistent compilation
cache makes the second compile a cache hit). Evaluation is switched off in both.
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

from arcface_jax import losses, optim, parallel, trainer  # noqa: E402
from arcface_jax.config_files import load_config  # noqa: E402
from arcface_jax.data import pipeline, sources  # noqa: E402
from arcface_jax.train_step import create_train_state, make_train_step  # noqa: E402


def bare_step_seconds(config, mesh, batches, steps: int) -> float:
  source = sources.get_train_source(config.data)
  num_classes = config.data.num_classes or source.num_classes
  model = trainer.build_model(config)
  objective = losses.build_objective(config.loss, num_classes=num_classes,
                                     embedding_dim=config.model.embedding_dim)
  schedule = optim.make_schedule(config.train)
  tx = optim.make_optimizer(config.train, schedule)
  state = jax.jit(lambda k: create_train_state(k, model, objective, tx, config.data.image_size),
                  out_shardings=parallel.replicated(mesh))(jax.random.PRNGKey(0))
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


def loop_seconds(config, mesh, steps: int) -> float:
  def run(n):
    config.train.num_steps = n
    with tempfile.TemporaryDirectory() as workdir:
      start = time.perf_counter()
      trainer.train_and_evaluate(config, workdir, mesh=mesh)
      return time.perf_counter() - start
  return (run(2 * steps) - run(steps)) / steps


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/synthetic.py')
  parser.add_argument('--steps', type=int, default=60)
  parser.add_argument('--runs', type=int, default=3)
  args = parser.parse_args()
  jax.config.update('jax_compilation_cache_dir', os.path.join(tempfile.gettempdir(), 'jaxcache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  config = load_config(args.config)
  config.eval.every_steps = 0
  config.eval.synthetic_pairs = 0
  config.eval.bins = ()
  config.train.checkpoint_every = 0
  config.train.log_every = 20
  mesh = parallel.make_mesh()
  loader = pipeline.TrainLoader(
      sources.get_train_source(config.data), global_batch_size=config.train.batch_size,
      seed=config.seed, image_size=config.data.image_size, mean=config.data.mean,
      std=config.data.std, flip=config.data.flip)
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
  batch = config.train.batch_size
  print(f'config {args.config}: model {config.model.name}, {config.data.image_size}px, '
        f'global batch {batch}, {jax.device_count()} {jax.devices()[0].platform} device(s)')
  print(f'bare jitted step : {bare_s * 1e3:8.1f} ms/step  {batch / bare_s:9.1f} images/s '
        f'(runs: {", ".join(f"{b * 1e3:.1f}" for b in bare)})')
  print(f'training loop    : {loop_s * 1e3:8.1f} ms/step  {batch / loop_s:9.1f} images/s '
        f'(runs: {", ".join(f"{s * 1e3:.1f}" for s in loop)})')
  print(f'loop overhead over the bare step: {100 * (loop_s / bare_s - 1):+.1f}% (goal <= 5%)')


if __name__ == '__main__':
  main()
