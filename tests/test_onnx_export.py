"""ONNX export: every registry model in onnxruntime, the import round trip, insightface's loader.

Variables are drawn at random (batch-norm means, variances, scales and biases, PReLU slopes and
weights all non-trivial) so that a mis-ordered or mis-laid-out tensor changes the embeddings.
The graph's batch size is symbolic; onnxruntime runs it at two batch sizes.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')

from arcface_jax import export, model_info, models, onnx_export  # noqa: E402
from arcface_jax.models import import_onnx  # noqa: E402

# Input side per model: the smallest each allows (IResNets and MobileFaceNets downsample by 16;
# the pooled toy CNNs keep a 2×2 map so the flatten order is exercised), narrow deep IResNets.
SIZES = {'resnet50': 32, 'small_cnn': 16, 'mini_network': 16, 'iresnet_tiny': 32}
NARROW = dict(widths=(8, 16, 16, 32), stem_width=8)


def _model(name, embedding_dim=8):
  narrow = name.startswith('iresnet') and name != 'iresnet_tiny'
  return models.get(name, embedding_dim=embedding_dim, **(NARROW if narrow else {}))


def _variables(model, size, seed=0):
  """Random variables with the model's structure, in trained-like ranges (no compilation)."""
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'mean':
      value = rng.normal(0.0, 0.2, leaf.shape)
    elif name == 'var':
      value = rng.uniform(0.5, 1.5, leaf.shape)
    elif name == 'scale':  # a few negative, as trained networks have
      value = rng.uniform(0.2, 0.6, leaf.shape) * rng.choice([-1, 1], leaf.shape, p=[0.1, 0.9])
    elif name == 'bias':
      value = rng.normal(0.0, 0.1, leaf.shape)
    elif name == 'slope':
      value = rng.uniform(0.0, 0.5, leaf.shape)
    else:  # kernels: unit-variance outputs
      value = rng.normal(0.0, (1.0 / np.prod(leaf.shape[:-1])) ** 0.5, leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, dict(abstract))


def _pixels(batch, size, seed=1):
  return np.random.default_rng(seed).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)


def _jax_embeddings(model, variables, pixels):
  return np.asarray(jax.jit(model.apply)(variables, jnp.asarray((pixels - 127.5) / 127.5)))


def _session(proto_or_path):
  data = proto_or_path.SerializeToString() if hasattr(proto_or_path, 'graph') else proto_or_path
  return ort.InferenceSession(data, providers=['CPUExecutionProvider'])


@pytest.mark.parametrize('name', models.names())
def test_every_registry_model_matches_onnxruntime(name):
  size = SIZES.get(name, 16)
  model = _model(name)
  variables = _variables(model, size)
  proto = onnx_export.to_onnx(model, variables, size)
  onnx.checker.check_model(proto, full_check=True)
  # insightface's interface: NCHW float input with only the batch named, (batch, D) output.
  dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
  assert [dims(v) for v in proto.graph.input] == [['batch', 3, size, size]]
  assert [dims(v) for v in proto.graph.output] == [['batch', 8]]
  first = [n.name for n in proto.graph.node[:8]]
  assert any(n.startswith('Sub') for n in first) and any(n.startswith('Mul') for n in first)
  session = _session(proto)
  pixels = _pixels(5, size)
  expected = _jax_embeddings(model, variables, pixels)
  assert np.abs(expected).max() > 0.05  # a non-degenerate comparison
  for batch in (5, 2):  # neither is a traced size: the trace had a symbolic batch
    got = session.run(None, {'input': pixels[:batch].transpose(0, 3, 1, 2)})[0]
    assert got.shape == (batch, 8)
    np.testing.assert_allclose(got, expected[:batch], atol=1e-4, rtol=0)


def test_graph_uses_the_layers_a_pytorch_export_has():
  model = _model('iresnet_tiny')
  ops = [n.op_type for n in onnx_export.to_onnx(model, _variables(model, 32), 32).graph.node]
  # Stem + 4 blocks × (2 convs + shortcut conv) = 13 convs with their BN folded in; the blocks'
  # leading BN, the final BN and the embedding BN stay BatchNormalization; 5 PReLUs.
  assert ops.count('Conv') == 13 and ops.count('BatchNormalization') == 6
  assert ops.count('PRelu') == 5 and 'Where' not in ops and 'Transpose' not in ops
  assert ops[:2] == ['Sub', 'Mul']


def test_unsupported_primitive_is_named():
  class Sorting(nn.Module):  # a backbone using jnp.sort
    @nn.compact
    def __call__(self, x, train=False):
      return jnp.sort(nn.Dense(4)(x.reshape(x.shape[0], -1)), axis=-1)

  module = Sorting()
  variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 3)))
  with pytest.raises(ValueError, match="primitive 'sort'"):
    onnx_export.to_onnx(module, variables, 4)


