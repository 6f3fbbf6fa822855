"""ONNX export of a backbone in insightface's recognition-model interface, written from its jaxpr.

The file maps float32 RGB pixels (B, 3, S, S), values 0–255, to embeddings (B, D); only B is
dynamic. The normalisation (x − mean) / std of training is the graph's first two nodes, a `Sub`
and a `Mul`: insightface's `ArcFaceONNX` looks for exactly those names among the first eight
nodes and then feeds raw pixels, as it does for its own models. Its `model_zoo.get_model` routes
a file to `ArcFaceONNX` only when S ≥ 112 and S is a multiple of 16; smaller inputs (the demo's
32 px models) give a valid file that onnxruntime runs but insightface's router does not pick up
(`insightface_routing` says so, and the export command warns).

How: the eval-mode embedding function, weights included, is traced to a jaxpr with a symbolic
batch, each primitive becomes ONNX nodes (`translate`, with one rule a primitive in `ops`), and
the result is rewritten into the layers a PyTorch export has — Conv with batch norm folded in,
BatchNormalization, PRelu, Relu, Flatten → MatMul (`rewrite`). It needs only the `onnx` package.

Why not a converter: jax2onnx (0.17.1) pins orbax-checkpoint below the version this project
uses, targets Flax NNX, and writes PReLU as GreaterOrEqual/Mul/Where, which readers that look
for a PRelu layer (insightface's own tools, our importer) do not recognise; the jax2tf + tf2onnx
route needs TensorFlow. The primitives our backbones use are few (convolution, matrix product,
elementwise arithmetic, pooling, reshapes), so translating them here costs less than isolating
a converter in its own environment, and a new primitive fails loudly, naming itself.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from arcface_jax.model_info import ModelInfo
from arcface_jax.models import cpu_conv
from arcface_jax.onnx_export import rewrite
from arcface_jax.onnx_export.graph import GraphBuilder
from arcface_jax.onnx_export.translate import translate

OPSET = 17  # onnxruntime ≥ 1.13 runs it (insightface's own models use older sets still)
IR_VERSION = 8  # the newest IR that opset 17 needs; older runtimes refuse newer IRs
INPUT, OUTPUT = 'input', 'embedding'


def insightface_routing(image_size: int) -> str | None:
  """Why insightface's `get_model` would not treat this model as a recognition model, or None."""
  if image_size >= 112 and image_size % 16 == 0:
    return None
  return (
    f'insightface.model_zoo.get_model routes a model to ArcFaceONNX only when its input '
    f'side is ≥ 112 and a multiple of 16; this one is {image_size}, so get_model returns '
    'None for it (onnxruntime and insightface.model_zoo.ArcFaceONNX(path) still work)'
  )


def float32_model(model: nn.Module) -> nn.Module:
  """The same network computing in float32 with XLA's own convolution (what ONNX runs)."""
  fields = {f.name for f in dataclasses.fields(model)}
  changes: dict[str, Any] = {
    k: v for k, v in (('dtype', jnp.float32), ('conv_fn', None)) if k in fields
  }
  return model.clone(**changes) if changes else model


def to_onnx(
  model: nn.Module,
  variables: Any,
  image_size: int,
  *,
  mean: float | Sequence[float] = 127.5,
  std: float | Sequence[float] = 127.5,
  info: ModelInfo | None = None,
) -> Any:
  """An `onnx.ModelProto` of the eval-mode embedder: raw RGB (B, 3, S, S) → (B, D)."""
  import onnx  # the `export` extra

  model = float32_model(model)
  variables = jax.tree.map(jnp.asarray, variables)

  def embed(images: jax.Array) -> jax.Array:
    # apply's result is whatever the module returns: here one array (no mutable collections)
    embedding = cast(jax.Array, model.apply(variables, images, train=False))
    return embedding.astype(jnp.float32)

  builder = GraphBuilder(onnx)
  x = builder.node('Sub', [INPUT, builder.const(_per_channel(mean), 'mean')])
  x = builder.node('Mul', [x, builder.const(1.0 / _per_channel(std), 'inv_std')])
  protected = {n.name for n in builder.nodes}
  (batch,) = jax.export.symbolic_shape('batch')
  spec = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
  with cpu_conv.convolution_primitives():  # a Conv node per convolution, on every platform
    out = translate(embed, spec, builder, x, (0, 3, 1, 2))
  embedding_dim = int(out.shape[1])

  g = rewrite.Graph(onnx, builder.nodes, builder.initializers, out.name, protected)
  rewrite.prelu_and_relu(g)
  rewrite.conv_biases(g)
  rewrite.batch_norms(g)
  rewrite.flatten_into_matmul(g, _inferred_shapes(onnx, g, image_size, embedding_dim))
  return _model_proto(onnx, g, image_size, embedding_dim, info)


