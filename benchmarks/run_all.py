"""Run every benchmark at its quick setting and rewrite the summary table of docs/benchmarks.md.

  .venv/bin/python benchmarks/run_all.py [--only head,backbone] [--timeout 600] [--dry-run]

Each benchmark ends with one line `RESULT key=value ...` of ratios measured side by side in its
own run; this driver runs them one after another (never two at once: they would time each
other), collects those lines, and replaces the block between the `bench:summary` markers of
docs/benchmarks.md with a table of every key, its value, the target where the issues set one,
and whether it is met, under the machine, the date and the versions. The detailed sections
below the table (how each figure is measured, earlier figures) are written by hand.

`make bench` runs this; about 15 minutes on 2 cores. A benchmark that fails or runs past its
timeout is listed as such, and the others still run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, 'docs', 'benchmarks.md')
BEGIN, END = '<!-- bench:summary:begin -->', '<!-- bench:summary:end -->'


@dataclass(frozen=True)
class Benchmark:
  name: str
  args: tuple[str, ...]  # the quick setting: what `make bench` can afford on 2 cores
  what: str


# Order: cheapest first, so a short budget still yields most of the table.
BENCHMARKS = (
  Benchmark('train_step', (), 'training loop vs the bare jitted step'),
  Benchmark('head', (), 'margin-softmax head, forward + backward, vs PyTorch'),
  Benchmark('backbone', (), 'IResNet-50 and MobileFaceNet train steps vs PyTorch; bf16 vs fp32'),
  Benchmark(
    'input_pipeline',
    ('--images=1024', '--batches=8', '--runs=3', '--workers=0'),
    'read → decode → flip → batch, per CPU-second',
  ),
  Benchmark(
    'evaluation',
    ('--images=256', '--runs=5', '--extract_runs=3'),
    'verification protocol; extraction vs the bare forward',
  ),
  Benchmark(
    'partial_fc',
    ('--classes=100000', '--reps=2'),
    'Partial FC r=0.1 vs the full chunked softmax (8 virtual devices)',
  ),
  Benchmark(
    'finetune',
    ('--steps=5', '--runs=3', '--batch_size=32'),
    'frozen-backbone fine-tuning vs full training',
  ),
  Benchmark('faces', ('--photos=4', '--runs=3'), 'detect + align + embed vs the reference MTCNN'),
)

at_least = lambda bound: (f'≥ {bound:g}', lambda value: value >= bound)  # noqa: E731
at_most = lambda bound: (f'≤ {bound:g}', lambda value: value <= bound)  # noqa: E731

# Targets the issues set; other keys are reported without one.
TARGETS: dict[str, tuple[str, Callable[[float], bool]]] = {
  'loop_overhead': at_most(0.05),
  'head_vs_torch': at_least(1.0),
  'head_bound': at_least(0.75),
  'head_mem_vs_torch': at_most(1.5),
  'iresnet50_vs_torch': at_least(1.0),
  'mobilefacenet_vs_torch': at_least(1.0),
  'bf16_vs_fp32': at_least(1.0),
  'pipeline_images_per_cpu_s': at_least(2500),
  'partial_fc_speedup': at_least(3.0),
  'mp_head_bound': at_least(0.75),
  # The user's warm run (`faces verify` until its answer); first_photo_warm_s, a script without
  # the command's start-up and with a Flax-traced embedder, is reported as a diagnostic.
  'first_photo_cli_warm_s': at_most(5.0),
  'faces_vs_reference': at_least(1.0),
}

RESULT_LINE = re.compile(r'^RESULT((?:\s+[\w.]+=\S+)+)\s*$', re.MULTILINE)


def parse_results(output: str) -> dict[str, str]:
  """The key=value pairs of the last `RESULT` line of a benchmark's output ({} when none)."""
  lines = RESULT_LINE.findall(output)
  if not lines:
    return {}
  return dict(pair.split('=', 1) for pair in lines[-1].split())


def run_benchmark(benchmark: Benchmark, timeout: float) -> tuple[dict[str, str], str, float]:
  """(results, status, seconds): status is 'ok', 'failed (exit N)', 'timed out' or 'no RESULT'."""
  command = [sys.executable, os.path.join('benchmarks', f'{benchmark.name}.py'), *benchmark.args]
  print(f'\n=== {benchmark.name}: {" ".join(command[1:])}', flush=True)
  start = time.perf_counter()
  lines: list[str] = []
  process = subprocess.Popen(
    command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
  )
  assert process.stdout is not None
  try:
    deadline = start + timeout
    for line in process.stdout:  # echoed as it comes: a long benchmark must not look frozen
      sys.stdout.write(line)
      lines.append(line)
      if time.perf_counter() > deadline:
        raise subprocess.TimeoutExpired(command, timeout)
    process.wait(timeout=max(1.0, deadline - time.perf_counter()))
  except subprocess.TimeoutExpired:
    process.kill()
    process.wait()
    return parse_results(''.join(lines)), 'timed out', time.perf_counter() - start
  seconds = time.perf_counter() - start
  results = parse_results(''.join(lines))
  if process.returncode != 0:
    return results, f'failed (exit {process.returncode})', seconds
  return results, 'ok' if results else 'no RESULT line', seconds


