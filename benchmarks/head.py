"""Forward + backward of the margin softmax head: JAX objective vs the same in PyTorch, vs matmuls.

  .venv/bin/python benchmarks/head.py [--batch=512 --dim=512 --classes=100000 --reps=5]

One run measures, on CPU in float32 (embeddings (B, D), class centres (C, D), ArcFace s=64 m=0.5):
  * jax_objective: `losses.build_objective(arcface)` under jit, value_and_grad w.r.t. centres and
    embeddings (the trainer's path: `margin_head.margin_head`, the one-kernel head with the angle
    metrics);
  * jax_margin_ce: the previous path, for comparison: normalise both, matmul, then
    `loss_terms.fused_margin_cross_entropy` on the (B, C) cosines;
  * torch: the same computation written here with torch ops (normalize, linear, gather, margin
    with the monotone fallback, scatter, cross_entropy, backward);
  * matmul bound: the three matmuls of the step (x·Wᵀ, G·W, Gᵀ·x, each 2·B·C·D FLOPs) in one
    jitted function of the same shapes; "fraction of bound" = its time / the step's time.
Times are medians over --reps rounds after a warm-up; each round runs every candidate once. Peak memory: JAX from XLA's compiled
memory_analysis (temporaries + outputs), and for both frameworks the peak-RSS increase over one
step (VmHWM after resetting it through /proc/self/clear_refs, minus the RSS before the step).
The last line, `RESULT head_vs_torch= head_bound= head_mem_vs_torch=`, is jax_objective's speed
against torch, its fraction of the matmul bound, and its peak-RSS increase over torch's.
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
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from arcface_jax import loss_terms, losses, margins  # noqa: E402
from arcface_jax.config_files import load_base  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _median_times(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
  """Median seconds per call of each fn; rounds interleave the fns so load drift hits all alike."""
  for fn in fns.values():
    fn()  # warm-up (compilation, allocator)
  times: dict[str, list[float]] = {key: [] for key in fns}
  for _ in range(reps):
    for key, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[key].append(time.perf_counter() - start)
  return {key: statistics.median(t) for key, t in times.items()}


def _rss_kib(field: str) -> int:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1])
  raise RuntimeError(field)


def _peak_rss_delta_mib(fn) -> float:
  """Peak resident memory added by one call of fn, in MiB (Linux: reset VmHWM, run, read it)."""
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')
  before = _rss_kib('VmRSS')
  fn()
  return (_rss_kib('VmHWM') - before) / 1024


def _loss_config(name: str) -> ml_collections.ConfigDict:
  config = load_base(os.path.join(REPO, 'configs', 'base.py')).loss
  config.name = name
  return config


def _torch_step(torch, emb, weight, labels, s=64.0, m=0.5):
  import math

  F = torch.nn.functional
  emb.grad, weight.grad = None, None
  cos = F.linear(F.normalize(emb), F.normalize(weight)).clamp(-1.0, 1.0)
  target = cos.gather(1, labels[:, None])
  sin = torch.sqrt((1.0 - target * target).clamp_min(1e-10))
  value = target * math.cos(m) - sin * math.sin(m)
  value = torch.where(target > math.cos(math.pi - m), value, target - m * math.sin(m))
  logits = cos.scatter(1, labels[:, None], value) * s
  loss = F.cross_entropy(logits, labels)
  loss.backward()
  return loss


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--batch', type=int, default=512)
  parser.add_argument('--dim', type=int, default=512)
  parser.add_argument('--classes', type=int, default=100_000)
  parser.add_argument('--reps', type=int, default=5)
  parser.add_argument('--memory-only', action='store_true', help='internal: the RSS child')
  args = parser.parse_args()
  b, d, c = args.batch, args.dim, args.classes

  rng = np.random.default_rng(0)
  emb_np = rng.normal(size=(b, d)).astype(np.float32)
  weight_np = (0.01 * rng.normal(size=(c, d))).astype(np.float32)
  labels_np = rng.integers(0, c, b).astype(np.int32)
  emb, weight, labels = jnp.asarray(emb_np), jnp.asarray(weight_np), jnp.asarray(labels_np)

  # ------------------------------------------------------------------ JAX
  objective = losses.build_objective(_loss_config('arcface'), num_classes=c, embedding_dim=d)

  def objective_loss(w, e):
    loss, _, metrics = objective({'weight': w}, {}, e, labels, jnp.int32(0))
    return loss, metrics

  jax_objective = jax.jit(jax.value_and_grad(objective_loss, argnums=(0, 1), has_aux=True))
  margin = margins.get('arcface')

  def margin_ce(w, e):
    cos = loss_terms.l2_normalize(e) @ loss_terms.l2_normalize(w).T
    return loss_terms.fused_margin_cross_entropy(cos, labels, margin)

  jax_margin_ce = jax.jit(jax.value_and_grad(margin_ce, argnums=(0, 1)))

  # Matmul bound: the step's three matmuls alone, same shapes, layouts and dependencies
  # (the forward product feeds both backward products), in one jitted function.
  @jax.jit
  def matmuls(w, e):
    logits = e @ w.T
    return logits @ w, logits.T @ e

  import torch

  t_emb = torch.tensor(emb_np, requires_grad=True)
  t_weight = torch.tensor(weight_np, requires_grad=True)
  t_labels = torch.tensor(labels_np.astype(np.int64))
  block = lambda out: jax.block_until_ready(out)
  results = (
    {}
    if args.memory_only
    else _median_times(
      {
        'jax_objective': lambda: block(jax_objective(weight, emb)),
        'jax_margin_ce': lambda: block(jax_margin_ce(weight, emb)),
        'torch': lambda: _torch_step(torch, t_emb, t_weight, t_labels),
        'matmul_bound': lambda: block(matmuls(weight, emb)),
      },
      args.reps,
    )
  )
  bound = results.pop('matmul_bound', 0.0)
  flops = 3 * 2 * b * c * d
  with torch.no_grad():
    if args.memory_only:
      torch_mm = 0.0
    else:
      torch_mm = _median_times(
        {'mm': lambda: (lambda logits: (logits @ t_weight, logits.T @ t_emb))(t_emb @ t_weight.T)},
        3,
      )['mm']

  memory = {}
  for key, fn in (('jax_objective', jax_objective), ('jax_margin_ce', jax_margin_ce)):
    if args.memory_only:
      break
    analysis = fn.lower(weight, emb).compile().memory_analysis()
    if analysis is None:
      raise SystemExit(
        f'XLA on {jax.default_backend()} gives no memory analysis of compiled programs, '
        'which this benchmark reports'
      )
    memory[key + '_xla'] = (analysis.temp_size_in_bytes + analysis.output_size_in_bytes) / 2**20
  if args.memory_only:
    # Child process (see below): one warmed-up step of each, peak RSS added by the step.
    block(jax_objective(weight, emb))
    _torch_step(torch, t_emb, t_weight, t_labels)
    t_emb.grad, t_weight.grad = None, None  # measure from a state without last step's outputs
    print(
      'RSS',
      _peak_rss_delta_mib(lambda: block(jax_objective(weight, emb))),
      _peak_rss_delta_mib(lambda: _torch_step(torch, t_emb, t_weight, t_labels)),
    )
    return
  # Peak RSS in a child whose malloc returns every block of 1 MiB or more to the system at once
  # (fixed mmap threshold), so the delta is what the step needs, not what earlier steps left.
  child = subprocess.run(
    [
      sys.executable,
      os.path.abspath(__file__),
      f'--batch={b}',
      f'--dim={d}',
      f'--classes={c}',
      '--reps=0',
      '--memory-only',
    ],
    capture_output=True,
    text=True,
    env=dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(2**20)),
    check=True,
  )
  jax_rss, torch_rss = map(float, child.stdout.split('RSS', 1)[1].split())
  memory['jax_objective_rss'], memory['torch_rss'] = jax_rss, torch_rss

  # Same loss in both frameworks (a check that they compute the same thing).
  loss_jax = float(jax_margin_ce(weight, emb)[0])
  loss_torch = float(_torch_step(torch, t_emb, t_weight, t_labels).detach())

  model = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
  model = next(
    (ln.split(':', 1)[1].strip() for ln in model.splitlines() if ln.startswith('Model name')),
    platform.processor(),
  )
  print(
    f'date {datetime.date.today()}  cpu {model}  cores {os.cpu_count()}  jax {jax.__version__}'
    f'  torch {torch.__version__} (threads {torch.get_num_threads()})  load {os.getloadavg()}'
  )
  print(
    f'B={b} D={d} C={c} fp32, ArcFace s=64 m=0.5; loss jax {loss_jax:.5f} torch {loss_torch:.5f}'
  )
  print(
    f'matmul bound (3 matmuls, one jit): {bound * 1e3:.0f} ms = {flops / bound / 1e9:.1f} '
    f'GFLOP/s; the same 3 matmuls in torch: {torch_mm * 1e3:.0f} ms'
  )
  print('| what | median ms | vs torch | fraction of matmul bound |')
  print('|---|---:|---:|---:|')
  for key, seconds in results.items():
    print(
      f'| {key} | {seconds * 1e3:.0f} | {results["torch"] / seconds:.2f}x | {bound / seconds:.0%} |'
    )
  print('peak memory (MiB): ' + ', '.join(f'{k} {v:.0f}' for k, v in memory.items()))
  print(
    f'RESULT head_vs_torch={results["torch"] / results["jax_objective"]:.3f} '
    f'head_bound={bound / results["jax_objective"]:.3f} '
    f'head_mem_vs_torch={jax_rss / torch_rss:.3f}'
  )


if __name__ == '__main__':
  main()
