"""Evaluation speed (issue #6): the verification protocol, and embedding extraction overhead.

  .venv/bin/python benchmarks/evaluation.py [--pairs 6000] [--runs 7] [--model iresnet_tiny]
      [--size 112] [--images 1024] [--batch 128]

1. `verification.evaluate` on N random pairs of precomputed 512-d embeddings (median of runs),
   side by side with the protocol written as plain loops over folds and thresholds (what the
   reference does; one run, it is slow): the goal is well under a second for LFW's 6,000 pairs.
2. `extract_embeddings` (uint8 images in, flip-sum out: transfer, normalise, flip, two forwards,
   ragged-batch padding, fetch) against the bare jitted forward applied twice to float32 batches
   already on the device: images/s of each and their ratio, the cost of everything around the
   model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface_jax.evaluation import verification  # noqa: E402


def loop_protocol(embeddings: np.ndarray, issame: np.ndarray, nfolds: int = 10) -> float:
  """The reference protocol as plain loops (accuracy and TAR@FAR); returns the mean accuracy."""
  dist = verification.pair_distances(embeddings)
  folds = np.array_split(np.arange(len(dist)), nfolds)
  accuracies = []
  for test in folds:
    train = np.setdiff1d(np.arange(len(dist)), test)
    train_acc = [np.mean((dist[train] < t) == issame[train]) for t in verification.THRESHOLDS]
    best = verification.THRESHOLDS[int(np.argmax(train_acc))]
    accuracies.append(np.mean((dist[test] < best) == issame[test]))
    negatives = dist[train][~issame[train]]
    _ = [np.mean(negatives < t) for t in verification.FAR_THRESHOLDS]
  return float(np.mean(accuracies))


def bench_protocol(num_pairs: int, runs: int) -> float:
  rng = np.random.default_rng(0)
  issame = np.arange(num_pairs) % 2 == 0
  emb = rng.normal(size=(2 * num_pairs, 512)).astype(np.float32)
  # Noise 6x the signal per dimension: about 97% accuracy, so the threshold search matters.
  emb[1::2][issame] = emb[0::2][issame] + rng.normal(0, 6.0, (issame.sum(), 512))
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    result = verification.evaluate(emb, issame)
    times.append(time.perf_counter() - start)
  start = time.perf_counter()
  loop_accuracy = loop_protocol(emb, issame)
  loop_time = time.perf_counter() - start
  assert abs(loop_accuracy - result['accuracy']) < 1e-12, (loop_accuracy, result['accuracy'])
  median = statistics.median(times)
  print(
    f'protocol, {num_pairs} pairs x 512-d: evaluate() median {1000 * median:.1f} ms over '
    f'{runs} runs ({", ".join(f"{1000 * t:.1f}" for t in times)}); plain loops '
    f'{loop_time:.2f} s (x{loop_time / median:.0f}); accuracy {result["accuracy"]:.4f} both'
  )
  return median


def bench_extract(model_name: str, size: int, num_images: int, batch: int, runs: int) -> float:
  import jax
  import jax.numpy as jnp

  from arcface_jax import models, parallel
  from arcface_jax.evaluation.extract import extract_embeddings

  mesh = parallel.make_mesh()
  model = models.get(model_name, embedding_dim=512)
  variables = model.init(
    {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)},
    jnp.zeros((2, size, size, 3)),
    train=False,
  )
  forward = jax.jit(lambda x: model.apply(variables, x, train=False))
  batch = -(-batch // mesh.size) * mesh.size
  num_images = max(batch, num_images // batch * batch)  # whole batches: no padding in either
  images = np.random.default_rng(0).integers(0, 256, (num_images, size, size, 3), np.uint8)
  # Bare: normalised float32 batches placed on the devices beforehand, forward twice per batch.
  sharding = parallel.batch_sharding(mesh)
  placed = [
    jax.device_put((images[i : i + batch].astype(np.float32) - 127.5) / 127.5, sharding)
    for i in range(0, num_images, batch)
  ]

  def bare() -> None:
    outputs = [forward(x) for x in placed for _ in range(2)]
    jax.block_until_ready(outputs)

  def full() -> None:
    extract_embeddings(forward, images, batch_size=batch, mesh=mesh)

  bare()  # compile both
  full()
  bare_times: list[float] = []
  full_times: list[float] = []
  for _ in range(runs):  # interleaved, so drifting load on the shared machine hits both alike
    for fn, times in ((bare, bare_times), (full, full_times)):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
  bare_rate = num_images / statistics.median(bare_times)
  full_rate = num_images / statistics.median(full_times)
  ratios = [b / f for b, f in zip(bare_times, full_times)]
  print(
    f'extraction, {model_name} {size}x{size}, {num_images} images, batch {batch}, '
    f'{mesh.size} device(s): bare 2x forward {bare_rate:.1f} images/s, extract_embeddings '
    f'{full_rate:.1f} images/s, ratio {full_rate / bare_rate:.3f} '
    f'(per-run {", ".join(f"{r:.3f}" for r in ratios)})'
  )
  return full_rate / bare_rate


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--pairs', type=int, default=6000)
  parser.add_argument('--runs', type=int, default=7)
  parser.add_argument('--model', default='iresnet_tiny')
  parser.add_argument('--size', type=int, default=112)
  parser.add_argument('--images', type=int, default=1024)
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--extract_runs', type=int, default=3)
  args = parser.parse_args()
  cpu = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
  model = next(
    (line.split(':', 1)[1].strip() for line in cpu.splitlines() if line.startswith('Model name')),
    'unknown',
  )
  print(f'machine: {model}, {os.cpu_count()} cores visible; {time.strftime("%Y-%m-%d")}')
  protocol_seconds = bench_protocol(args.pairs, args.runs)
  extract_ratio = bench_extract(args.model, args.size, args.images, args.batch, args.extract_runs)
  print(
    f'RESULT verification_{args.pairs}_pairs_ms={1000 * protocol_seconds:.1f} '
    f'extract_vs_bare_forward={extract_ratio:.3f}'
  )


if __name__ == '__main__':
  main()
