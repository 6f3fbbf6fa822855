"""Rewrites of the primitive-by-primitive graph into the layers a face-model reader expects.

`translate` writes what the jaxpr says: a PReLU as GreaterOrEqual/Mul/Where, a ReLU as Max with
zero, an eval-mode batch norm as Sub/Mul/Add with constants, a flatten of a channel-first map as
Transpose + Flatten. Here each becomes the single ONNX layer a PyTorch export would have (PRelu,
Relu, a Conv with its bias and batch norm folded in, or BatchNormalization where no conv precedes it, and
Flatten straight into a MatMul whose rows were permuted), so that the file is small and fast and
readers that pair layers by kind (`arcface_jax.models.import_onnx`) recognise it. Every rewrite
is exact up to float32 rounding; anything that does not match a pattern is left as it is.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

BN_EPSILON = 1e-5  # written into BatchNormalization nodes; the variance absorbs any other value


class Graph:
  """Nodes (onnx NodeProto, in order), initializers and the graph's output name."""

  def __init__(
    self,
    onnx_module: Any,
    nodes: list[Any],
    initializers: dict[str, np.ndarray],
    output: str,
    protected: set[str],
  ):
    self.onnx = onnx_module
    self.nodes = nodes
    self.initializers = initializers
    self.output = output
    self.protected = protected  # node names no rewrite may touch (the input normalisation)
    self._count = 0

  def fresh(self, stem: str) -> str:
    self._count += 1
    return f'{stem}_r{self._count}'

  def producers(self) -> dict[str, Any]:
    return {out: node for node in self.nodes for out in node.output}

  def uses(self) -> collections.Counter:
    count = collections.Counter(name for node in self.nodes for name in node.input)
    count[self.output] += 1
    return count

  def const(self, name: str) -> np.ndarray | None:
    return self.initializers.get(name)

  def add_const(self, value: np.ndarray, stem: str) -> str:
    name = self.fresh(stem)
    self.initializers[name] = np.ascontiguousarray(value)
    return name

  def make(self, op: str, inputs: list[str], output: str, **attrs: Any) -> Any:
    return self.onnx.helper.make_node(op, inputs, [output], name=self.fresh(op), **attrs)

  def split_const(self, node: Any) -> tuple[str, np.ndarray] | None:
    """(the tensor input, the constant input) of a two-input node with one of each."""
    a, b = node.input
    const_a, const_b = self.const(a), self.const(b)
    if const_b is not None and const_a is None:
      return a, const_b
    if const_a is not None and const_b is None and node.op_type != 'Sub':
      return b, const_a
    return None

  def prune(self) -> None:
    """Drops nodes nothing needs and initializers no node reads."""
    needed = {self.output}
    kept = []
    for node in reversed(self.nodes):
      if any(o in needed for o in node.output):
        kept.append(node)
        needed.update(node.input)
    self.nodes = kept[::-1]
    self.initializers = {k: v for k, v in self.initializers.items() if k in needed}


def prelu_and_relu(g: Graph) -> None:
  """Where(x >= 0, x, slope·x) → PRelu(x, slope); Max(x, 0) → Relu(x)."""
  producers = g.producers()
  for i, node in enumerate(g.nodes):
    if node.op_type == 'Max' and len(node.input) == 2:
      split = g.split_const(node)
      if split is not None and not np.any(split[1]):
        g.nodes[i] = g.make('Relu', [split[0]], node.output[0])
    if node.op_type != 'Where':
      continue
    cond, x, negative = (producers.get(n) for n in node.input)
    if cond is None or negative is None or cond.op_type not in ('GreaterOrEqual', 'Greater'):
      continue
    zero = g.const(cond.input[1])
    if cond.input[0] != node.input[1] or zero is None or np.any(zero):
      continue
    if negative.op_type != 'Mul' or node.input[1] not in negative.input:
      continue
    split = g.split_const(negative)
    if split is None or split[0] != node.input[1]:
      continue
    slope = split[1]
    while slope.ndim > 1 and slope.shape[0] == 1:  # (1, C, 1, 1) → (C, 1, 1), PyTorch's shape
      slope = slope[0]
    g.nodes[i] = g.make(
      'PRelu',
      [node.input[1], g.add_const(slope.reshape(slope.shape or (1,)), 'slope')],
      node.output[0],
    )
  g.prune()


def _channel_vector(value: np.ndarray) -> np.ndarray | None:
  """The (C,) vector of a constant shaped (1, C, 1, ...) (channels on ONNX axis 1), or None."""
  if value.ndim < 2 or value.shape[0] != 1 or any(d != 1 for d in value.shape[2:]):
    return None
  return value.reshape(-1).astype(np.float64)


def conv_biases(g: Graph) -> None:
  """Conv(x, W) + b with a per-channel constant b → Conv(x, W, b)."""
  producers, uses = g.producers(), g.uses()
  for i, add in enumerate(g.nodes):
    split = g.split_const(add) if add.op_type == 'Add' else None
    if split is None:
      continue
    conv, bias = producers.get(split[0]), _channel_vector(split[1])
    if conv is None or conv.op_type != 'Conv' or bias is None or uses[split[0]] != 1:
      continue
    kernel = g.const(conv.input[1])
    if kernel is None or kernel.shape[0] != bias.size:
      continue
    old = g.const(conv.input[2]) if len(conv.input) > 2 else np.zeros(bias.size)
    if old is None:
      continue  # a bias computed by other nodes: nothing constant to add to
    attrs = {a.name: g.onnx.helper.get_attribute_value(a) for a in conv.attribute}
    new_bias = g.add_const((old.astype(np.float64) + bias).astype(np.float32), 'bias')
    g.nodes[i] = g.make('Conv', [conv.input[0], conv.input[1], new_bias], add.output[0], **attrs)
  g.prune()


