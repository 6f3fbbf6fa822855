"""The import layering of `arcface_jax` and `analysis`, read from the source (nothing is imported).

Every module of the two packages is parsed with `ast`, imports inside functions included (a lazy
import is still a dependency, only a later one); imports under `if TYPE_CHECKING:` are left out
(they never run: annotations only). The rules:
- no import cycle between `arcface_jax` modules;
- `arcface_jax` never imports `analysis` (analysis is a client of the library);
- only training imports the training loop (`arcface_jax.trainer`, `arcface_jax.train_step`), so
  loading a model never pulls it in. Training is the modules in `TRAINING`: the commands that train
  runs and the loop itself;
- `analysis` reads runs through the public loading API (`arcface_jax.inference`,
  `arcface_jax.reporting.read_config`), not the checkpoint layout (`arcface_jax.checkpointing`,
  `checkpoint_reading`, `checkpoint_integrity`).

Each failure names the chain of imports with file and line, so the offending line is one click
away. The checker runs on a tiny planted package too, to show that each rule can fail.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import textwrap
from typing import TypeGuard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('arcface_jax', 'analysis')

TRAINING_LOOP = ('arcface_jax.trainer', 'arcface_jax.train_step')
# Modules that train runs, and so may import the training loop.
TRAINING = (
  'arcface_jax.train',  # the `train` command
  'arcface_jax.trainer',  # the loop: train_and_evaluate(config, workdir)
  'arcface_jax.train_step',  # the jitted step
  'arcface_jax.search',  # hyper-parameter search: trains one run per cell
  'arcface_jax.demo',  # `make demo`: trains the synthetic recipe, then evaluates it
  'analysis.toy_figures',  # `make figures`: trains the digits toy once per loss
  'analysis.loss_table',  # trains one run per loss and seed for the comparison table
)
CHECKPOINT_LAYOUT = (
  'arcface_jax.checkpointing',
  'arcface_jax.checkpoint_reading',
  'arcface_jax.checkpoint_integrity',
)


@dataclasses.dataclass(frozen=True)
class Import:
  source: str  # importing module, dotted
  target: str  # imported module, dotted
  path: str  # file of `source`, relative to the root
  line: int

  def __str__(self) -> str:
    return f'{self.source} -> {self.target} ({self.path}:{self.line})'


def module_files(root: str, packages: tuple[str, ...]) -> dict[str, str]:
  """Dotted module name -> file path, for every .py file of `packages` under `root`."""
  modules = {}
  for package in packages:
    for directory, dirnames, filenames in os.walk(os.path.join(root, package)):
      dirnames[:] = sorted(d for d in dirnames if not d.startswith(('.', '__')))
      parts = os.path.relpath(directory, root).split(os.sep)
      for filename in sorted(filenames):
        if filename.endswith('.py'):
          name = parts if filename == '__init__.py' else parts + [filename[:-3]]
          modules['.'.join(name)] = os.path.join(directory, filename)
  return modules


def _resolve(name: str, modules: dict[str, str]) -> str | None:
  """The longest known module that `name` (a module or an attribute of one) lies in."""
  while name:
    if name in modules:
      return name
    name = name.rpartition('.')[0]
  return None


def _is_type_checking(node: ast.AST) -> TypeGuard[ast.If]:
  if not isinstance(node, ast.If):
    return False
  test = node.test
  return (isinstance(test, ast.Name) and test.id == 'TYPE_CHECKING') or (
    isinstance(test, ast.Attribute) and test.attr == 'TYPE_CHECKING'
  )


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
  """Every node of `tree` but those under `if TYPE_CHECKING:` (never executed: annotations only)."""
  nodes, stack = [], [tree]
  while stack:
    node = stack.pop()
    nodes.append(node)
    if _is_type_checking(node):
      stack.extend(node.orelse)
    else:
      stack.extend(ast.iter_child_nodes(node))
  return nodes


def imports(root: str, packages: tuple[str, ...]) -> list[Import]:
  """Every import between modules of `packages`, at any depth of the code."""
  modules = module_files(root, packages)
  found = []
  for source, path in modules.items():
    is_package = path.endswith('__init__.py')
    with open(path, encoding='utf-8') as f:
      tree = ast.parse(f.read(), path)
    for node in _runtime_nodes(tree):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:  # relative: from the package of `source`
          package = source.split('.')
          package = package[: len(package) - node.level + (1 if is_package else 0)]
          base = '.'.join(package + ([base] if base else []))
        # `from pkg import sub` imports the submodule when there is one, else pkg itself.
        names = [
          f'{base}.{alias.name}' if f'{base}.{alias.name}' in modules else base
          for alias in node.names
        ]
      else:
        continue
      for name in names:
        target = _resolve(name, modules)
        if target is not None and target != source:
          found.append(Import(source, target, os.path.relpath(path, root), node.lineno))
  return sorted(set(found), key=lambda i: (i.source, i.target, i.line))


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
  return any(module == p or module.startswith(p + '.') for p in prefixes)


def cycles(edges: list[Import], package: str) -> list[list[Import]]:
  """One shortest cycle through each module of `package` that lies on a cycle, deduplicated."""
  graph: dict[str, list[Import]] = {}
  for edge in edges:
    if _within(edge.source, (package,)) and _within(edge.target, (package,)):
      graph.setdefault(edge.source, []).append(edge)
  found, seen = [], set()
  for start in sorted(graph):
    # Breadth-first from `start`: the shortest chain of imports leading back to it.
    chains: dict[str, list[Import]] = {start: []}
    queue = [start]
    cycle = None
    while queue and cycle is None:
      node = queue.pop(0)
      for edge in graph.get(node, []):
        if edge.target == start:
          cycle = chains[node] + [edge]
          break
        if edge.target not in chains:
          chains[edge.target] = chains[node] + [edge]
          queue.append(edge.target)
    if cycle is not None:
      key = frozenset(e.source for e in cycle)
      if key not in seen:
        seen.add(key)
        found.append(cycle)
  return found


def violations(
  root: str, packages: tuple[str, ...] = PACKAGES, *, training: tuple[str, ...] = TRAINING
) -> list[str]:
  """Every broken rule, each as one message naming the chain of imports."""
  edges = imports(root, packages)
  problems = []
  for cycle in cycles(edges, 'arcface_jax'):
    chain = ' -> '.join([cycle[0].source] + [e.target for e in cycle])
    problems.append(f'import cycle {chain}:\n    ' + '\n    '.join(map(str, cycle)))
  for edge in edges:
    if _within(edge.source, ('arcface_jax',)) and _within(edge.target, ('analysis',)):
      problems.append(f'arcface_jax imports analysis (analysis is a client of the library): {edge}')
    if _within(edge.target, TRAINING_LOOP) and not _within(edge.source, training):
      problems.append(
        f'{edge.source} is not training but imports the training loop: {edge}; '
        'take models/losses/optim/train_state/inference instead'
      )
    if _within(edge.source, ('analysis',)) and _within(edge.target, CHECKPOINT_LAYOUT):
      problems.append(
        f'analysis reads the checkpoint layout: {edge}; read runs through '
        'arcface_jax.inference and arcface_jax.reporting.read_config'
      )
  return problems


def test_the_code_keeps_its_layers():
  problems = violations(ROOT)
  assert not problems, '\n'.join(problems)


def test_the_checker_sees_function_level_and_relative_imports():
  edges = {(e.source, e.target) for e in imports(ROOT, PACKAGES)}
  assert ('arcface_jax.trainer', 'arcface_jax.train_step') in edges  # top level
  assert ('arcface_jax.train', 'arcface_jax.trainer') in edges  # inside main()
  assert ('arcface_jax.models', 'arcface_jax.models.iresnet') in edges  # `from pkg import mod`


def _write(root, files: dict[str, str]) -> str:
  for name, text in files.items():
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
  return str(root)


def test_a_planted_violation_of_each_rule_fails(tmp_path):
  root = _write(
    tmp_path,
    {
      'arcface_jax/__init__.py': '',
      'arcface_jax/trainer.py': 'from arcface_jax import models\n',
      'arcface_jax/train_step.py': '',
      'arcface_jax/models.py': 'import numpy\n',
      # A cycle through a lazy, relative import: data.sources -> data.synthetic -> data.sources.
      'arcface_jax/data/__init__.py': '',
      'arcface_jax/data/sources.py': 'from arcface_jax.data import synthetic\n',
      'arcface_jax/data/synthetic.py': 'def f():\n  from .sources import get\n',
      # Loading a model pulls in the train step.
      'arcface_jax/inference.py': 'def load():\n  from arcface_jax.train_step import x\n',
      'arcface_jax/plots.py': 'import analysis.angles\n',
      'arcface_jax/checkpointing.py': '',
      'analysis/__init__.py': '',
      'analysis/angles.py': 'from arcface_jax.checkpointing import MODEL_ITEM\n',
    },
  )
  problems = violations(root, training=('arcface_jax.trainer', 'arcface_jax.train_step'))
  text = '\n'.join(problems)
  assert len(problems) == 4, text
  assert (
    'import cycle arcface_jax.data.sources -> arcface_jax.data.synthetic -> '
    'arcface_jax.data.sources'
  ) in text
  assert 'arcface_jax/data/synthetic.py:2' in text  # the lazy import's line
  assert (
    'arcface_jax.inference is not training but imports the training loop: '
    'arcface_jax.inference -> arcface_jax.train_step (arcface_jax/inference.py:2)'
  ) in text
  assert 'arcface_jax imports analysis' in text and 'arcface_jax/plots.py:1' in text
  assert (
    'analysis reads the checkpoint layout: analysis.angles -> arcface_jax.checkpointing' in text
  )


def test_the_planted_package_passes_once_mended(tmp_path):
  root = _write(
    tmp_path,
    {
      'arcface_jax/__init__.py': '',
      'arcface_jax/trainer.py': 'from arcface_jax import train_step\n',
      'arcface_jax/train_step.py': '',
      'arcface_jax/data/__init__.py': '',
      'arcface_jax/data/sources.py': 'from arcface_jax.data import synthetic\n',
      'arcface_jax/data/synthetic.py': 'import os\n',
      'analysis/__init__.py': '',
      'analysis/angles.py': 'from arcface_jax import data\n',
    },
  )
  assert violations(root, training=('arcface_jax.trainer',)) == []
