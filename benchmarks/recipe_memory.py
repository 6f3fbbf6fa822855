"""How much memory a recipe's train step needs, and how long a step takes on this machine.

  .venv/bin/python benchmarks/recipe_memory.py [--recipes configs/folder.py:cpu configs/folder.py
      configs/ms1mv3_r50.py] [--classes 1000] [--time_batch 8]

For each recipe: the trainer's own step (`make_train_step` with the recipe's model, objective and
optimiser, uint8 images normalised inside) is lowered and compiled for one device at the
recipe's global batch and image size, without running it; XLA's `memory_analysis()` gives the
bytes it needs (arguments: the train state and the batch; temporaries: activations kept for the
backward pass and workspace; outputs not aliased to the donated state). Then the same step is
compiled at `--time_batch` and timed (median of 3 steps after one warm-up); `seconds per
recipe step` scales it linearly to the recipe's batch, and `hours for the recipe` multiplies by
`train.num_steps`. Folder recipes read their class count from the data; here it is `--classes`
(a personal collection). Recipes with a class count in the config keep it.

Ends with `RESULT <recipe>_gib=<GiB> <recipe>_hours=<hours> ...` (recipe names made
identifier-safe).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface_jax import compiler_options, losses, models, optim, seeding  # noqa: E402
from arcface_jax.config_files import load_config  # noqa: E402
from arcface_jax.train_state import create_train_state  # noqa: E402
from arcface_jax.train_step import make_train_step  # noqa: E402

DEFAULT_RECIPES = ('configs/folder.py:cpu', 'configs/folder.py', 'configs/ms1mv3_r50.py')


def compiled_step(config, num_classes: int, batch: int):
  """The recipe's train step compiled for `batch` images, and an initial state."""
  model = models.from_config(config)
  objective = losses.from_config(config, num_classes=num_classes, mesh=None)
  tx, schedule = optim.from_config(config)
  keys = seeding.keys(config)
  size = config.data.image_size
  state = jax.jit(lambda k: create_train_state(k, model, objective, tx, size))(keys)
  step = jax.jit(
    make_train_step(
      model,
      objective,
      tx,
      schedule,
      keys['dropout'],
      image_mean=config.data.mean,
      image_std=config.data.std,
    ),
    donate_argnums=(0,),
    compiler_options=compiler_options.for_devices(),
  )
  batch_spec = {
    'image': jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8),
    'label': jax.ShapeDtypeStruct((batch,), jnp.int32),
  }
  abstract_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  return step.lower(abstract_state, batch_spec).compile(), state


def measure(spec: str, classes: int, time_batch: int) -> tuple[float, float]:
  config = load_config(spec)
  num_classes = int(config.data.num_classes) or classes
  batch, steps = int(config.train.batch_size), int(config.train.num_steps)
  name = (
    f'{config.model.name} × batch {batch} at {config.data.image_size} px, {num_classes} classes'
  )
  print(f'{spec}: {name}; compiling the step (no run)...', flush=True)
  start = time.perf_counter()
  compiled, _ = compiled_step(config, num_classes, batch)
  memory = compiled.memory_analysis()
  need = (
    memory.argument_size_in_bytes
    + memory.temp_size_in_bytes
    + memory.output_size_in_bytes
    - memory.alias_size_in_bytes
  )
  print(
    f'  compiled in {time.perf_counter() - start:.0f} s: arguments '
    f'{memory.argument_size_in_bytes / 2**30:.2f} GiB, temporaries '
    f'{memory.temp_size_in_bytes / 2**30:.2f} GiB, needs {need / 2**30:.2f} GiB',
    flush=True,
  )
  del compiled
  small, state = compiled_step(config, num_classes, time_batch)
  size = config.data.image_size
  rng = np.random.default_rng(0)
  batch_data = {
    'image': jnp.asarray(rng.integers(0, 256, (time_batch, size, size, 3), np.uint8)),
    'label': jnp.asarray(rng.integers(0, num_classes, (time_batch,), np.int32)),
  }
  seconds = []
  for _ in range(4):
    begin = time.perf_counter()
    state, metrics = small(state, batch_data)
    jax.block_until_ready((state, metrics))
    seconds.append(time.perf_counter() - begin)
  per_step = statistics.median(seconds[1:]) * batch / time_batch
  hours = per_step * steps / 3600
  print(
    f'  batch {time_batch}: {statistics.median(seconds[1:]):.2f} s per step (median of 3) → '
    f'{per_step:.0f} s per recipe step of {batch}, {hours:,.0f} h for its {steps:,} steps',
    flush=True,
  )
  return need / 2**30, hours


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--recipes', nargs='+', default=list(DEFAULT_RECIPES))
  parser.add_argument('--classes', type=int, default=1000, help='for recipes that read it')
  parser.add_argument('--time_batch', type=int, default=8)
  args = parser.parse_args()
  print(f'{jax.devices()[0].device_kind}, {os.cpu_count()} cores, jax {jax.__version__}')
  results = []
  for spec in args.recipes:
    gib, hours = measure(spec, args.classes, args.time_batch)
    key = re.sub(r'\W+', '_', os.path.basename(spec).replace('.py', '')).strip('_')
    results.append(f'{key}_gib={gib:.2f} {key}_hours={hours:.1f}')
  print('RESULT ' + ' '.join(results))


if __name__ == '__main__':
  main()