def machine_line() -> str:
  """CPU model, cores, load, date and the versions the figures depend on."""
  model = platform.processor() or 'unknown CPU'
  try:
    with open('/proc/cpuinfo') as cpuinfo:
      model = next(
        line.split(':', 1)[1].strip() for line in cpuinfo if line.startswith('model name')
      )
  except (OSError, StopIteration):
    pass
  versions = []
  for package in ('jax', 'jaxlib', 'flax', 'torch', 'numpy'):
    try:
      versions.append(f'{package} {metadata.version(package)}')
    except metadata.PackageNotFoundError:
      versions.append(f'{package} absent')
  load = ', '.join(f'{x:.1f}' for x in os.getloadavg())
  return (
    f'{datetime.date.today()} · {model}, {os.cpu_count()} cores, load average {load} at '
    f'the start · Python {platform.python_version()}, {", ".join(versions)}'
  )


def summary_table(
  rows: list[tuple[Benchmark, dict[str, str], str, float]],
  machine: str | None = None,
  only: tuple[str, ...] = (),
) -> str:
  """The markdown block that goes between the markers; `machine` as `machine_line()` read it
  before the runs, `only` the benchmarks chosen with --only (none: all of them)."""
  what = (
    f'`benchmarks/run_all.py --only {",".join(only)}` (the other benchmarks were not run this '
    'time; their latest figures are in the sections below)'
    if only
    else '`make bench`'
  )
  out = [
    BEGIN,
    '',
    f'Last run: {what}, {machine or machine_line()}. No accelerator was lent for this run: '
    'CPU figures only.',
    '',
    '| benchmark | key | value | target | met |',
    '|---|---|---:|---|---|',
  ]
  for benchmark, results, status, seconds in rows:
    if status != 'ok':
      out.append(f'| {benchmark.name} ({seconds:.0f} s) | – | {status} | | |')
    for key, value in results.items():
      target, met = TARGETS.get(key, ('', None))
      verdict = ''
      if met is not None:
        try:
          verdict = 'yes' if met(float(value)) else '**no**'
        except ValueError:
          verdict = '?'
      out.append(
        f'| {benchmark.name} ({seconds:.0f} s) | `{key}` | {value} | {target} | {verdict} |'
      )
  out += ['', END]
  return '\n'.join(out)


def rewrite_summary(document: str, block: str) -> str:
  """`document` with the marked block replaced (inserted after the title when absent)."""
  if BEGIN in document and END in document:
    head, rest = document.split(BEGIN, 1)
    return head + block + rest.split(END, 1)[1]
  title, _, body = document.partition('\n')
  return f'{title}\n\n{block}\n{body}'


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog='python benchmarks/run_all.py',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument('--only', default='', help='comma-separated benchmark names (default: all)')
  parser.add_argument('--timeout', type=float, default=600, help='seconds per benchmark')
  parser.add_argument(
    '--dry-run', action='store_true', help='print the table instead of rewriting docs/benchmarks.md'
  )
  args = parser.parse_args(argv)
  names = [name for name in args.only.split(',') if name]
  known = {benchmark.name for benchmark in BENCHMARKS}
  unknown = sorted(set(names) - known)
  if unknown:
    parser.error(f'unknown benchmark(s) {", ".join(unknown)}; known: {", ".join(sorted(known))}')
  machine = machine_line()  # the load average before the benchmarks add theirs
  rows = [(b, *run_benchmark(b, args.timeout)) for b in BENCHMARKS if not names or b.name in names]
  block = summary_table(rows, machine, tuple(names))
  print('\n' + block)
  if not args.dry_run:
    with open(DOC) as f:
      document = f.read()
    with open(DOC, 'w') as f:
      f.write(rewrite_summary(document, block))
    print(f'\nwrote the summary table of {os.path.relpath(DOC, ROOT)}')
  return 0 if all(status == 'ok' for _, _, status, _ in rows) else 1


if __name__ == '__main__':
  sys.exit(main())
