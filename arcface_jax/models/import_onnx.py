"""Import an ONNX export of the reference trainer's IResNet / MobileFaceNet as Flax variables.

    python -m arcface_jax.models.import_onnx MODEL.onnx --arch iresnet50 --out DIR

writes DIR/variables.msgpack ({'params', 'batch_stats'}, flax.serialization) and DIR/model.json
(arch, embedding_dim, image_size), so published PyTorch models can be evaluated here.

Layers are paired in execution order: the ONNX graph's parameterised nodes (Conv,
BatchNormalization, PRelu, Gemm / MatMul) against the Flax modules in the order the model calls
them (recorded while tracing), each pair checked by kind and shape, and the error names both
sides when they disagree. Order rather than parameter names is used because exports differ in
naming: a training-mode export keeps the PyTorch names ("layer1.0.conv1.weight"), while an
eval-mode export with constant folding fuses each BatchNorm into the Conv before it and renames
everything. A fused Conv is recognised by its bias (the reference's convs have none) and the
Flax BatchNorm it swallowed becomes an exact identity plus that bias; a Flax conv with a bias of
its own takes the bias instead. Files written by `arcface_jax.onnx_export` read back the same way
(their batch norms are folded into convs, or BatchNormalization nodes where no conv precedes).

Layout changes: conv kernels OIHW → HWIO; PReLU slopes (C, 1, 1) → (C,); FC weights (out, in) →
(in, out) with the input re-ordered from PyTorch's channel-major flatten (C, H, W) to the
channel-last flatten (H, W, C) used here. Inputs stay RGB normalised as (x − 127.5) / 127.5.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from arcface_jax import models
from arcface_jax.models.layers import BN_EPSILON, PReLU

ONNX_KINDS = {
  'Conv': 'conv',
  'BatchNormalization': 'bn',
  'PRelu': 'prelu',
  'Gemm': 'dense',
  'MatMul': 'dense',
}


@dataclasses.dataclass
class OnnxLayer:
  kind: str  # conv | bn | prelu | dense
  name: str  # node name (for error messages)
  arrays: dict[str, np.ndarray]


@dataclasses.dataclass
class FlaxLayer:
  kind: str
  path: tuple[str, ...]
  input_shape: tuple[int, ...]
  feature_map: tuple[int, ...] | None  # dense only: the (H, W, C) map flattened into its input


def onnx_layers(model: Any) -> list[OnnxLayer]:
  """Parameterised nodes of an `onnx.ModelProto` in graph (execution) order, with weights."""
  from onnx import numpy_helper  # the `compare` extra; only this command needs it

  graph = model.graph
  consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
  for node in graph.node:  # some exporters emit weights as Constant nodes instead
    if node.op_type == 'Constant':
      for attr in node.attribute:
        if attr.name == 'value':
          consts[node.output[0]] = numpy_helper.to_array(attr.t)
  attrs = lambda node: {a.name: onnx_attr(a) for a in node.attribute}
  nodes = list(graph.node)
  for node in nodes:  # an unfolded export reshapes e.g. PReLU slopes at run time
    if node.op_type in _CONST_OPS and node.input and all(n in consts for n in node.input if n):
      consts[node.output[0]] = _CONST_OPS[node.op_type](
        [consts[n] if n else None for n in node.input], attrs(node)
      )
  layers: list[OnnxLayer] = []
  for i, node in enumerate(nodes):
    kind = ONNX_KINDS.get(node.op_type)
    weights = [consts.get(name) for name in node.input[1:]]
    if kind is None or not weights or weights[0] is None:
      continue  # activations, adds, reshapes, or a MatMul between two activations
    a = attrs(node)
    if kind == 'conv':
      arrays = {'kernel': weights[0], 'group': np.asarray(a.get('group', 1))}
      if len(weights) > 1 and weights[1] is not None:
        arrays['bias'] = weights[1]
    elif kind == 'bn':
      scale, bias, mean, var = weights
      if scale is None or bias is None or mean is None or var is None:
        raise ValueError(
          f'ONNX BatchNormalization {node.name or node.output[0]!r}: its scale, bias, mean '
          'and variance must be constants (initializers), as exported models have them'
        )
      arrays = {
        'scale': scale,
        'bias': bias,
        'mean': mean,
        'var': var,
        'epsilon': np.asarray(a.get('epsilon', 1e-5)),
      }
    elif kind == 'prelu':
      arrays = {'slope': weights[0].reshape(-1)}
    elif node.op_type == 'Gemm':  # torch.nn.Linear: Y = alpha·A·B' + beta·C
      w = weights[0] if a.get('transB', 0) else weights[0].T  # → (out, in)
      arrays = {'weight': w * a.get('alpha', 1.0)}
      if len(weights) > 1 and weights[1] is not None:
        arrays['bias'] = np.broadcast_to(weights[1] * a.get('beta', 1.0), w.shape[:1])
    else:  # MatMul(x, W[in, out]), maybe followed by Add(bias)
      arrays = {'weight': weights[0].T}
      follower = nodes[i + 1] if i + 1 < len(nodes) else None
      if follower is not None and follower.op_type == 'Add' and node.output[0] in follower.input:
        other = [n for n in follower.input if n != node.output[0]]
        if other and other[0] in consts:
          arrays['bias'] = consts[other[0]].reshape(-1)
    layers.append(OnnxLayer(kind, node.name or node.output[0], arrays))
  return layers


def _unsqueeze(inputs: list[Any], attrs: dict[str, Any]) -> np.ndarray:
  axes = attrs.get('axes', inputs[1] if len(inputs) > 1 else None)
  if axes is None:
    raise ValueError('ONNX Unsqueeze without axes (neither an attribute nor an input)')
  out = inputs[0]
  for axis in sorted(int(a) % (out.ndim + len(axes)) for a in axes):
    out = np.expand_dims(out, axis)
  return out


def _squeeze(inputs: list[Any], attrs: dict[str, Any]) -> np.ndarray:
  axes = attrs.get('axes', inputs[1] if len(inputs) > 1 else None)
  return np.squeeze(inputs[0], None if axes is None else tuple(int(a) for a in axes))


# Constant-only subgraphs the exporters leave between an initializer and its layer.
_CONST_OPS = {
  'Unsqueeze': _unsqueeze,
  'Squeeze': _squeeze,
  'Reshape': lambda i, a: i[0].reshape(tuple(int(d) for d in i[1])),
  'Identity': lambda i, a: i[0],
  'Cast': lambda i, a: i[0],  # weights are float already; the model keeps float32
  'Transpose': lambda i, a: np.transpose(i[0], a.get('perm')),
}


def onnx_attr(attr: Any) -> Any:
  from onnx import helper

  return helper.get_attribute_value(attr)


def flax_layers(model: nn.Module, image_size: int) -> tuple[list[FlaxLayer], Any]:
  """The model's parameterised modules in call order, and its abstract variables."""
  calls: list[FlaxLayer] = []
  last_map: list[tuple[int, ...]] = [()]

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != '__call__':
      return out
    shape = tuple(args[0].shape)
    if len(shape) == 4:
      last_map[0] = tuple(out.shape[1:]) if hasattr(out, 'shape') else shape[1:]
    kind = (
      'conv'
      if isinstance(module, nn.Conv)
      else 'bn'
      if isinstance(module, nn.BatchNorm)
      else 'prelu'
      if isinstance(module, PReLU)
      else 'dense'
      if isinstance(module, nn.Dense)
      else None
    )
    if kind is not None:
      calls.append(
        FlaxLayer(
          kind,
          tuple(module.path),
          shape,
          _pooled_map(last_map[0], shape[-1]) if kind == 'dense' else None,
        )
      )
    return out

  with nn.intercept_methods(record):
    abstract = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3)))
    )
  return calls, abstract


