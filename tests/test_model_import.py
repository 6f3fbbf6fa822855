"""ONNX import: PyTorch models in the reference trainer's layout → Flax, same embeddings.

The PyTorch networks are written here (IResNet and MobileFaceNet as the reference trainer
defines them, at demo widths), filled with random weights and batch-norm statistics, exported
to ONNX both unfolded (training-mode export, PyTorch names kept) and folded (eval-mode export
with constant folding, which fuses each BatchNorm into its Conv), and imported.
"""

import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
onnx = pytest.importorskip('onnx')
from torch import nn  # noqa: E402

from arcface_jax.models import import_onnx  # noqa: E402

SIZE = 32


class TorchIBasicBlock(nn.Module):
  def __init__(self, inplanes, planes, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
    self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
    self.prelu = nn.PReLU(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
    self.downsample = None
    if stride != 1 or inplanes != planes:
      self.downsample = nn.Sequential(
        nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes, eps=1e-5)
      )

  def forward(self, x):
    out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
    return out + (x if self.downsample is None else self.downsample(x))


class TorchIResNet(nn.Module):
  """The reference IResNet at iresnet_tiny's widths: (16, 32, 64, 128), one block per stage."""

  def __init__(self, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1), emb=24, size=SIZE):
    super().__init__()
    self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
    self.prelu = nn.PReLU(widths[0])
    inplanes, stages = widths[0], []
    for width, n in zip(widths, blocks):
      stages.append(
        nn.Sequential(
          *[
            TorchIBasicBlock(inplanes if i == 0 else width, width, 2 if i == 0 else 1)
            for i in range(n)
          ]
        )
      )
      inplanes = width
    self.layer1, self.layer2, self.layer3, self.layer4 = stages
    self.bn2 = nn.BatchNorm2d(widths[-1], eps=1e-5)
    self.dropout = nn.Dropout(0.0)
    self.fc = nn.Linear(widths[-1] * (size // 16) ** 2, emb)
    self.features = nn.BatchNorm1d(emb, eps=1e-5)
    nn.init.constant_(self.features.weight, 1.0)
    self.features.weight.requires_grad = False

  def forward(self, x):
    x = self.prelu(self.bn1(self.conv1(x)))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    x = torch.flatten(self.dropout(self.bn2(x)), 1)
    return self.features(self.fc(x))


def _unit(cin, cout, k=1, s=1, p=0, g=1, act=True):
  layers = [nn.Conv2d(cin, cout, k, s, p, groups=g, bias=False), nn.BatchNorm2d(cout)]
  return nn.Sequential(*(layers + [nn.PReLU(cout)] if act else layers))


class TorchDepthWise(nn.Module):
  def __init__(self, cin, cout, expand, stride, residual):
    super().__init__()
    self.residual = residual
    self.layers = nn.Sequential(
      _unit(cin, expand),
      _unit(expand, expand, 3, stride, 1, expand),
      _unit(expand, cout, act=False),
    )

  def forward(self, x):
    return x + self.layers(x) if self.residual else self.layers(x)


class TorchMobileFaceNet(nn.Module):
  """The reference MobileFaceNet (blocks (1, 4, 6, 2), scale 1) with a GDC of the map's size."""

  def __init__(self, emb=24, size=SIZE):
    super().__init__()
    stages = [_unit(3, 64, 3, 2, 1), _unit(64, 64, 3, 1, 1, 64)]
    for cin, cout, down, expand, n in (
      (64, 64, 128, 128, 4),
      (64, 128, 256, 256, 6),
      (128, 128, 512, 256, 2),
    ):
      stages.append(TorchDepthWise(cin, cout, down, 2, False))
      stages += [TorchDepthWise(cout, cout, expand, 1, True) for _ in range(n)]
    self.layers = nn.Sequential(*stages)
    self.conv_sep = _unit(128, 512)
    k = size // 16
    self.features = nn.Sequential(
      _unit(512, 512, k, g=512, act=False),
      nn.Flatten(),
      nn.Linear(512, emb, bias=False),
      nn.BatchNorm1d(emb),
    )

  def forward(self, x):
    return self.features(self.conv_sep(self.layers(x)))


def _randomise(model, seed=0):
  """Random weights and BN statistics, so a mis-mapped tensor cannot go unnoticed."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      if (
        name.endswith('num_batches_tracked')
        or name == 'features.weight'
        and isinstance(model, TorchIResNet)
      ):
        continue
      if name.endswith('running_var'):
        tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
      elif name.endswith('weight') and tensor.dim() == 1:  # BN scale, PReLU slope
        tensor.copy_(0.5 + 0.5 * torch.rand(tensor.shape, generator=gen))
      elif tensor.dim() >= 2:
        fan_in = tensor[0].numel()
        tensor.copy_(torch.randn(tensor.shape, generator=gen) * (1.5 / fan_in) ** 0.5)
      else:
        tensor.copy_(0.1 * torch.randn(tensor.shape, generator=gen))
  return model.eval()


def _export(model, path, folded):
  x = torch.zeros(2, 3, SIZE, SIZE)
  kwargs = (
    dict(do_constant_folding=True)
    if folded
    else dict(do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE)
  )
  # The TorchScript exporter: stable initializer names and no extra dependencies.
  torch.onnx.export(
    model,
    (x,),
    path,
    input_names=['input'],
    output_names=['embedding'],
    dynamo=False,
    dynamic_axes={'input': {0: 'batch'}},
    **kwargs,
  )
  return onnx.load(path)


def _images(seed=1):
  return np.random.default_rng(seed).uniform(-1, 1, (3, SIZE, SIZE, 3)).astype(np.float32)


@pytest.mark.parametrize('folded', [False, True], ids=['unfolded', 'folded'])
@pytest.mark.parametrize(
  'arch,torch_model', [('iresnet_tiny', TorchIResNet), ('mobilefacenet', TorchMobileFaceNet)]
)
def test_imported_model_matches_pytorch(arch, torch_model, folded, tmp_path):
  reference = _randomise(torch_model())
  graph = _export(reference, str(tmp_path / 'model.onnx'), folded)
  conv_biases = [len(n.input) == 3 for n in graph.graph.node if n.op_type == 'Conv']
  # Both code paths are exercised: the folded export fused BNs into (now biased) convs.
  assert all(conv_biases) if folded else not any(conv_biases)
  images = _images()
  with torch.no_grad():
    expected = reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  model, variables = import_onnx.convert(graph, arch)
  assert model.embedding_dim == 24
  got = np.asarray(model.apply(variables, jnp.asarray(images)))
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
  assert np.abs(expected).max() > 0.1  # a non-degenerate comparison


def test_command_writes_variables_that_load_back(tmp_path):
  reference = _randomise(TorchIResNet(), seed=3)
  _export(reference, str(tmp_path / 'model.onnx'), folded=False)
  out = tmp_path / 'imported'
  import_onnx.main([str(tmp_path / 'model.onnx'), '--arch', 'iresnet_tiny', '--out', str(out)])
  assert sorted(os.listdir(out)) == ['model.json', 'variables.msgpack']
  model, variables, meta = import_onnx.load(str(out))
  assert meta == {'arch': 'iresnet_tiny', 'embedding_dim': 24, 'image_size': SIZE}
  images = _images(seed=2)
  with torch.no_grad():
    expected = reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(
    model.apply(variables, jnp.asarray(images)), expected, atol=1e-4, rtol=1e-4
  )


def test_wrong_architecture_is_a_clear_error(tmp_path):
  graph = _export(_randomise(TorchIResNet()), str(tmp_path / 'model.onnx'), folded=False)
  with pytest.raises(ValueError, match='is --arch right'):
    import_onnx.convert(graph, 'mobilefacenet')
