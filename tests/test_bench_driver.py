"""The `make bench` driver: RESULT lines parsed, the summary block of the doc replaced in place."""

from benchmarks import run_all


def test_last_result_line_wins_and_other_output_is_ignored():
  output = (
    'compiling ...\nRESULT head_vs_torch=0.9\nnoise RESULT x=1\n'
    'RESULT head_vs_torch=1.92 head_bound=0.81\n'
  )
  assert run_all.parse_results(output) == {'head_vs_torch': '1.92', 'head_bound': '0.81'}
  assert run_all.parse_results('no result here\n') == {}


def test_summary_block_is_replaced_not_appended():
  rows = [
    (run_all.BENCHMARKS[0], {'loop_overhead': '0.031'}, 'ok', 12.0),
    (run_all.BENCHMARKS[1], {'head_bound': '0.70'}, 'failed (exit 1)', 3.0),
  ]
  block = run_all.summary_table(rows)
  assert '| `loop_overhead` | 0.031 | ≤ 0.05 | yes |' in block
  assert '| `head_bound` | 0.70 | ≥ 0.75 | **no** |' in block
  assert 'failed (exit 1)' in block
  document = '# Benchmarks\n\nintro\n\n## Section\nold figures\n'
  once = run_all.rewrite_summary(document, block)
  twice = run_all.rewrite_summary(once, block.replace('0.031', '0.029'))
  assert once.count(run_all.BEGIN) == twice.count(run_all.BEGIN) == 1
  assert '0.029' in twice and '0.031' not in twice
  assert twice.endswith('## Section\nold figures\n')


def test_summary_says_which_benchmarks_ran_and_keeps_the_machine_line_given():
  rows = [(run_all.BENCHMARKS[0], {'loop_overhead': '0.031'}, 'ok', 12.0)]
  machine = '2026-12-01 · some CPU, 2 cores, load average 0.5, 0.5, 0.5 at the start'
  partial = run_all.summary_table(rows, machine, ('train_step',))
  assert 'Last run: `benchmarks/run_all.py --only train_step` (the other' in partial
  assert machine in partial
  assert 'Last run: `make bench`, ' in run_all.summary_table(rows, machine)