def batch_norms(g: Graph) -> None:
  """(x − m)·f + b with per-channel constants → a Conv absorbing it, or BatchNormalization."""
  producers, uses = g.producers(), g.uses()
  replaced: dict[str, Any] = {}  # name of a node to swap → its replacement (None: remove)
  for add in g.nodes:
    if add.op_type != 'Add':
      continue
    add_split = g.split_const(add)
    if add_split is None:
      continue
    mul = producers.get(add_split[0])
    if mul is None or mul.op_type != 'Mul' or uses[mul.output[0]] != 1:
      continue
    bias = _channel_vector(add_split[1])
    mul_split = g.split_const(mul)
    if mul_split is None:
      continue
    sub = producers.get(mul_split[0])
    if sub is None or sub.op_type != 'Sub' or uses[sub.output[0]] != 1 or sub.name in g.protected:
      continue
    factor = _channel_vector(mul_split[1])
    mean = g.const(sub.input[1])
    mean = None if mean is None or g.const(sub.input[0]) is not None else _channel_vector(mean)
    if (
      bias is None
      or factor is None
      or mean is None
      or not (bias.shape == factor.shape == mean.shape)
    ):
      continue
    if any(n.name in replaced for n in (add, mul, sub)):
      continue
    x = sub.input[0]
    conv = producers.get(x)
    kernel: np.ndarray | None = None
    conv_bias: np.ndarray | None = None
    if conv is not None and conv.op_type == 'Conv':
      kernel = g.const(conv.input[1])
      conv_bias = g.const(conv.input[2]) if len(conv.input) > 2 else np.zeros(factor.size)
    if (
      conv is not None
      and kernel is not None
      and conv_bias is not None  # a computed bias cannot absorb the shift
      and uses[x] == 1
      and kernel.shape[0] == factor.size
    ):
      new_kernel = kernel.astype(np.float64) * factor[:, None, None, None]
      new_bias = (conv_bias.astype(np.float64) - mean) * factor + bias
      attrs = {a.name: g.onnx.helper.get_attribute_value(a) for a in conv.attribute}
      replaced[conv.name] = g.make(
        'Conv',
        [
          conv.input[0],
          g.add_const(new_kernel.astype(np.float32), 'kernel'),
          g.add_const(new_bias.astype(np.float32), 'bias'),
        ],
        add.output[0],
        **attrs,
      )
      replaced[add.name] = None
    else:
      # Scale ±1 and variance 1/f² − ε give (x − m)·f exactly, whether or not the layer had a
      # learnt scale, so a scale-less batch norm (IResNet's embedding BN) stays scale-less.
      with np.errstate(divide='ignore', over='ignore'):
        var = 1.0 / factor**2 - BN_EPSILON
      scale = np.sign(factor)
      flat = ~np.isfinite(var) | (factor == 0)
      var, scale = np.where(flat, 1.0 - BN_EPSILON, var), np.where(flat, factor, scale)
      arrays = [
        g.add_const(a.astype(np.float32), stem)
        for a, stem in ((scale, 'bn_scale'), (bias, 'bn_bias'), (mean, 'bn_mean'), (var, 'bn_var'))
      ]
      replaced[add.name] = g.make(
        'BatchNormalization', [x] + arrays, add.output[0], epsilon=BN_EPSILON
      )
    replaced[mul.name] = replaced[sub.name] = None
  nodes = []
  for node in g.nodes:
    if node.name in replaced:
      if replaced[node.name] is not None:
        nodes.append(replaced[node.name])
    else:
      nodes.append(node)
  g.nodes = nodes
  g.prune()


def flatten_into_matmul(g: Graph, shapes: dict[str, tuple]) -> None:
  """MatMul(Flatten(Transpose(x)), W) → MatMul(Flatten(x), W with its rows permuted).

  `shapes` maps value names to their (inferred) shapes; x's must be static past the batch.
  """
  producers, uses = g.producers(), g.uses()
  for i, matmul in enumerate(g.nodes):
    if matmul.op_type != 'MatMul':
      continue
    weight = g.const(matmul.input[1])
    if weight is None:
      continue
    flat = producers.get(matmul.input[0])
    if flat is None or flat.op_type != 'Flatten' or uses[flat.output[0]] != 1:
      continue
    transpose = producers.get(flat.input[0])
    if transpose is None or transpose.op_type != 'Transpose' or uses[transpose.output[0]] != 1:
      continue
    perm = list(g.onnx.helper.get_attribute_value(transpose.attribute[0]))
    shape = shapes.get(transpose.input[0])
    if perm[0] != 0 or shape is None or not all(isinstance(d, int) for d in shape[1:]):
      continue
    # Rows of W follow the transposed map's flatten order; re-order them to x's own.
    transposed_dims = [shape[p] for p in perm[1:]]
    rows = weight.reshape(*transposed_dims, weight.shape[1])
    inverse = [perm[1:].index(a) for a in range(1, len(perm))]
    rows = np.transpose(rows, inverse + [len(inverse)]).reshape(weight.shape)
    new_flat = g.fresh('Flatten') + ':0'
    g.nodes[i] = g.make('MatMul', [new_flat, g.add_const(rows, 'weight')], matmul.output[0])
    g.nodes.insert(i, g.make('Flatten', [transpose.input[0]], new_flat, axis=1))
  g.prune()
