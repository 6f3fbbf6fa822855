"""Model-parallel classifier step: Partial FC r=0.1 vs the full (chunked) softmax, time and memory.

  .venv/bin/python benchmarks/partial_fc.py [--classes=1000000 --dim=512 --batch=512 --chunk=8192
                                             --reps=3 --devices=8]

On `--devices` virtual CPU devices (set here before JAX starts), one jitted step of the head as the
trainer runs it: ArcFace margin softmax over centres (C, D) split by class over the devices
(parallel.margin_softmax), value and gradient w.r.t. centres and embeddings, then dense SGD
(momentum 0.9, coupled weight decay 5e-4) on the sharded centres, with centres and momentum
donated. Candidates, timed in interleaved rounds (each round runs every candidate once) after a
warm-up, medians reported:
  r=1.0           every centre, unchunked (the trainer's default, head.chunk = 0);
  r=1.0 chunked   every centre, online softmax in blocks of --chunk columns;
  r=0.1           Partial FC, int(0.1 · C_local) centres per device, unchunked.
Per-device memory is XLA's compiled memory_analysis of the step (arguments + outputs − aliased
donations + temporaries; the SPMD program is per device) next to the classifier-memory formula of
REFERENCE §2: 3 × local weight (weight, gradient, momentum) + 2 × logits (B_g × num_sample fp32).
The matmul bound of the r=1.0 step, timed in the same rounds: its three matrix products with the
same shardings — logits x·Wᵀ (the global batch against each device's centres), the centres'
gradient Gᵀ·x and the embeddings' gradient G·W (summed over devices) — each 2·B·C·D FLOPs in
all. `mp_head_bound` = that time / the r=1.0 step's time: the model-parallel head's
fraction of its matmul bound, per device as every device runs the same program.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time


def _parse() -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument('--classes', type=int, default=1_000_000)
  p.add_argument('--dim', type=int, default=512)
  p.add_argument('--batch', type=int, default=512)
  p.add_argument('--chunk', type=int, default=8192)
  p.add_argument('--reps', type=int, default=3)
  p.add_argument('--devices', type=int, default=8)
  return p.parse_args()


ARGS = _parse()
os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + f' --xla_force_host_platform_device_count={ARGS.devices}'
).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from arcface_jax import margins, parallel  # noqa: E402
from arcface_jax.parallel import partial_fc, softmax  # noqa: E402

MIB = 2**20


def make_step(mesh, rate: float, chunk: int):
  mg = margins.get('arcface')
  lr, momentum, wd = 0.1, 0.9, 5e-4

  def step(weight, buf, x, labels, key):
    def loss_fn(w, x):
      return softmax.margin_softmax(
        w, x, labels, margin=mg, mesh=mesh, sample_rate=rate, key=key, chunk=chunk
      ).loss

    loss, (g_w, g_x) = jax.value_and_grad(loss_fn, argnums=(0, 1))(weight, x)
    buf = momentum * buf + g_w + wd * weight
    return weight - lr * buf, buf, loss, g_x

  rows = NamedSharding(mesh, P('data', None))
  batch = NamedSharding(mesh, P('data'))
  rep = NamedSharding(mesh, P())
  return jax.jit(
    step,
    in_shardings=(rows, rows, batch, batch, rep),
    out_shardings=(rows, rows, rep, batch),
    donate_argnums=(0, 1),
  )


def make_matmuls(mesh):
  """The r=1.0 step's three matrix products, sharded as the step shards them."""
  rows = NamedSharding(mesh, P('data', None))
  columns = NamedSharding(mesh, P(None, 'data'))
  rep = NamedSharding(mesh, P())

  def matmuls(weight, x, grad_logits):
    return x @ weight.T, grad_logits.T @ x, grad_logits @ weight

  return jax.jit(matmuls, in_shardings=(rows, rep, columns), out_shardings=(columns, rows, rep))


def per_device_bytes(compiled) -> dict[str, float]:
  m = compiled.memory_analysis()
  total = (
    m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
  )
  return {
    'arguments': m.argument_size_in_bytes / MIB,
    'temporaries': m.temp_size_in_bytes / MIB,
    'total': total / MIB,
  }


def formula_mib(num_local: int, num_sample: int, dim: int, batch: int) -> float:
  return (3 * num_local * dim * 4 + 2 * batch * num_sample * 4) / MIB