def _per_channel(value: float | Sequence[float]) -> np.ndarray:
  array = np.asarray(value, np.float32)
  return array.reshape(1, -1, 1, 1) if array.size > 1 else array.reshape(())


def _graph(onnx: Any, g: rewrite.Graph, image_size: int, embedding_dim: int) -> Any:
  nodes = [_renamed(onnx, n, g.output, OUTPUT) for n in g.nodes]
  inputs = [
    onnx.helper.make_tensor_value_info(
      INPUT, onnx.TensorProto.FLOAT, ['batch', 3, image_size, image_size]
    )
  ]
  outputs = [
    onnx.helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, ['batch', embedding_dim])
  ]
  initializers = [
    onnx.numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in g.initializers.items()
  ]
  return onnx.helper.make_graph(nodes, 'arcface_jax', inputs, outputs, initializers)


def _renamed(onnx: Any, node: Any, old: str, new: str) -> Any:
  if old not in node.output and old not in node.input:
    return node
  copy = onnx.NodeProto()
  copy.CopyFrom(node)
  for field in (copy.input, copy.output):
    for i, name in enumerate(field):
      if name == old:
        field[i] = new
  return copy


def _model_proto(
  onnx: Any, g: rewrite.Graph, image_size: int, embedding_dim: int, info: ModelInfo | None
) -> Any:
  proto = onnx.helper.make_model(
    _graph(onnx, g, image_size, embedding_dim),
    opset_imports=[onnx.helper.make_opsetid('', OPSET)],
    producer_name='arcface_jax',
    ir_version=IR_VERSION,
  )
  proto.doc_string = (
    'Face embedding: float32 RGB pixels 0-255 (batch, 3, H, W) -> (batch, D); '
    'normalisation is inside the graph.'
  )
  if info is not None:
    onnx.helper.set_model_props(
      proto, {'arcface_jax.model_info': json.dumps(dataclasses.asdict(info))}
    )
  return proto


def _inferred_shapes(
  onnx: Any, g: rewrite.Graph, image_size: int, embedding_dim: int
) -> dict[str, tuple]:
  """Shapes of every value of the graph so far, by onnx's shape inference (batch stays a name)."""
  proto = _model_proto(onnx, g, image_size, embedding_dim, None)
  inferred = onnx.shape_inference.infer_shapes(proto)
  shapes = {}
  for value in list(inferred.graph.value_info) + list(inferred.graph.input):
    dims = value.type.tensor_type.shape.dim
    shapes[value.name] = tuple(
      d.dim_value if d.HasField('dim_value') else d.dim_param for d in dims
    )
  return shapes


def save(
  path: str | epath.PathLike,
  model: nn.Module,
  variables: Any,
  image_size: int,
  *,
  mean: float | Sequence[float] = 127.5,
  std: float | Sequence[float] = 127.5,
  info: ModelInfo | None = None,
) -> int:
  """Writes the ONNX file, local or gs:// (and `info` to `<path>.json`, as `export.save` does);
  its size."""
  from arcface_jax import model_info

  proto = to_onnx(model, variables, image_size, mean=mean, std=std, info=info)
  data = proto.SerializeToString()
  epath.Path(path).write_bytes(data)
  if info is not None:
    model_info.write(model_info.sidecar_path(path), info)
  return len(data)


def max_difference(
  path: str | epath.PathLike,
  model: nn.Module,
  variables: Any,
  image_size: int,
  *,
  mean: float | Sequence[float] = 127.5,
  std: float | Sequence[float] = 127.5,
  batch: int = 3,
  seed: int = 0,
) -> float:
  """max |JAX − onnxruntime| over the embeddings of `batch` random images (needs onnxruntime)."""
  import onnxruntime  # the `export` extra

  pixels = np.random.default_rng(seed).uniform(0, 255, (batch, image_size, image_size, 3))
  pixels = pixels.astype(np.float32)
  model_bytes = epath.Path(path).read_bytes()  # onnxruntime opens only local files by name
  session = onnxruntime.InferenceSession(model_bytes, providers=['CPUExecutionProvider'])
  got = session.run(None, {INPUT: pixels.transpose(0, 3, 1, 2)})[0]
  normalised = (pixels - np.reshape(mean, (-1,))) / np.reshape(std, (-1,))
  apply = jax.jit(lambda v, x: float32_model(model).apply(v, x, train=False))
  expected = apply(variables, jnp.asarray(normalised, jnp.float32))
  return float(np.max(np.abs(got - np.asarray(expected))))
