"""Backbone train step on CPU: IResNet-50 and MobileFaceNet in JAX against PyTorch twins.

    .venv/bin/python benchmarks/backbone.py [--arch iresnet50 --size 112 --batch 8 --mbf_batch 32
                                             --steps 1 --runs 3] [--only mobilefacenet|iresnet]
                                            [--breakdown]

By default it compares IResNet-50 (batch 8), then MobileFaceNet (batch 32, also with a bf16
trunk), and ends with `RESULT iresnet50_vs_torch=… mobilefacenet_vs_torch=… bf16_vs_fp32=…`
(MobileFaceNet's bf16 step over its fp32 step).
One process builds both: the Flax model from `arcface_jax.models` and a PyTorch twin written
below in the reference trainer's layout (NCHW, as PyTorch runs best), each trained by SGD with
momentum on a fixed batch with the same loss (mean squared embedding: the backbone's cost, not
a classifier's). Runs alternate between the two so that load from other processes falls on both;
each run times `--steps` steps after a warm-up, and the medians over runs give the ratio
JAX / PyTorch in images per second.

`--breakdown` times every distinct convolution of the network on its own in both frameworks
(forward, input gradient, weight gradient; batch and shapes as in the step), weighted by how
often it occurs, to show which part of the backward pass makes the difference.
Every JAX function here is compiled with `arcface_jax.compiler_options`, as the trainer's step is.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import functools
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from arcface_jax import compiler_options, models  # noqa: E402

STAGES = {
  'iresnet18': (2, 2, 2, 2),
  'iresnet34': (3, 4, 6, 3),
  'iresnet50': (3, 4, 14, 3),
  'iresnet100': (3, 13, 30, 3),
}


def torch_iresnet(stages, size, emb=512):
  """The reference IResNet in PyTorch (BN → conv → BN → PReLU → conv(stride) → BN + shortcut)."""
  import torch
  from torch import nn

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.body = nn.Sequential(
        nn.BatchNorm2d(cin),
        nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.PReLU(cout),
        nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
      )
      self.down = None
      if stride != 1 or cin != cout:
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
      return self.body(x) + (x if self.down is None else self.down(x))

  layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)]
  cin = 64
  for width, n in zip((64, 128, 256, 512), stages):
    for i in range(n):
      layers.append(Block(cin, width, 2 if i == 0 else 1))
      cin = width
  layers += [
    nn.BatchNorm2d(512),
    nn.Flatten(),
    nn.Linear(512 * (size // 16) ** 2, emb),
    nn.BatchNorm1d(emb),
  ]
  return torch.nn.Sequential(*layers)


def torch_mobilefacenet(size, emb=512):
  """The reference MobileFaceNet (blocks (1, 4, 6, 2), scale 1, GDC head) in PyTorch."""
  import torch
  from torch import nn

  def unit(cin, cout, k=1, s=1, p=0, g=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, s, p, groups=g, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*(layers + [nn.PReLU(cout)] if act else layers))

  class DepthWise(nn.Module):
    def __init__(self, cin, cout, expand, stride, residual):
      super().__init__()
      self.residual = residual
      self.layers = nn.Sequential(
        unit(cin, expand), unit(expand, expand, 3, stride, 1, expand), unit(expand, cout, act=False)
      )

    def forward(self, x):
      return x + self.layers(x) if self.residual else self.layers(x)

  layers = [unit(3, 64, 3, 2, 1), unit(64, 64, 3, 1, 1, 64)]
  for cin, cout, down, expand, n in (
    (64, 64, 128, 128, 4),
    (64, 128, 256, 256, 6),
    (128, 128, 512, 256, 2),
  ):
    layers.append(DepthWise(cin, cout, down, 2, False))
    layers += [DepthWise(cout, cout, expand, 1, True) for _ in range(n)]
  layers += [
    unit(128, 512),
    unit(512, 512, size // 16, g=512, act=False),
    nn.Flatten(),
    nn.Linear(512, emb, bias=False),
    nn.BatchNorm1d(emb),
  ]
  return torch.nn.Sequential(*layers)


def jax_step_fn(arch, batch, size, dtype='float32'):
  model = models.get(arch, dtype=dtype)
  images = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, 3))
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), images)
  tx = optax.sgd(0.01, momentum=0.9)
  state = (variables['params'], variables['batch_stats'], tx.init(variables['params']))

  @functools.partial(jax.jit, compiler_options=compiler_options.for_devices())  # as the trainer
  def step(state, images):
    params, stats, opt = state

    def loss_fn(params):
      emb, new = model.apply(
        {'params': params, 'batch_stats': stats}, images, train=True, mutable=['batch_stats']
      )
      return jnp.mean(emb**2), new['batch_stats']

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return (optax.apply_updates(params, updates), stats, opt), loss

  step = step.lower(state, images).compile()  # compiled once, memory known before running
  memory = step.memory_analysis()
  temp_mib = getattr(memory, 'temp_size_in_bytes', 0) / 2**20
  count = sum(x.size for x in jax.tree.leaves(variables['params']))
  print(
    f'jax {arch} {dtype}: {count:,} parameters, {temp_mib:,.0f} MiB XLA temporaries', flush=True
  )
  holder = [state]

  def run(steps):
    for _ in range(steps):
      holder[0], loss = step(holder[0], images)
    loss.block_until_ready()

  return run


def torch_step_fn(arch, batch, size, threads):
  import torch

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = (
    torch_mobilefacenet(size) if arch == 'mobilefacenet' else torch_iresnet(STAGES[arch], size)
  ).train()
  print(f'pytorch {arch}: {sum(p.numel() for p in model.parameters()):,} parameters', flush=True)
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  images = torch.randn(batch, 3, size, size)

  def run(steps):
    for _ in range(steps):
      opt.zero_grad(set_to_none=True)
      loss = model(images).pow(2).mean()
      loss.backward()
      opt.step()

  return run


def timed(run, steps):
  start = time.perf_counter()
  run(steps)
  return time.perf_counter() - start


def compare(args, arch, batch, bf16=False):
  """Interleaved runs of the PyTorch and JAX steps (and JAX bf16); median images/s of each."""
  contenders = {
    'pytorch': torch_step_fn(arch, batch, args.size, args.threads),
    'jax': jax_step_fn(arch, batch, args.size),
  }
  if bf16:
    contenders['jax_bf16'] = jax_step_fn(arch, batch, args.size, 'bfloat16')
  for name, run in contenders.items():  # compile / warm up
    start = time.perf_counter()
    run(1)
    print(f'{name}: warm-up step (compiling) {time.perf_counter() - start:.1f} s', flush=True)
  rates = collections.defaultdict(list)
  for r in range(args.runs):
    for name, run in contenders.items():
      rates[name].append(args.steps * batch / timed(run, args.steps))
    print(f'run {r}: ' + ', '.join(f'{k} {v[-1]:.2f} img/s' for k, v in rates.items()), flush=True)
  medians = {k: statistics.median(v) for k, v in rates.items()}
  print(
    f'\n{arch} {args.size}×{args.size} batch {batch} train step, median of '
    f'{args.runs} runs × {args.steps} steps:'
  )
  for name, rate in medians.items():
    print(
      f'  {name:18s} {rate:8.2f} images/s   ratio to PyTorch {rate / medians["pytorch"]:.2f}',
      flush=True,
    )
  return medians


def conv_shapes(arch, size):
  """(count, (cin, cout, kernel, stride, input side)) for every conv of the IResNet."""
  shapes = collections.Counter({(3, 64, 3, 1, size): 1})
  cin, side = 64, size
  for width, n in zip((64, 128, 256, 512), STAGES[arch]):
    for i in range(n):
      stride = 2 if i == 0 else 1
      shapes[(cin, width, 3, 1, side)] += 1
      shapes[(width, width, 3, stride, side)] += 1
      if stride != 1 or cin != width:
        shapes[(cin, width, 1, stride, side)] += 1
      cin, side = width, side // stride
  return shapes


def median_time(fn, repeats):
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def breakdown(args):
  import torch

  torch.set_num_threads(args.threads)
  totals = collections.defaultdict(float)
  print(
    f'{"conv (cin→cout k s side)":28s} {"n":>3s}  '
    + '  '.join(f'{f"{fw} {p}":>13s}' for fw in ('jax', 'torch') for p in ('fwd', 'dx', 'dw'))
    + '   (ms)'
  )
  for (cin, cout, k, s, side), n in sorted(
    conv_shapes(args.arch, args.size).items(), key=lambda kv: -kv[0][4]
  ):
    x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, side, side, cin))
    w = jax.random.normal(jax.random.PRNGKey(1), (k, k, cin, cout)) * 0.01
    pad = ((k // 2, k // 2),) * 2
    conv = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
      x, w, (s, s), pad, dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )
    dy = jnp.ones(jax.eval_shape(conv, x, w).shape)
    jit = functools.partial(jax.jit, compiler_options=compiler_options.for_devices())
    fns = {
      'jax fwd': jit(conv),
      'jax dx': jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0]),
      'jax dw': jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]),
    }
    row = {}
    row['jax fwd'] = median_time(lambda: fns['jax fwd'](x, w).block_until_ready(), args.repeats)
    for p in ('dx', 'dw'):
      row[f'jax {p}'] = median_time(
        lambda: fns[f'jax {p}'](x, w, dy).block_until_ready(), args.repeats
      )
    tx = torch.randn(args.batch, cin, side, side)
    tw = torch.randn(cout, cin, k, k) * 0.01
    tdy = torch.ones(args.batch, cout, (side + s - 1) // s, (side + s - 1) // s)
    grad = torch.nn.grad
    with torch.no_grad():
      row['torch fwd'] = median_time(
        lambda: torch.nn.functional.conv2d(tx, tw, None, s, k // 2), args.repeats
      )
      row['torch dx'] = median_time(
        lambda: grad.conv2d_input(tx.shape, tw, tdy, s, k // 2), args.repeats
      )
      row['torch dw'] = median_time(
        lambda: grad.conv2d_weight(tx, tw.shape, tdy, s, k // 2), args.repeats
      )
    for key, t in row.items():
      totals[key] += n * t
    print(
      f'{cin:4d}→{cout:<4d} {k}×{k} s{s} {side:4d}       {n:3d}  '
      + '  '.join(
        f'{row[f"{fw} {p}"] * 1e3:13.1f}' for fw in ('jax', 'torch') for p in ('fwd', 'dx', 'dw')
      ),
      flush=True,
    )
  print(
    f'{"weighted total":28s} {"":3s}  '
    + '  '.join(
      f'{totals[f"{fw} {p}"] * 1e3:13.0f}' for fw in ('jax', 'torch') for p in ('fwd', 'dx', 'dw')
    )
  )


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    '--arch',
    default='iresnet50',
    choices=sorted(STAGES),
    help='the IResNet compared (and broken down by --breakdown)',
  )
  parser.add_argument('--size', type=int, default=112)
  parser.add_argument('--batch', type=int, default=8, help='IResNet batch')
  parser.add_argument('--mbf_batch', type=int, default=32, help='MobileFaceNet batch')
  parser.add_argument('--steps', type=int, default=1)
  parser.add_argument('--runs', type=int, default=3)
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--repeats', type=int, default=3, help='breakdown: timings per op')
  parser.add_argument('--breakdown', action='store_true')
  parser.add_argument(
    '--only', choices=('iresnet', 'mobilefacenet'), help='compare one network (no RESULT line)'
  )
  args = parser.parse_args()
  cpu = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
  model_name = next(
    (line.split(':', 1)[1].strip() for line in cpu.splitlines() if line.startswith('Model name')),
    platform.processor(),
  )
  import torch

  print(
    f'{datetime.date.today()}  {model_name}, {os.cpu_count()} cores, jax {jax.__version__}, '
    f'torch {torch.__version__}, XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}, '
    f'load average {os.getloadavg()[0]:.1f}',
    flush=True,
  )
  if args.breakdown:
    return breakdown(args)
  if args.only:
    return (
      compare(args, args.arch, args.batch)
      if args.only == 'iresnet'
      else compare(args, 'mobilefacenet', args.mbf_batch, bf16=True)
    )
  iresnet = compare(args, args.arch, args.batch)
  mbf = compare(args, 'mobilefacenet', args.mbf_batch, bf16=True)
  print(
    f'RESULT {args.arch}_vs_torch={iresnet["jax"] / iresnet["pytorch"]:.2f} '
    f'mobilefacenet_vs_torch={mbf["jax"] / mbf["pytorch"]:.2f} '
    f'bf16_vs_fp32={mbf["jax_bf16"] / mbf["jax"]:.2f}'
  )


if __name__ == '__main__':
  main()
