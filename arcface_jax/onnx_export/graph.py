"""What a jaxpr → ONNX translation carries and writes: its two kinds of values and the graph.

A value is a `Const` (a numpy array, folded at export time: `NUMPY_FOLDS` evaluates the
arithmetic batch norm and dense layers do on constants) or a run-time `Tensor`, an ONNX name
with its JAX shape and its layout `perm` (ONNX axis i holds JAX axis perm[i]). `GraphBuilder`
collects nodes and initializers in emission order; `onnx_export/translate.py` drives it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import numpy as np


def _broadcast_in_dim(
  x: np.ndarray, shape: Sequence[int], broadcast_dimensions: Sequence[int], **_: Any
) -> np.ndarray:
  expanded = [1] * len(shape)
  for src, dst in enumerate(broadcast_dimensions):
    expanded[dst] = x.shape[src]
  return np.broadcast_to(x.reshape(expanded), shape)


# Constant folding of the primitives batch norm and dense layers use, in numpy.
NUMPY_FOLDS: dict[str, Callable[..., np.ndarray]] = {
  'add': lambda a, b, **_: a + b,
  'sub': lambda a, b, **_: a - b,
  'mul': lambda a, b, **_: a * b,
  'div': lambda a, b, **_: a / b,
  'max': lambda a, b, **_: np.maximum(a, b),
  'min': lambda a, b, **_: np.minimum(a, b),
  'neg': lambda a, **_: -a,
  'sqrt': lambda a, **_: np.sqrt(a),
  'rsqrt': lambda a, **_: 1 / np.sqrt(a),
  'reshape': lambda a, new_sizes, **_: np.reshape(a, new_sizes),
  'broadcast_in_dim': _broadcast_in_dim,
  'convert_element_type': lambda a, new_dtype, **_: np.asarray(a, new_dtype),
  'transpose': lambda a, permutation, **_: np.transpose(a, permutation),
  'squeeze': lambda a, dimensions, **_: np.squeeze(a, tuple(dimensions)),
}


@dataclasses.dataclass
class Const:
  value: np.ndarray  # the full array, or (for a symbolic shape) one broadcastable to it
  shape: tuple  # JAX shape, may hold the symbolic batch


@dataclasses.dataclass
class Tensor:
  name: str
  shape: tuple  # JAX shape, may hold the symbolic batch
  perm: tuple[int, ...]  # ONNX axis i is JAX axis perm[i]

  @property
  def physical_shape(self) -> tuple:
    return tuple(self.shape[p] for p in self.perm)


def is_static(shape: Sequence[Any]) -> bool:
  return not any(jax.export.is_symbolic_dim(d) for d in shape)


def identity(rank: int) -> tuple[int, ...]:
  return tuple(range(rank))


class GraphBuilder:
  """Nodes and initializers in emission order; names are `<Op>_<n>` (insightface reads them)."""

  def __init__(self, onnx_module: Any):
    self.onnx = onnx_module
    self.nodes: list[Any] = []
    self.initializers: dict[str, np.ndarray] = {}
    self._count = 0

  def fresh(self, stem: str) -> str:
    self._count += 1
    return f'{stem}_{self._count}'

  def const(self, value: np.ndarray, stem: str = 'const') -> str:
    name = self.fresh(stem)
    self.initializers[name] = np.asarray(value)
    return name

  def node(self, op: str, inputs: Sequence[str], **attrs: Any) -> str:
    name = self.fresh(op)
    output = name + ':0'
    self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [output], name=name, **attrs))
    return output