@pytest.mark.parametrize(
  'name,size',
  [('iresnet_tiny', 32), ('mobilefacenet', 16), ('small_cnn', 16), ('mini_network', 16)],
)
def test_export_then_import_gives_the_same_embeddings(name, size, tmp_path):
  model = _model(name, embedding_dim=12)
  variables = _variables(model, size, seed=4)
  path = str(tmp_path / 'model.onnx')
  onnx_export.save(path, model, variables, size)
  imported, imported_variables = import_onnx.convert(onnx.load(path), name)
  pixels = _pixels(3, size, seed=5)
  np.testing.assert_allclose(
    _jax_embeddings(imported, imported_variables, pixels),
    _jax_embeddings(model, variables, pixels),
    atol=1e-4,
    rtol=0,
  )


def test_command_exports_an_imported_model_with_its_info(tmp_path, capsys):
  model = _model('iresnet_tiny', embedding_dim=16)
  variables = _variables(model, 32, seed=6)
  import_onnx.save(
    str(tmp_path / 'imported'), 'iresnet_tiny', variables, embedding_dim=16, image_size=32
  )
  out = str(tmp_path / 'model.onnx')
  export.main(['--imported', str(tmp_path / 'imported'), '--format', 'onnx', '--out', out])
  captured = capsys.readouterr()
  assert 'checked with onnxruntime' in captured.out
  assert 'get_model' in captured.err  # 32 px: insightface's router would not take it
  info = model_info.read(model_info.sidecar_path(out))
  assert (info.model_name, info.embedding_dim, info.image_size) == ('iresnet_tiny', 16, 32)
  assert info.fingerprint == model_info.fingerprint(variables)
  stored = onnx.load(out).metadata_props
  assert json.loads(stored[0].value)['fingerprint'] == info.fingerprint
  pixels = _pixels(2, 32, seed=7)
  got = _session(out).run(None, {'input': pixels.transpose(0, 3, 1, 2)})[0]
  np.testing.assert_allclose(got, _jax_embeddings(model, variables, pixels), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
  'args,message',
  [
    (['--format', 'tflite'], "unknown --format 'tflite'"),
    (['--format', 'onnx', '--workdir', 'no/such/run'], 'no/such/run: no such directory'),
  ],
)
def test_bad_arguments_are_one_line_and_exit_2(args, message, tmp_path, capsys):
  if '--workdir' not in args:
    args = args + ['--workdir', str(tmp_path)]
  with pytest.raises(SystemExit) as exit_info:
    export.main(args + ['--out', str(tmp_path / 'model.onnx')])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert message in err and len(err.strip().splitlines()) == 1
  assert not os.path.exists(tmp_path / 'model.onnx')


def test_insightface_routing_rule():
  assert onnx_export.insightface_routing(112) is None
  assert onnx_export.insightface_routing(128) is None
  assert '32' in onnx_export.insightface_routing(32)
  assert onnx_export.insightface_routing(120) is not None  # not a multiple of 16


def test_insightface_loads_the_file_and_gives_our_features(tmp_path):
  model_zoo = pytest.importorskip(
    'insightface.model_zoo', reason='insightface is in the `compare` extra'
  ).__dict__
  size = 112  # insightface routes only sides ≥ 112 that are multiples of 16
  model = _model('iresnet_tiny', embedding_dim=16)
  variables = _variables(model, size, seed=8)
  path = str(tmp_path / 'model.onnx')
  onnx_export.save(path, model, variables, size)
  recogniser = model_zoo['get_model'](path, providers=['CPUExecutionProvider'])
  assert isinstance(recogniser, model_zoo['ArcFaceONNX'])
  # It found the normalisation inside the graph, so it feeds raw pixels.
  assert (recogniser.input_mean, recogniser.input_std) == (0.0, 1.0)
  assert recogniser.input_size == (size, size)
  # Aligned crops as insightface handles them: uint8 BGR (OpenCV's order); it swaps to RGB.
  rgb = np.random.default_rng(9).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
  bgr = [np.ascontiguousarray(image[..., ::-1]) for image in rgb]
  expected = _jax_embeddings(model, variables, rgb.astype(np.float32))
  np.testing.assert_allclose(recogniser.get_feat(bgr), expected, atol=1e-4, rtol=0)
  np.testing.assert_allclose(recogniser.get_feat(bgr[1]), expected[1:2], atol=1e-4, rtol=0)
  # A 32 px export is valid ONNX, but insightface's router does not take it (as the docs say).
  small = str(tmp_path / 'small.onnx')
  onnx_export.save(small, model, _variables(model, 32), 32)
  assert model_zoo['get_model'](small, providers=['CPUExecutionProvider']) is None