def main() -> None:
  mesh = parallel.make_mesh(ARGS.devices)
  c, d, b = ARGS.classes, ARGS.dim, ARGS.batch
  num_padded = softmax.padded_size(c, ARGS.devices)
  num_local = num_padded // ARGS.devices
  rows = NamedSharding(mesh, P('data', None))
  batch_sharding = NamedSharding(mesh, P('data'))
  init = jax.jit(
    lambda k: 0.01 * jax.random.normal(k, (num_padded, d), jnp.float32), out_shardings=rows
  )
  zeros = jax.jit(lambda: jnp.zeros((num_padded, d), jnp.float32), out_shardings=rows)
  x = jax.device_put(jax.random.normal(jax.random.key(1), (b, d)), batch_sharding)
  labels = jax.device_put(jax.random.randint(jax.random.key(2), (b,), 0, c), batch_sharding)
  key = jax.random.key(3)

  candidates = {'r=1.0': (1.0, 0), 'r=1.0 chunked': (1.0, ARGS.chunk), 'r=0.1': (0.1, 0)}
  compiled, state = {}, {}
  times: dict[str, list[float]] = {}
  abstract = (jax.ShapeDtypeStruct((num_padded, d), jnp.float32, sharding=rows),) * 2 + (
    x,
    labels,
    key,
  )
  for name, (rate, chunk) in candidates.items():
    compiled[name] = make_step(mesh, rate, chunk).lower(*abstract).compile()
    state[name] = (init(jax.random.key(0)), zeros())
    times[name] = []
  bound_args = (
    init(jax.random.key(4)),
    jax.device_put(x, NamedSharding(mesh, P())),
    jax.jit(
      lambda k: jax.random.normal(k, (b, num_padded), jnp.float32) / b,
      out_shardings=NamedSharding(mesh, P(None, 'data')),
    )(jax.random.key(5)),
  )
  bound = make_matmuls(mesh).lower(*bound_args).compile()
  times['matmul bound'] = []
  for round_ in range(ARGS.reps + 1):  # round 0 is the warm-up
    t0 = time.perf_counter()
    jax.block_until_ready(bound(*bound_args))
    if round_:
      times['matmul bound'].append(time.perf_counter() - t0)
    for name in candidates:
      weight, buf = state[name]
      t0 = time.perf_counter()
      weight, buf, loss, g_x = compiled[name](
        weight, buf, x, labels, jax.random.fold_in(key, round_)
      )
      jax.block_until_ready((weight, buf, loss, g_x))
      if round_:
        times[name].append(time.perf_counter() - t0)
      state[name] = (weight, buf)
      print(
        f'round {round_} {name}: {time.perf_counter() - t0:.2f} s, loss {float(loss):.4f}',
        flush=True,
      )

  cpu = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
  model = next(
    (line.split(':', 1)[1].strip() for line in cpu.splitlines() if line.startswith('Model name')),
    platform.processor(),
  )
  print(
    f'\n{datetime.date.today()}  {model}, {os.cpu_count()} cores visible, '
    f'{ARGS.devices} virtual CPU devices, jax {jax.__version__}'
  )
  print(
    f'C = {c:,}, D = {d}, global batch {b}, C_local = {num_local:,}, chunk {ARGS.chunk}, '
    f'medians of {ARGS.reps}'
  )
  print(
    '| head step | centres used per device | step time (s) | per-device memory (MiB): '
    'compiled | formula | ratio | temporaries |'
  )
  print('|---|---:|---:|---:|---:|---:|---:|')
  medians, memory_vs_formula = {}, {}
  for name, (rate, chunk) in candidates.items():
    used = partial_fc.num_sampled(rate, num_local, b)
    mem = per_device_bytes(compiled[name])
    formula = formula_mib(num_local, min(used, chunk) if chunk else used, d, b)
    medians[name] = statistics.median(times[name])
    memory_vs_formula[name] = mem['total'] / formula
    print(
      f'| {name} | {used:,} | {medians[name]:.2f} | {mem["total"]:.0f} | {formula:.0f} | '
      f'{mem["total"] / formula:.2f} | {mem["temporaries"]:.0f} |'
    )
  speedup = medians["r=1.0 chunked"] / medians["r=0.1"]
  bound_s = statistics.median(times['matmul bound'])
  print(f'| matmul bound of r=1.0 (3 products) | {num_local:,} | {bound_s:.2f} | | | | |')
  print(f'\nspeed-up of r=0.1 over r=1.0 chunked: {speedup:.2f}x (goal >= 3x)')
  for name in ('r=1.0', 'r=1.0 chunked'):
    print(f'{name} at {bound_s / medians[name]:.0%} of the matmul bound (goal >= 75%)')
  print(
    f'RESULT partial_fc_speedup={speedup:.2f} '
    f'partial_fc_mem_vs_formula={memory_vs_formula["r=0.1"]:.2f} '
    f'mp_head_bound={bound_s / medians["r=1.0"]:.3f}'
  )


if __name__ == '__main__':
  main()
