"""XLA's own convolution against `models.cpu_conv`'s training formulations, op by op, on CPU.

    .venv/bin/python benchmarks/conv_formulations.py [--batch 32 --repeats 3]

For the depthwise 3×3 and 1×1 convolutions of MobileFaceNet (112×112 input) and the 1×1
stride-2 shortcuts of IResNet, times the forward pass, the input gradient and the weight
gradient (median ms of `--repeats` after a warm-up) of `lax.conv_general_dilated` and of
`cpu_conv.conv_general_dilated` under differentiation (the formulation the training step runs),
and checks that both give the same weight gradient.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
from jax import lax

from arcface_jax.models import cpu_conv

LAYOUT = ('NHWC', 'HWIO', 'NHWC')
# (name, input side, cin, cout, kernel, stride, groups)
SHAPES = [
  ('mbf depthwise', 56, 128, 128, 3, 1, 128),
  ('mbf depthwise s2', 56, 128, 128, 3, 2, 128),
  ('mbf depthwise', 28, 256, 256, 3, 1, 256),
  ('mbf depthwise s2', 28, 256, 256, 3, 2, 256),
  ('mbf 1×1', 56, 64, 128, 1, 1, 1),
  ('mbf 1×1', 28, 128, 64, 1, 1, 1),
  ('mbf 1×1', 14, 256, 128, 1, 1, 1),
  ('iresnet shortcut', 56, 64, 128, 1, 2, 1),
  ('iresnet shortcut', 28, 128, 256, 1, 2, 1),
]


def median_ms(fn, args, repeats):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  print(
    f'{"conv":18s} {"side":>4s} {"cin→cout":>9s} {"k":>2s} {"s":>2s}  '
    + '  '.join(f'{f"{w} {p}":>12s}' for w in ('xla', 'ours') for p in ('fwd', 'dx', 'dw'))
    + '   (ms)'
  )
  for name, side, cin, cout, k, s, groups in SHAPES:
    x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, side, side, cin))
    w = jax.random.normal(jax.random.PRNGKey(1), (k, k, cin // groups, cout)) * 0.1
    pads = ((k // 2, k // 2),) * 2
    row, weight_grads = [], []
    for conv in (lax.conv_general_dilated, cpu_conv.conv_general_dilated):

      def f(x, w, conv=conv, s=s, pads=pads, groups=groups):
        return conv(x, w, (s, s), pads, dimension_numbers=LAYOUT, feature_group_count=groups)

      forward = jax.jit(lambda x, w, f=f: jax.vjp(f, x, w)[0])
      dy = jnp.ones(jax.eval_shape(f, x, w).shape)
      dx = jax.jit(lambda x, w, dy, f=f: jax.vjp(lambda x: f(x, w), x)[1](dy)[0])
      dw = jax.jit(lambda x, w, dy, f=f: jax.vjp(lambda w: f(x, w), w)[1](dy)[0])
      row += [
        median_ms(forward, (x, w), args.repeats),
        median_ms(dx, (x, w, dy), args.repeats),
        median_ms(dw, (x, w, dy), args.repeats),
      ]
      weight_grads.append(dw(x, w, dy))
    error = float(
      jnp.max(jnp.abs(weight_grads[0] - weight_grads[1])) / jnp.max(jnp.abs(weight_grads[0]))
    )
    print(
      f'{name:18s} {side:4d} {f"{cin}→{cout}":>9s} {k:2d} {s:2d}  '
      + '  '.join(f'{t:12.1f}' for t in row)
      + f'   (dw rel. diff {error:.0e})',
      flush=True,
    )


if __name__ == '__main__':
  main()