def _pooled_map(last_map: tuple[int, ...], features: int) -> tuple[int, ...]:
  """The (H, W, C) map a dense layer flattens: the last module's output, or that output after a
  square pooling (a max-pool between the last conv and the flatten is a function, not a module)."""
  if len(last_map) != 3 or int(np.prod(last_map)) == features or features % last_map[2]:
    return last_map
  side = int(round((features // last_map[2]) ** 0.5))
  return (side, side, last_map[2]) if side * side * last_map[2] == features else last_map


def _set(tree: dict, path: Sequence[str], name: str, value: np.ndarray, like: Any) -> None:
  node = tree
  for key in path:
    node = node.setdefault(key, {})
  if tuple(value.shape) != tuple(like.shape):
    raise ValueError(
      f'{"/".join(path)}/{name}: ONNX gives shape {value.shape}, the Flax model '
      f'expects {like.shape}; is --arch right?'
    )
  node[name] = np.asarray(value, np.float32)


def _lookup(tree: Any, path: Sequence[str]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def convert(
  onnx_model: Any, arch: str, *, image_size: int | None = None, embedding_dim: int | None = None
) -> tuple[nn.Module, dict[str, Any]]:
  """(Flax module, {'params', 'batch_stats'}) equivalent to the ONNX model's network."""
  layers = onnx_layers(onnx_model)
  dense = [layer for layer in layers if layer.kind == 'dense']
  if not dense:
    raise ValueError('the ONNX graph has no fully connected layer; is it a face backbone?')
  embedding_dim = embedding_dim or int(dense[-1].arrays['weight'].shape[0])
  image_size = image_size or _onnx_image_size(onnx_model) or 112
  model = models.get(arch, embedding_dim=embedding_dim)
  calls, abstract = flax_layers(model, image_size)
  params: dict[str, Any] = {}
  stats: dict[str, Any] = {}
  pending_bias = None  # bias of a Conv whose BatchNorm was folded into it
  it = iter(layers)
  for index, call in enumerate(calls):
    p_like = _lookup(abstract['params'], call.path)
    if call.kind == 'bn' and pending_bias is not None:
      _identity_bn(params, stats, call, pending_bias, abstract)
      pending_bias = None
      continue
    if pending_bias is not None:
      raise ValueError(
        f'ONNX conv before Flax layer {"/".join(call.path)} has a bias, but the '
        'Flax model has no batch norm there to take it'
      )
    layer = next(it, None)
    if layer is None or layer.kind != call.kind:
      raise ValueError(
        f'layer {index}: the {arch!r} model calls a {call.kind} at {"/".join(call.path)}, but '
        f'the ONNX graph has {"nothing" if layer is None else layer.kind + " " + layer.name!r}'
        ' there; is --arch right?'
      )
    a = layer.arrays
    if call.kind == 'conv':
      _set(params, call.path, 'kernel', a['kernel'].transpose(2, 3, 1, 0), p_like['kernel'])
      if 'bias' in p_like:  # a conv with its own bias (no batch norm folded into it)
        bias = a.get('bias', np.zeros(p_like['bias'].shape, np.float32))
        _set(params, call.path, 'bias', bias, p_like['bias'])
      else:
        pending_bias = a.get('bias')
    elif call.kind == 'prelu':
      _set(params, call.path, 'slope', a['slope'], p_like['slope'])
    elif call.kind == 'bn':
      _load_bn(params, stats, call, a, abstract)
    else:
      weight = a['weight']  # (out, in), input in PyTorch's (C, H, W) flatten order
      h, w, c = call.feature_map if call.feature_map and len(call.feature_map) == 3 else (1, 1, 0)
      if c and h * w > 1 and weight.shape[1] == h * w * c:
        weight = weight.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)
      _set(params, call.path, 'kernel', weight.T, p_like['kernel'])
      if 'bias' in p_like:
        _set(params, call.path, 'bias', a.get('bias', np.zeros(weight.shape[0])), p_like['bias'])
      elif 'bias' in a and np.any(a['bias'] != 0):
        raise ValueError(f'ONNX {layer.name} has a bias; Flax {"/".join(call.path)} has none')
  leftover = next(it, None)
  if leftover is not None:
    raise ValueError(
      f'ONNX layer {leftover.kind} {leftover.name!r} has no Flax counterpart in '
      f'{arch!r}; is --arch right?'
    )
  variables = {'params': params, 'batch_stats': stats}
  # Every Flax variable must have been filled, with its dtype.
  # Any: jax exports PyTreeDef as an alias mypy cannot resolve, so it rejects `!=` on it
  expected: Any = jax.tree.structure(dict(abstract))
  got = jax.tree.structure({k: variables[k] for k in abstract})
  if expected != got:
    raise ValueError(f'import left Flax variables unset: expected {expected}, got {got}')
  return model, jax.tree.map(jnp.asarray, {k: variables[k] for k in abstract})


def _load_bn(
  params: dict, stats: dict, call: FlaxLayer, a: dict[str, np.ndarray], abstract: Any
) -> None:
  p_like = _lookup(abstract['params'], call.path)
  s_like = _lookup(abstract['batch_stats'], call.path)
  path = '/'.join(call.path)
  if 'scale' in p_like:
    _set(params, call.path, 'scale', a['scale'], p_like['scale'])
  elif not np.allclose(a['scale'], 1.0):
    raise ValueError(
      f'{path} has its scale fixed to 1, but the ONNX batch norm scales by {a["scale"][:4]}...'
    )
  _set(params, call.path, 'bias', a['bias'], p_like['bias'])
  _set(stats, call.path, 'mean', a['mean'], s_like['mean'])
  # A different epsilon (2e-5 in the original MXNet models) is absorbed into the variance
  # so that var + eps, the only place either appears, is unchanged.
  _set(stats, call.path, 'var', a['var'] + float(a['epsilon']) - BN_EPSILON, s_like['var'])


def _identity_bn(
  params: dict, stats: dict, call: FlaxLayer, bias: np.ndarray, abstract: Any
) -> None:
  """A Flax BatchNorm computing exactly x + bias (its PyTorch twin was folded into a conv)."""
  n = bias.shape[0]
  arrays = {
    'scale': np.ones(n),
    'bias': bias,
    'mean': np.zeros(n),
    'var': np.full(n, 1.0 - BN_EPSILON),
    'epsilon': np.asarray(BN_EPSILON),
  }
  _load_bn(params, stats, call, arrays, abstract)


def _onnx_image_size(onnx_model: Any) -> int | None:
  dims = onnx_model.graph.input[0].type.tensor_type.shape.dim
  if len(dims) == 4 and dims[2].HasField('dim_value') and dims[2].dim_value > 0:
    return int(dims[2].dim_value)
  return None


def save(
  out_dir: str, arch: str, variables: dict[str, Any], *, embedding_dim: int, image_size: int
) -> None:
  """DIR/variables.msgpack and DIR/model.json (what `load` reads back)."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'variables.msgpack'), 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, variables)))
  with open(os.path.join(out_dir, 'model.json'), 'w') as f:
    json.dump({'arch': arch, 'embedding_dim': embedding_dim, 'image_size': image_size}, f)


def load(out_dir: str) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
  """(module, variables, metadata) written by `save`."""
  with open(os.path.join(out_dir, 'model.json')) as f:
    meta = json.load(f)
  with open(os.path.join(out_dir, 'variables.msgpack'), 'rb') as f:
    variables = flax.serialization.msgpack_restore(f.read())
  model = models.get(meta['arch'], embedding_dim=meta['embedding_dim'])
  return model, jax.tree.map(jnp.asarray, variables), meta


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('onnx_file')
  parser.add_argument('--arch', required=True, choices=models.names())
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument(
    '--image_size',
    type=int,
    default=None,
    help='input side (default: from the ONNX input, else 112)',
  )
  args = parser.parse_args(argv)
  import onnx  # the `compare` extra

  onnx_model = onnx.load(args.onnx_file)
  image_size = args.image_size or _onnx_image_size(onnx_model) or 112
  model, variables = convert(onnx_model, args.arch, image_size=image_size)
  save(args.out, args.arch, variables, embedding_dim=model.embedding_dim, image_size=image_size)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables['params']))
  print(
    f'{args.arch}: {count:,} parameters, embedding {model.embedding_dim}, '
    f'{image_size}×{image_size} input → {args.out}'
  )


if __name__ == '__main__':
  main()
