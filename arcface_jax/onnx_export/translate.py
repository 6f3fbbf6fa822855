"""A jaxpr of an inference function → a plain ONNX graph, one primitive at a time.

Values are either constants (numpy arrays, folded here: batch-norm statistics, weights and
whatever arithmetic on them the model does) or run-time tensors. JAX computes channel-last
(B, H, W, C) while ONNX's Conv and pooling want channel-first (B, C, H, W), so a tensor carries
a `perm` (ONNX axis i holds JAX axis perm[i]) instead of being transposed around every conv:
elementwise work happens in whatever layout the tensor has, constants are transposed to match
when the graph is written, and a Transpose is emitted only where an op needs a given order
(a reshape, a matrix product, the output).

The batch dimension is symbolic in the trace (`jax.export.symbolic_shape`), so nothing here
depends on a batch size. An unsupported primitive is a `ValueError` naming it. The values and the
graph being written are in `onnx_export/graph.py`, the rule of each primitive in
`onnx_export/ops.py`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.extend import core as jcore

from arcface_jax.onnx_export.graph import (
  NUMPY_FOLDS,
  Const,
  GraphBuilder,
  Tensor,
  identity,
  is_static,
)
from arcface_jax.onnx_export.ops import ELEMENTWISE, OpRules

# Primitives that call an inner jaxpr, and the parameter holding it.
CALLS = {
  'pjit': 'jaxpr',
  'jit': 'jaxpr',
  'closed_call': 'call_jaxpr',
  'core_call': 'call_jaxpr',
  'custom_jvp_call': 'call_jaxpr',
  'custom_vjp_call': 'call_jaxpr',
  'custom_vjp_call_jaxpr': 'fun_jaxpr',
  'remat': 'jaxpr',
  'checkpoint': 'jaxpr',
}
PASSTHROUGH = {'copy', 'copy_p', 'optimization_barrier', 'reduce_precision'}


class Translator(OpRules):
  """Walks a closed jaxpr and folds its constants; `OpRules` emits each primitive's nodes."""

  # ---------------------------------------------------------------- walking
  def run(self, closed: Any, args: Sequence[Const | Tensor]) -> list[Const | Tensor]:
    jaxpr = closed.jaxpr if isinstance(closed, jcore.ClosedJaxpr) else closed
    consts = closed.consts if isinstance(closed, jcore.ClosedJaxpr) else []
    env: dict[Any, Const | Tensor] = {}
    for var, c in zip(jaxpr.constvars, consts):
      env[var] = Const(np.asarray(c), tuple(var.aval.shape))
    for var, a in zip(jaxpr.invars, args):
      env[var] = a

    def read(v: Any) -> Const | Tensor:
      if isinstance(v, jcore.Literal):
        aval: Any = v.aval  # a ShapedArray; JAX annotates it as the abstract base class
        return Const(np.asarray(v.val, dtype=aval.dtype), tuple(aval.shape))
      return env[v]

    for eqn in jaxpr.eqns:
      ins = [read(v) for v in eqn.invars]
      outs = self.eqn(eqn, ins)
      for var, out in zip(eqn.outvars, outs):
        env[var] = out
    return [read(v) for v in jaxpr.outvars]

  def eqn(self, eqn: Any, ins: list[Const | Tensor]) -> list[Const | Tensor]:
    name = eqn.primitive.name
    if name in CALLS:
      inner = eqn.params.get(CALLS[name])
      if inner is None:
        raise ValueError(f'cannot export primitive {name!r}: no inner jaxpr in its parameters')
      if name == 'custom_jvp_call' or name == 'custom_vjp_call':
        ins = ins[: len((inner.jaxpr if hasattr(inner, 'jaxpr') else inner).invars)]
      return self.run(inner, ins)
    out_avals = [v.aval for v in eqn.outvars]
    consts = [x for x in ins if isinstance(x, Const)]
    if len(consts) == len(ins):
      return [self.fold(eqn, consts, out_avals)]
    if name in PASSTHROUGH:
      return ins
    handler = getattr(self, 'op_' + name, None)
    if handler is None and name in ELEMENTWISE:
      handler = self.elementwise
    if handler is None:
      raise ValueError(
        f'cannot export primitive {name!r} to ONNX (not supported by '
        'arcface_jax.onnx_export); it appears in the model\'s inference jaxpr'
      )
    return [handler(eqn, ins, out_avals[0])]

  # ---------------------------------------------------------------- constants
  def fold(self, eqn: Any, ins: list[Const], out_avals: list[Any]) -> Const:
    """Evaluates an all-constant equation with JAX itself (so it rounds as the model does)."""
    name = eqn.primitive.name
    shape = tuple(out_avals[0].shape)
    if len(out_avals) != 1:
      raise ValueError(f'cannot fold primitive {name!r} with {len(out_avals)} outputs')
    if name == 'broadcast_in_dim' and not is_static(shape):
      # Keep it compact: size-1 axes where the operand has none; numpy broadcasting does the rest.
      operand = ins[0].value
      compact = [1] * len(shape)
      for src, dst in enumerate(eqn.params['broadcast_dimensions']):
        compact[dst] = operand.shape[src]
      return Const(operand.reshape(compact), shape)
    if is_static(shape):
      args = [np.broadcast_to(c.value, c.shape) if is_static(c.shape) else c.value for c in ins]
    elif name in ELEMENTWISE:
      arrays = [c.value for c in ins]
      common = np.broadcast_shapes(*[a.shape for a in arrays if a.ndim])
      args = [a if a.ndim == 0 else np.broadcast_to(a, common) for a in arrays]
    else:
      raise ValueError(f'cannot fold primitive {name!r} on constants of symbolic shape {shape}')
    numpy_fn = NUMPY_FOLDS.get(name)
    if numpy_fn is not None:  # the common ones in numpy: compiling each tiny op would be slow
      value = numpy_fn(*args, **eqn.params)
    else:
      with jax.default_device(jax.devices('cpu')[0]):
        value = eqn.primitive.bind(*args, **eqn.params)
    return Const(np.asarray(value, dtype=out_avals[0].dtype), shape)


def translate(
  fn: Callable[[jax.Array], jax.Array],
  input_spec: jax.ShapeDtypeStruct,
  builder: GraphBuilder,
  input_name: str,
  input_perm: tuple[int, ...],
) -> Tensor:
  """Emits `fn`'s graph for the tensor `input_name` (ONNX axis i = `fn`'s axis input_perm[i])."""
  closed = jax.make_jaxpr(fn)(input_spec)
  translator = Translator(builder)
  (out,) = translator.run(closed, [Tensor(input_name, tuple(input_spec.shape), input_perm)])
  if not isinstance(out, Tensor):
    raise ValueError('the exported function does not depend on its input')
  return translator.to_layout(out, identity(len(out.shape)))
