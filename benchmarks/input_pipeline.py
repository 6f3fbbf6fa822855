"""Input pipeline throughput (issue #5): images/s of read → decode → flip → batch (uint8).

  .venv/bin/python benchmarks/input_pipeline.py [--images=4096] [--size=112] [--batch=128]
      [--batches=24] [--workers=0,1,2] [--runs=3]

Packs synthetic 112×112 faces as JPEG (quality 90) into a RecordIO directory (train.rec/.idx, read
by `arcface_jax.data.recordio.RecordDataset`). Then, side by side in one run:

- a plain PIL decode loop (`Image.open(...).convert('RGB')` → numpy), the naive baseline;
- a plain OpenCV decode loop (what the sources use);
- the full `TrainLoader` for each worker count (0 = reader threads in this process).

Wall-clock images/s depend on how many cores are free, so each line also gives images per
CPU-second (CPU time of this process and its grain workers, from /proc): that is the per-core
figure the goal (≥ 2,500 images/s per core) refers to, and it is robust to a shared machine.
"""

from __future__ import annotations

import argparse
import io
import itertools
import multiprocessing
import os
import statistics
import sys
import tempfile
import time

import cv2
import numpy as np
from absl import app
from absl.flags import argparse_flags
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arcface_jax.data import synthetic  # noqa: E402
from arcface_jax.data.pipeline import TrainLoader  # noqa: E402

_TICKS = os.sysconf('SC_CLK_TCK')


def parse_args(argv):
  # absl's argparse flavour: grain's worker processes expect absl's flags to be parsed.
  parser = argparse_flags.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--images', type=int, default=4096, help='images in the packed dataset')
  parser.add_argument('--size', type=int, default=112, help='image side in pixels (stored, fed)')
  parser.add_argument('--batch', type=int, default=128, help='batch size')
  parser.add_argument(
    '--batches', type=int, default=24, help='timed batches per run (after 4 warm-up)'
  )
  parser.add_argument('--workers', default='0,1,2', help='worker counts (0 = threads)')
  parser.add_argument('--runs', type=int, default=3, help='runs per measurement (median)')
  args = parser.parse_args(argv[1:])
  args.workers = args.workers.split(',')
  return args


def cpu_seconds() -> float:
  """CPU time of this process plus its live child processes (grain workers)."""
  total = time.process_time()
  for child in multiprocessing.active_children():
    try:
      with open(f'/proc/{child.pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
      total += (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    except (OSError, IndexError, ValueError):
      pass
  return total


def make_jpegs(num_images: int, size: int) -> tuple[list[bytes], np.ndarray]:
  per_identity = 16
  jpegs, labels = [], []
  for identity in range(-(-num_images // per_identity)):
    for image in synthetic.render_identity(identity, per_identity, size, 0):
      ok, data = cv2.imencode('.jpg', image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
      assert ok
      jpegs.append(data.tobytes())
      labels.append(identity)
  return jpegs[:num_images], np.array(labels[:num_images])


def make_source(jpegs: list[bytes], labels: np.ndarray, directory: str):
  """(source, description): the JPEGs packed as an im2rec-style RecordIO on local disk."""
  from arcface_jax.data import recordio

  recordio.write_records(
    directory, zip(labels.tolist(), jpegs), header=False, num_classes=int(labels.max()) + 1
  )
  size_mb = os.path.getsize(os.path.join(directory, 'train.rec')) / 2**20
  return recordio.RecordDataset(directory), f'RecordIO on local disk ({size_mb:.0f} MB)'


def timed(fn) -> tuple[float, float]:
  """(wall seconds, CPU seconds) of fn()."""
  wall, cpu = time.perf_counter(), cpu_seconds()
  fn()
  return time.perf_counter() - wall, cpu_seconds() - cpu


def decode_loop(jpegs: list[bytes], decoder: str) -> None:
  for data in jpegs:
    if decoder == 'pil':
      image = np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))
    else:
      bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
      assert bgr is not None  # the JPEGs make_jpegs encoded: they decode
      image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    assert image.shape[2] == 3


def loader_run(
  loader: TrainLoader, batches: int, reference: list[np.ndarray]
) -> tuple[float, float, bool]:
  """(wall, cpu, identical): times `batches` batches after a warm-up of 4 (worker start-up)."""
  iterator = loader.iterate(0)
  warm = [next(iterator) for _ in range(4)]
  result = {}

  def consume():
    result['batches'] = [b['label'] for b in itertools.islice(iterator, batches)]

  wall, cpu = timed(consume)
  labels = [b['label'] for b in warm] + result['batches']
  identical = all(np.array_equal(a, b) for a, b in zip(labels, reference))
  return wall, cpu, identical


def main(args) -> None:
  jpegs, labels = make_jpegs(args.images, args.size)
  with tempfile.TemporaryDirectory() as directory:
    source, description = make_source(jpegs, labels, directory)
    mean_kb = np.mean([len(j) for j in jpegs]) / 1024
    print(
      f'{len(source)} images {args.size}x{args.size} JPEG q90 (mean {mean_kb:.1f} KB), '
      f'source: {description}; {os.cpu_count()} CPU cores visible; batch {args.batch}; '
      f'median of {args.runs} runs'
    )
    sample = jpegs[:2048]
    per_cpu_second = {}
    for name in ('pil', 'cv2'):
      decode_runs = [timed(lambda: decode_loop(sample, name)) for _ in range(args.runs)]
      wall = statistics.median(r[0] for r in decode_runs)
      cpu = statistics.median(r[1] for r in decode_runs)
      per_cpu_second[name] = len(sample) / cpu
      print(
        f'plain {name.upper():3s} decode loop   : {len(sample) / wall:8.0f} images/s wall '
        f'{len(sample) / cpu:8.0f} images/CPU-s'
      )

    def make_loader(workers: int) -> TrainLoader:
      return TrainLoader(
        source,
        global_batch_size=args.batch,
        seed=0,
        image_size=args.size,
        flip=True,
        num_workers=workers,
        prefetch=2,
      )

    reference = [make_loader(0).batch(step)['label'] for step in range(4 + args.batches)]
    for workers in (int(w) for w in args.workers):
      runs = [loader_run(make_loader(workers), args.batches, reference) for _ in range(args.runs)]
      count = args.batches * args.batch
      wall = statistics.median(r[0] for r in runs)
      cpu = statistics.median(r[1] for r in runs)
      mode = 'threads' if workers == 0 else f'{workers} worker{"s" * (workers > 1)}'
      per_cpu_second[mode] = count / cpu
      print(
        f'TrainLoader {mode:10s}       : {count / wall:8.0f} images/s wall '
        f'{count / cpu:8.0f} images/CPU-s  same batches as threads: '
        f'{"yes" if all(r[2] for r in runs) else "NO"}'
      )
    loader = next(m for m in per_cpu_second if m not in ('pil', 'cv2'))
    print(
      f'RESULT pipeline_images_per_cpu_s={per_cpu_second[loader]:.0f} '
      f'pipeline_vs_pil_loop={per_cpu_second[loader] / per_cpu_second["pil"]:.3f}'
    )


if __name__ == '__main__':
  app.run(main, flags_parser=parse_args)
