"""Fine-tuning with a frozen backbone vs full training: steps/s and memory of the train step.

  .venv/bin/python benchmarks/finetune.py [--config configs/finetune.py] [--steps 10] [--runs 3]
      [--batch_size B] [--image_size S]

Both variants are the trainer's own jitted step (`make_train_step` with `optim.make_optimizer`
and `freezing.for_training`) on the same model, batch, head and random data already on the device:
- full: every parameter trained;
- frozen: `config.train.freeze=('^backbone/',)` with `freeze_batch_stats`: only the classifier
  head is trained, the backbone runs in eval mode and gets no gradient.
Memory is XLA's `memory_analysis()` of each compiled step (per device: temporaries, and the total
of arguments + outputs + temporaries − aliased donations), so it does not depend on what else the
process holds. Each run times both variants back to back (alternating which goes first); the
speedup is the median of the per-run ratios. Ends with
  RESULT finetune_frozen_speedup=<full step time / frozen step time>
         finetune_frozen_mem_ratio=<frozen peak / full peak>
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface_jax import compiler_options, freezing, losses, models, optim, parallel, seeding  # noqa: E402
from arcface_jax.config_files import load_config  # noqa: E402
from arcface_jax.train_state import create_train_state  # noqa: E402
from arcface_jax.train_step import make_train_step  # noqa: E402


def build_step(config, mesh, num_classes: int):
  model = models.from_config(config)
  objective = losses.build_objective(
    config.loss,
    num_classes=num_classes,
    embedding_dim=config.model.embedding_dim,
    init_std=config.head.init_std,
  )
  tx = optim.make_optimizer(config.train)
  size = config.data.image_size
  init = lambda key: create_train_state(key, model, objective, tx, size)
  abstract = jax.eval_shape(init, seeding.keys(0))
  step_model = freezing.for_training(model, config.train, abstract.params, abstract.batch_stats)
  replicated, batch_sharding = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  state = jax.jit(init, out_shardings=replicated)(seeding.keys(0))
  step = jax.jit(
    make_train_step(
      step_model, objective, tx, optim.make_schedule(config.train), jax.random.PRNGKey(1)
    ),
    in_shardings=(replicated, batch_sharding),
    out_shardings=(replicated, replicated),
    donate_argnums=(0,),
    compiler_options=compiler_options.for_devices(mesh.devices.flat),
  )
  batch = config.train.batch_size
  spec = {
    'image': jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32, sharding=batch_sharding),
    'label': jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=batch_sharding),
  }
  start = time.perf_counter()
  compiled = step.lower(state, spec).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  if memory is None:
    raise SystemExit(
      f'XLA on {jax.default_backend()} gives no memory analysis of compiled programs, '
      'which this benchmark reports'
    )
  peak = (
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    + memory.temp_size_in_bytes
    - memory.alias_size_in_bytes
  )
  return compiled, state, {'temp': memory.temp_size_in_bytes, 'peak': peak, 'compile_s': compile_s}


def time_steps(step, state, batches, steps: int) -> tuple[float, object]:
  for b in batches[:2]:  # warm up
    state, metrics = step(state, b)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for i in range(steps):
    state, metrics = step(state, batches[i % len(batches)])
  jax.block_until_ready((state, metrics))
  return (time.perf_counter() - start) / steps, state


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--config', default='configs/finetune.py')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--runs', type=int, default=3)
  parser.add_argument('--num_classes', type=int, default=1000)
  parser.add_argument('--batch_size', type=int, default=0, help='0 = the config\'s')
  # The recipe's size is 112 px (its full step compiles in ~20 s on a 2-core CPU); 64 px is the
  # `:cpu` recipe's.
  parser.add_argument('--image_size', type=int, default=0, help='0 = the config\'s')
  args = parser.parse_args()
  config = load_config(args.config)
  if args.batch_size:
    config.train.batch_size = args.batch_size
  if args.image_size:
    config.data.image_size = args.image_size
  mesh = parallel.make_mesh()
  frozen_config = load_config(args.config)
  frozen_config.train.batch_size = config.train.batch_size
  frozen_config.data.image_size = config.data.image_size
  frozen_config.train.freeze = ('^backbone/',)
  frozen_config.train.freeze_batch_stats = True

  rng = np.random.default_rng(0)
  size, batch = config.data.image_size, config.train.batch_size
  batches = [
    parallel.global_batch(
      mesh,
      {
        'image': rng.normal(size=(batch, size, size, 3)).astype(np.float32),
        'label': rng.integers(0, args.num_classes, batch).astype(np.int32),
      },
    )
    for _ in range(4)
  ]

  variants = {}
  for name, cfg in (('full', config), ('frozen', frozen_config)):
    print(f'compiling the {name} step ...', flush=True)
    variants[name] = build_step(cfg, mesh, args.num_classes)
  times: dict[str, list[float]] = {'full': [], 'frozen': []}
  for run in range(args.runs):
    order = ('full', 'frozen') if run % 2 == 0 else ('frozen', 'full')
    for name in order:
      step, state, memory = variants[name]
      seconds, state = time_steps(step, state, batches, args.steps)
      variants[name] = (step, state, memory)
      times[name].append(seconds)
  ratios = [f / z for f, z in zip(times['full'], times['frozen'])]
  full_mem, frozen_mem = variants['full'][2], variants['frozen'][2]
  device = jax.devices()[0]
  print(
    f'config {args.config}: {config.model.name}, {size}px, batch {batch}, '
    f'{args.num_classes} classes; {jax.device_count()} × {device.platform} '
    f'({getattr(device, "device_kind", "")}), {platform.processor() or platform.machine()}'
  )
  for name in ('full', 'frozen'):
    median = statistics.median(times[name])
    memory = variants[name][2]
    print(
      f'{name:>6}: {median * 1e3:8.1f} ms/step {1 / median:7.2f} steps/s  '
      f'(runs: {", ".join(f"{t * 1e3:.1f}" for t in times[name])} ms)  '
      f'temp {memory["temp"] / 2**20:8.1f} MiB  peak {memory["peak"] / 2**20:8.1f} MiB  '
      f'compile {memory["compile_s"]:.1f} s'
    )
  speedup = statistics.median(ratios)
  mem_ratio = frozen_mem['peak'] / full_mem['peak']
  print(f'per-run speedups: {", ".join(f"{r:.3f}" for r in ratios)}')
  print(f'RESULT finetune_frozen_speedup={speedup:.3f} finetune_frozen_mem_ratio={mem_ratio:.3f}')


if __name__ == '__main__':
  main()
