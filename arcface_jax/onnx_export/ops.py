"""The per-primitive rules of the jaxpr → ONNX translation: `OpRules`, which `translate.Translator`
extends with the walk over the jaxpr and the folding of constants.

A rule `op_<primitive>(eqn, ins, aval) -> Tensor` emits the ONNX nodes of one equation with at
least one run-time input: elementwise arithmetic (`BINARY`, `UNARY` and the few that take more
than one node), layout ops (transpose, reshape, broadcast, concatenate), reductions and pools,
convolution and the matrix product. Operands carry their layout (`Tensor.perm`, see `translate`);
`as_input` and `to_layout` put them into the order a rule needs.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from arcface_jax.onnx_export.graph import Const, GraphBuilder, Tensor, identity, is_static

# JAX primitive → ONNX op for elementwise work (ONNX broadcasts like numpy, as lax's scalars do).
BINARY = {
  'add': 'Add',
  'sub': 'Sub',
  'mul': 'Mul',
  'div': 'Div',
  'max': 'Max',
  'min': 'Min',
  'pow': 'Pow',
  'ge': 'GreaterOrEqual',
  'gt': 'Greater',
  'le': 'LessOrEqual',
  'lt': 'Less',
  'eq': 'Equal',
  'and': 'And',
  'or': 'Or',
}
UNARY = {
  'neg': 'Neg',
  'exp': 'Exp',
  'log': 'Log',
  'sqrt': 'Sqrt',
  'abs': 'Abs',
  'tanh': 'Tanh',
  'logistic': 'Sigmoid',
  'erf': 'Erf',
  'sign': 'Sign',
  'floor': 'Floor',
  'ceil': 'Ceil',
  'sin': 'Sin',
  'cos': 'Cos',
  'not': 'Not',
}
ELEMENTWISE = (
  set(BINARY)
  | set(UNARY)
  | {'rsqrt', 'integer_pow', 'square', 'select_n', 'ne', 'convert_element_type', 'clamp'}
)


class OpRules:
  """One method per supported primitive, emitting ONNX nodes through a `GraphBuilder`."""

  def __init__(self, builder: GraphBuilder):
    self.g = builder
    self.onnx = builder.onnx

  # ---------------------------------------------------------------- operands
  def as_input(self, value: Const | Tensor, perm: tuple[int, ...]) -> str:
    """An ONNX name for `value` laid out by `perm` (constants transposed here, for free)."""
    if isinstance(value, Tensor):
      return self.to_layout(value, perm).name
    array = value.value
    if array.ndim == len(perm) and array.ndim > 0:
      array = np.transpose(array, perm)
    return self.g.const(array)

  def to_layout(self, t: Tensor, perm: tuple[int, ...]) -> Tensor:
    if t.perm == tuple(perm):
      return t
    # ONNX axis i of the result is ONNX axis order[i] of the input.
    order = [t.perm.index(p) for p in perm]
    return Tensor(self.g.node('Transpose', [t.name], perm=order), t.shape, tuple(perm))

  # ---------------------------------------------------------------- elementwise
  def elementwise(self, eqn: Any, ins: list[Const | Tensor], aval: Any) -> Tensor:
    name = eqn.primitive.name
    rank = len(aval.shape)
    perm = next(x.perm for x in ins if isinstance(x, Tensor) and len(x.shape) == rank)
    args = [self.as_input(x, perm) for x in ins]
    if name in BINARY:
      out = self.g.node(BINARY[name], args)
    elif name == 'ne':
      out = self.g.node('Not', [self.g.node('Equal', args)])
    elif name in UNARY:
      out = self.g.node(UNARY[name], args)
    elif name == 'rsqrt':
      out = self.g.node('Reciprocal', [self.g.node('Sqrt', args)])
    elif name == 'square' or name == 'integer_pow' and eqn.params['y'] == 2:
      out = self.g.node('Mul', [args[0], args[0]])
    elif name == 'integer_pow':
      exponent = self.g.const(np.asarray(eqn.params['y'], aval.dtype))
      out = self.g.node('Pow', [args[0], exponent])
    elif name == 'select_n':
      if len(args) != 3 or np.dtype(eqn.invars[0].aval.dtype) != np.bool_:
        raise ValueError('cannot export select_n with an integer selector (only jnp.where)')
      out = self.g.node('Where', [args[0], args[2], args[1]])  # select_n picks case[pred]
    elif name == 'clamp':  # clamp(lo, x, hi)
      out = self.g.node('Max', [self.g.node('Min', [args[1], args[2]]), args[0]])
    elif name == 'convert_element_type':
      if np.dtype(eqn.params['new_dtype']) == np.dtype(eqn.invars[0].aval.dtype):
        return Tensor(args[0], tuple(aval.shape), perm)
      out = self.g.node('Cast', args, to=self.onnx_dtype(eqn.params['new_dtype']))
    else:
      raise ValueError(f'cannot export primitive {name!r}')
    return Tensor(out, tuple(aval.shape), perm)

  def onnx_dtype(self, dtype: Any) -> int:
    dtype = np.dtype(dtype)
    if dtype.name == 'bfloat16':
      raise ValueError('cannot export a bfloat16 computation to ONNX; export the float32 model')
    return self.onnx.helper.np_dtype_to_tensor_dtype(dtype)

  # ---------------------------------------------------------------- layout ops
  def op_transpose(self, eqn: Any, ins: list[Tensor], aval: Any) -> Tensor:
    (t,) = ins
    permutation = eqn.params['permutation']  # JAX axis i of the result is axis permutation[i]
    inverse = {old: new for new, old in enumerate(permutation)}
    return Tensor(t.name, tuple(aval.shape), tuple(inverse[p] for p in t.perm))

  def op_reshape(self, eqn: Any, ins: list[Tensor], aval: Any) -> Tensor:
    t = self.to_layout(ins[0], identity(len(ins[0].shape)))
    shape = tuple(aval.shape)
    if shape == t.shape:
      return t
    if len(shape) == 2 and len(t.shape) >= 2 and shape[0] == t.shape[0]:
      return Tensor(self.g.node('Flatten', [t.name], axis=1), shape, (0, 1))
    target = []
    for i, d in enumerate(shape):
      if not jax.export.is_symbolic_dim(d):
        target.append(int(d))
      elif i < len(t.shape) and d == t.shape[i]:
        target.append(0)  # ONNX Reshape: 0 copies the input's dimension
      else:
        target.append(-1)
    if target.count(-1) > 1:
      raise ValueError(
        f'cannot export a reshape {t.shape} → {shape}: more than one axis depends on the batch size'
      )
    out = self.g.node('Reshape', [t.name, self.g.const(np.asarray(target, np.int64))])
    return Tensor(out, shape, identity(len(shape)))

  op_squeeze = op_reshape

  def op_broadcast_in_dim(self, eqn: Any, ins: list[Tensor], aval: Any) -> Tensor:
    t = self.to_layout(ins[0], identity(len(ins[0].shape)))
    shape = tuple(aval.shape)
    dims = eqn.params['broadcast_dimensions']
    expanded = [1] * len(shape)
    for src, dst in enumerate(dims):
      expanded[dst] = 0
    new_axes = [i for i in range(len(shape)) if i not in dims]
    name = t.name
    if new_axes:
      name = self.g.node('Unsqueeze', [name, self.g.const(np.asarray(new_axes, np.int64))])
    # Expand to the static sizes of broadcast axes; 1 keeps an axis as it is.
    sizes = []
    for i, d in enumerate(shape):
      source = t.shape[dims.index(i)] if i in dims else 1
      if source == d:
        sizes.append(1)
      elif jax.export.is_symbolic_dim(d):
        raise ValueError(f'cannot export a broadcast of {t.shape} to {shape} along the batch')
      else:
        sizes.append(int(d))
    if any(s != 1 for s in sizes):
      name = self.g.node('Expand', [name, self.g.const(np.asarray(sizes, np.int64))])
    return Tensor(name, shape, identity(len(shape)))

  def op_concatenate(self, eqn: Any, ins: list[Const | Tensor], aval: Any) -> Tensor:
    perm = next(x.perm for x in ins if isinstance(x, Tensor))
    args = []
    for x in ins:
      if isinstance(x, Const) and not is_static(x.shape):
        raise ValueError('cannot export concatenating a constant of batch-dependent shape')
      args.append(
        self.as_input(
          Const(np.broadcast_to(x.value, x.shape), x.shape) if isinstance(x, Const) else x, perm
        )
      )
    axis = perm.index(eqn.params['dimension'])
    return Tensor(self.g.node('Concat', args, axis=axis), tuple(aval.shape), perm)

  # ---------------------------------------------------------------- reductions
  def _reduce(self, op: str, eqn: Any, ins: list[Tensor], aval: Any) -> Tensor:
    (t,) = ins
    axes = sorted(eqn.params['axes'])
    physical = sorted(t.perm.index(a) for a in axes)
    if op == 'ReduceSum':  # opset 13+: axes are an input
      out = self.g.node(op, [t.name, self.g.const(np.asarray(physical, np.int64))], keepdims=0)
    else:  # ReduceMax / ReduceMin take them as an attribute until opset 18
      out = self.g.node(op, [t.name], axes=physical, keepdims=0)
    kept = [p for p in t.perm if p not in axes]
    renumber = {old: new for new, old in enumerate(sorted(kept))}
    return Tensor(out, tuple(aval.shape), tuple(renumber[p] for p in kept))

  def op_reduce_sum(self, eqn, ins, aval):
    return self._reduce('ReduceSum', eqn, ins, aval)

  def op_reduce_max(self, eqn, ins, aval):
    return self._reduce('ReduceMax', eqn, ins, aval)

  def op_reduce_min(self, eqn, ins, aval):
    return self._reduce('ReduceMin', eqn, ins, aval)

  def _pool(self, op: str, eqn: Any, ins: list[Tensor], aval: Any) -> Tensor:
    (t,) = ins
    p = eqn.params
    window, strides, padding = p['window_dimensions'], p['window_strides'], p['padding']
    pooled = [
      i
      for i in range(len(window))
      if window[i] != 1 or strides[i] != 1 or tuple(padding[i]) != (0, 0)
    ]
    if any(d != 1 for d in p['base_dilation']) or len(t.shape) - len(pooled) != 2:
      raise ValueError(
        f'cannot export {eqn.primitive.name} with window {window}, strides '
        f'{strides}, padding {padding}: ONNX pools all but two leading axes'
      )
    others = [a for a in t.perm if a not in pooled]
    spatial = [a for a in t.perm if a in pooled]
    t = self.to_layout(t, tuple(others + spatial))
    attrs: dict[str, Any] = dict(
      kernel_shape=[window[a] for a in spatial],
      strides=[strides[a] for a in spatial],
      pads=[padding[a][0] for a in spatial] + [padding[a][1] for a in spatial],
      dilations=[p['window_dilation'][a] for a in spatial],
    )
    if op == 'AveragePool':
      del attrs['dilations']  # AveragePool has them only from opset 19
      if any(p['window_dilation'][a] != 1 for a in spatial):
        raise ValueError('cannot export a dilated sum pool')
      attrs['count_include_pad'] = 1
    out = self.g.node(op, [t.name], **attrs)
    if op == 'AveragePool':  # a window sum is the mean times the window size
      size = float(np.prod([window[a] for a in spatial]))
      out = self.g.node('Mul', [out, self.g.const(np.asarray(size, aval.dtype))])
    return Tensor(out, tuple(aval.shape), t.perm)

  def op_reduce_window_max(self, eqn, ins, aval):
    return self._pool('MaxPool', eqn, ins, aval)

  def op_reduce_window_sum(self, eqn, ins, aval):
    return self._pool('AveragePool', eqn, ins, aval)

  # ---------------------------------------------------------------- linear layers
  def op_conv_general_dilated(self, eqn: Any, ins: list[Const | Tensor], aval: Any) -> Tensor:
    lhs, rhs = ins
    p = eqn.params
    if not isinstance(lhs, Tensor) or not isinstance(rhs, Const):
      raise ValueError('cannot export a convolution whose kernel depends on the input')
    if any(d != 1 for d in p['lhs_dilation']) or p['batch_group_count'] != 1:
      raise ValueError('cannot export a transposed (input-dilated) or batch-grouped convolution')
    if any(lo < 0 or hi < 0 for lo, hi in p['padding']):
      raise ValueError(f'cannot export a convolution with negative padding {p["padding"]}')
    dn = p['dimension_numbers']
    x = self.to_layout(lhs, tuple(dn.lhs_spec))
    kernel = np.transpose(np.broadcast_to(rhs.value, rhs.shape), dn.rhs_spec)  # → OIHW
    out = self.g.node(
      'Conv',
      [x.name, self.g.const(np.ascontiguousarray(kernel), 'kernel')],
      kernel_shape=list(kernel.shape[2:]),
      strides=list(p['window_strides']),
      pads=[lo for lo, _ in p['padding']] + [hi for _, hi in p['padding']],
      dilations=list(p['rhs_dilation']),
      group=int(p['feature_group_count']),
    )
    return Tensor(out, tuple(aval.shape), tuple(dn.out_spec))

  def op_dot_general(self, eqn: Any, ins: list[Const | Tensor], aval: Any) -> Tensor:
    lhs, rhs = ins
    (lc, rc), (lb, rb) = eqn.params['dimension_numbers']
    if not isinstance(lhs, Tensor) or not isinstance(rhs, Const) or lb or rb or len(lc) != 1:
      raise ValueError(
        'cannot export dot_general other than (activations) · (constant matrix) over one axis'
      )
    free = [a for a in range(len(lhs.shape)) if a != lc[0]]
    x = self.to_layout(lhs, tuple(free) + (lc[0],))
    weight = np.moveaxis(np.broadcast_to(rhs.value, rhs.shape), rc[0], 0)
    if weight.ndim != 2:
      raise ValueError(f'cannot export dot_general with a {weight.ndim}-d constant operand')
    out = self.g.node('MatMul', [x.name, self.g.const(np.ascontiguousarray(weight), 'weight')])
    return Tensor(out, tuple(aval.shape), identity(len(aval.shape)))
