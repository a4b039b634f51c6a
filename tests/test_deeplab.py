"""DeepLabV3 and the ResNet converter against torchvision's own modules (ResNet,
IntermediateLayerGetter, DeepLabHead, DeepLabV3: the classes deeplabv3_resnet101 builds,
at a smaller depth); BatchNorm in training and evaluation; the converter's failure
modes."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import import_torchvision
from conftest import relative_error
from convert_weights import __main__ as convert_cli
from convert_weights import resnet as convert_resnet
from dgan_jax.downstream import deeplab
from dgan_jax.generators.checkpoint import CheckpointError

torch = pytest.importorskip('torch')
import_torchvision()
# pylint: disable=wrong-import-position
from torchvision.models import resnet as tv_resnet
from torchvision.models import segmentation as tv_segmentation
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
# pylint: enable=wrong-import-position

# torchvision's widths (64-channel stem, 2048 features, 256 ASPP channels); fewer blocks.
LAYERS, WIDTH, RATES, CHANNELS, CLASSES = (1, 1, 2, 1), 64, (1, 2, 3), 256, 3
TOLERANCE = 1e-4


def _arch(dropout=0.5):
  return deeplab.DeepLabArch(num_classes=CLASSES, stage_sizes=LAYERS, width=WIDTH,
                             aspp_rates=RATES, aspp_channels=CHANNELS, dropout=dropout)


def randomize_batch_norms(module, seed: int) -> None:
  """Non-trivial BatchNorm scales, shifts and running statistics."""
  generator = torch.Generator().manual_seed(seed)
  for m in module.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      n = m.num_features
      with torch.no_grad():
        m.weight.copy_(0.5 + torch.rand(n, generator=generator))
        m.bias.copy_(0.1 * torch.randn(n, generator=generator))
        m.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
        m.running_var.copy_(0.5 + torch.rand(n, generator=generator))


def nchw(x_nhwc: np.ndarray):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x_nhwc).transpose(0, 3, 1, 2)))


def nhwc(x) -> np.ndarray:
  return x.detach().numpy().transpose(0, 2, 3, 1)


def _torch_resnet(seed, num_classes=1000):
  """torchvision's bottleneck ResNet, output stride 8 as DeepLabV3 builds it."""
  torch.manual_seed(seed)
  model = tv_resnet.ResNet(tv_resnet.Bottleneck, list(LAYERS), num_classes=num_classes,
                           replace_stride_with_dilation=[False, True, True])
  randomize_batch_norms(model, seed)
  return model


def _torch_deeplab(seed=0, dropout=0.5):
  """torchvision's DeepLabV3 as deeplabv3_resnet101 assembles it (no auxiliary head)."""
  backbone = IntermediateLayerGetter(_torch_resnet(seed), return_layers={'layer4': 'out'})
  head = DeepLabHead(WIDTH * 32, CLASSES, RATES)
  head[0].project[3].p = dropout      # the ASPP projection's Dropout(0.5)
  model = tv_segmentation.DeepLabV3(backbone, head)
  randomize_batch_norms(model, seed + 1)
  return model


def _logits(model, images):
  return nhwc(model(nchw(images))['out'])


def _images(batch=2, height=33, width=41, seed=0):
  """Odd sizes: PyTorch padding and the final bilinear upsampling must line up."""
  return np.random.RandomState(seed).standard_normal((batch, height, width, 3)).astype(np.float32)


def _apply(module, variables, images, **kwargs):
  """module.apply, jitted (eager flax is slow op by op)."""
  return jax.jit(lambda v, x: module.apply(v, x, **kwargs))(variables, images)


def _convert(tmp_path, state, name, *extra):
  src, dst = tmp_path / f'{name}.pth', tmp_path / name
  torch.save(state, src)
  assert convert_cli.main(['resnet', str(src), str(dst), *extra]) == 0
  return str(dst)


@pytest.fixture(scope='module')
def converted_deeplab(tmp_path_factory):
  """A DatasetGAN-style checkpoint ({'model_state_dict': ...}) of the torch DeepLabV3,
  converted; plus the torch model."""
  model = _torch_deeplab()
  state = dict(model.state_dict())
  state['aux_classifier.0.weight'] = torch.zeros(2, 2, 3, 3)  # dropped by the converter
  dst = _convert(tmp_path_factory.mktemp('deeplab'), {'model_state_dict': state}, 'deeplab',
                 '--aspp-rates', ','.join(map(str, RATES)))
  return model, dst


def test_deeplab_matches_torch_in_eval_mode(converted_deeplab):
  model, dst = converted_deeplab
  with open(os.path.join(dst, 'resnet.json')) as f:
    record = json.load(f)
  assert record['contains'] == 'deeplabv3'
  assert [k for k in record['dropped'] if not k.endswith('num_batches_tracked')] == [
      'aux_classifier.0.weight']
  arch, params, batch_stats = deeplab.converted_variables(dst)
  assert arch == _arch()
  images = _images()
  ours = _apply(deeplab.DeepLabV3(arch), {'params': params, 'batch_stats': batch_stats},
                images, train=False)
  model.eval()
  with torch.no_grad():
    reference = _logits(model, images)
  assert ours.shape == (2, 33, 41, CLASSES)
  assert relative_error(ours, reference) < TOLERANCE


def test_batchnorm_training_mode_matches_torch(converted_deeplab):
  """Batch statistics in the forward pass and running means moved with PyTorch's
  momentum 0.1. (Running variances: flax folds in the biased batch variance, PyTorch the
  unbiased one; checked on the stem's BatchNorm with that factor.)"""
  _, dst = converted_deeplab
  arch, params, batch_stats = deeplab.converted_variables(dst)
  arch = deeplab.DeepLabArch(**{**arch.to_json(), 'dropout': 0.0})
  model = _torch_deeplab(dropout=0.0)
  images = _images(batch=3, seed=1)
  ours, mutated = _apply(deeplab.DeepLabV3(arch),
                         {'params': params, 'batch_stats': batch_stats}, images, train=True,
                         mutable=['batch_stats'])
  model.train()
  reference = _logits(model, images)
  assert relative_error(ours, reference) < TOLERANCE
  new_stats = mutated['batch_stats']
  pairs = [(new_stats['backbone']['layer3_1']['bn2'], model.backbone.layer3[1].bn2),
           (new_stats['classifier']['aspp']['pooling']['bn'], model.classifier[0].convs[-1][2]),
           (new_stats['classifier']['block']['bn'], model.classifier[2])]
  for ours_bn, torch_bn in pairs:
    np.testing.assert_allclose(ours_bn['mean'], torch_bn.running_mean.detach().numpy(),
                               rtol=1e-4, atol=1e-5)
  stem = model.backbone.bn1
  n = 3 * 17 * 21   # pixels the stem's BatchNorm averages over: batch x 17 x 21
  old_var = batch_stats['backbone']['bn1']['var']
  unbiased_update = stem.running_var.detach().numpy() - 0.9 * old_var
  np.testing.assert_allclose(new_stats['backbone']['bn1']['var'],
                             0.9 * old_var + unbiased_update * (n - 1) / n, rtol=1e-4)


def test_eval_mode_is_per_image_and_training_mode_is_not():
  arch = _arch(dropout=0.0)
  params, batch_stats = deeplab.init(arch, 0)
  batch_stats = jax.tree.map(lambda x: x + 0.5, batch_stats)  # running != batch stats
  model = deeplab.DeepLabV3(arch)
  variables = {'params': params, 'batch_stats': batch_stats}
  a, b = _images(2, 32, 32, seed=2), _images(2, 32, 32, seed=3)
  mixed = np.concatenate([a[:1], b[1:]])
  evaluate = jax.jit(lambda x: model.apply(variables, x, train=False))
  train = jax.jit(lambda x: model.apply(variables, x, train=True, mutable=['batch_stats']))
  eval_a, eval_mixed = evaluate(a), evaluate(mixed)
  np.testing.assert_allclose(eval_a[0], eval_mixed[0], rtol=1e-5, atol=1e-6)
  (train_a, stats_a), (train_mixed, _) = train(a), train(mixed)
  assert np.abs(np.asarray(train_a[0] - train_mixed[0])).max() > 1e-3
  assert np.abs(np.asarray(train_a[0] - eval_a[0])).max() > 1e-3
  moved = jax.tree.map(lambda new, old: float(jnp.abs(new - old).max()),
                       stats_a['batch_stats'], batch_stats)
  assert min(jax.tree.leaves(moved)) > 0   # every running statistic moved in training


def test_dropout_is_active_only_in_training():
  arch = _arch(dropout=0.5)
  params, batch_stats = deeplab.init(arch, 0)
  model, images = deeplab.DeepLabV3(arch), _images(2, 32, 32)
  variables = {'params': params, 'batch_stats': batch_stats}
  run = jax.jit(lambda key: model.apply(variables, images, train=True,
                                        mutable=['batch_stats'], rngs={'dropout': key})[0])
  assert np.abs(np.asarray(run(jax.random.key(0)) - run(jax.random.key(1)))).max() > 1e-4
  evaluate = jax.jit(lambda key: model.apply(variables, images, train=False,
                                             rngs={'dropout': key}))
  np.testing.assert_array_equal(evaluate(jax.random.key(0)), evaluate(jax.random.key(1)))


def test_imagenet_resnet_becomes_the_backbone(tmp_path):
  resnet = _torch_resnet(3, num_classes=5)
  dst = _convert(tmp_path, resnet.state_dict(), 'resnet')
  meta, _ = deeplab.load_converted(dst)
  assert meta['contains'] == 'backbone'
  assert 'fc.weight' in meta['dropped'] and 'bn1.num_batches_tracked' in meta['dropped']
  arch = _arch()
  params, batch_stats = deeplab.init(arch, 1)
  loaded, loaded_stats = deeplab.with_pretrained_backbone(params, batch_stats, dst, arch)
  # The head keeps its own initialization.
  np.testing.assert_array_equal(loaded['classifier']['out']['kernel'],
                                params['classifier']['out']['kernel'])
  images = _images(2, 35, 30, seed=4)
  ours = _apply(deeplab.ResNet(arch), {'params': loaded['backbone'],
                                       'batch_stats': loaded_stats['backbone']},
                images, train=False)
  resnet.eval()
  with torch.no_grad():
    reference = nhwc(IntermediateLayerGetter(resnet, {'layer4': 'out'})(nchw(images))['out'])
  assert ours.shape == (2, 5, 4, arch.feature_channels)   # output stride 8
  assert relative_error(ours, reference) < TOLERANCE
  # A config asking for another backbone is told which one the weights are.
  narrower = deeplab.DeepLabArch(num_classes=CLASSES, stage_sizes=LAYERS, width=32,
                                 aspp_rates=RATES, aspp_channels=CHANNELS)
  params, batch_stats = deeplab.init(narrower, 1)
  with pytest.raises(CheckpointError, match=r'width 64; the config asks for .*wrong shape'):
    deeplab.with_pretrained_backbone(params, batch_stats, dst, narrower)


def test_converter_names_what_is_wrong(tmp_path, capsys):
  resnet = _torch_resnet(0)
  state = dict(resnet.state_dict())
  del state['layer3.1.bn2.running_var']
  state['layer3.1.extra.weight'] = torch.zeros(1)
  src = tmp_path / 'broken.pth'
  torch.save(state, src)
  assert convert_cli.main(['resnet', str(src), str(tmp_path / 'out')]) == 1
  message = capsys.readouterr().err
  assert 'missing key(s): layer3.1.bn2.running_var' in message
  assert 'unexpected key(s): layer3.1.extra.weight' in message
  assert not os.path.exists(tmp_path / 'out')
  # A basic-block ResNet (resnet18/34) has no conv3.
  basic = {k: v for k, v in resnet.state_dict().items() if '.conv3.' not in k}
  torch.save(basic, src)
  assert convert_cli.main(['resnet', str(src), str(tmp_path / 'out')]) == 1
  assert 'basic-block ResNet' in capsys.readouterr().err
  # Truncated file.
  torch.save(resnet.state_dict(), src)
  data = src.read_bytes()
  src.write_bytes(data[:len(data) // 2])
  assert convert_cli.main(['resnet', str(src), str(tmp_path / 'out')]) == 1
  assert 'corrupt or truncated' in capsys.readouterr().err
  with pytest.raises(CheckpointError, match='resnet.json: missing'):
    deeplab.load_converted(str(tmp_path))


def test_torchvision_deeplabv3_resnet101_converts_name_for_name():
  """torchvision's deeplabv3_resnet101 itself (random weights): every tensor of its state
  dict but the auxiliary FCN head maps onto a variable of DeepLabArch's defaults, shape for
  shape, and the parameter counts agree."""
  model = tv_segmentation.deeplabv3_resnet101(weights=None, weights_backbone=None,
                                              num_classes=21, aux_loss=True)
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  arch, flat, info = convert_resnet.from_torch_state_dict(state)
  assert arch == deeplab.DeepLabArch(num_classes=21)
  assert sorted(k for k in info['dropped'] if not k.endswith('num_batches_tracked')) == sorted(
      k for k in state if k.startswith('aux_classifier.') and not k.endswith('batches_tracked'))
  shapes = deeplab.variable_shapes(arch)
  assert {k: v.shape for k, v in flat.items()} == shapes
  torch_count = sum(p.numel() for name, p in model.named_parameters()
                    if not name.startswith('aux_classifier.'))
  assert sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith('params/')) == \
      torch_count == 60_996_202 - 2_365_205
  assert shapes['params/backbone/layer4_2/conv2/kernel'] == (3, 3, 512, 512)
  assert arch.stage_layout() == [(1, 1, 1), (2, 1, 1), (1, 1, 2), (1, 2, 4)]
  np.testing.assert_array_equal(flat['params/backbone/layer3_22/conv2/kernel'],
                                state['backbone.layer3.22.conv2.weight'].transpose(2, 3, 1, 0))


def test_initialization_follows_torchvision():
  arch = deeplab.DeepLabArch(num_classes=CLASSES, stage_sizes=LAYERS, width=16,
                             aspp_rates=RATES, aspp_channels=32)
  params, batch_stats = deeplab.init(arch, 0)
  kernel = np.asarray(params['backbone']['layer3_0']['conv2']['kernel'])  # [3, 3, 64, 64]
  assert np.std(kernel) == pytest.approx(np.sqrt(2 / (9 * 64)), rel=0.05)   # fan_out
  head = np.asarray(params['classifier']['aspp']['project']['conv']['kernel'])  # 1x1, 5*32 in
  bound = 1 / np.sqrt(5 * 32)
  assert bound * 0.95 < np.abs(head).max() <= bound
  out_bias = np.asarray(params['classifier']['out']['bias'])
  assert np.abs(out_bias).max() <= 1 / np.sqrt(32) and np.abs(out_bias).max() > 0
  np.testing.assert_array_equal(params['backbone']['bn1']['scale'], 1)
  np.testing.assert_array_equal(batch_stats['backbone']['bn1']['var'], 1)
  again, _ = deeplab.init(arch, 0)
  other, _ = deeplab.init(arch, 1)
  np.testing.assert_array_equal(again['backbone']['conv1']['kernel'],
                                params['backbone']['conv1']['kernel'])
  assert not np.array_equal(other['backbone']['conv1']['kernel'],
                            params['backbone']['conv1']['kernel'])


@pytest.mark.parametrize('kernel,stride,dilation,channels,size,path', [
    (3, 1, 2, 16, (40, 36), 'xla'),            # dilated, little padding
    (3, 2, 1, 24, (45, 37), 'xla'),            # strided, odd input size
    (3, 1, 12, 16, (36, 40), 'valid_taps'),    # dilation large for the map (the ASPP's)
    (7, 2, 1, 3, (45, 37), 'xla'),             # the stem
    (3, 1, 5, 16, (13, 11), 'xla'),            # a small map
    (1, 2, 1, 16, (13, 11), 'matmul'),         # 1x1 strided
])
def test_conv_gradients_equal_xla_convolution(kernel, stride, dilation, channels, size, path):
  if kernel > 1 and stride == 1 and size[0] * size[1] >= deeplab.MIN_TAP_PIXELS:
    share = deeplab._inside_share(*size, kernel, dilation)  # pylint: disable=protected-access
    assert (share < 1 - deeplab.MAX_PADDING_SHARE) == (path == 'valid_taps')
  key_x, key_w, key_g = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(key_x, (2, *size, channels))
  w = jax.random.normal(key_w, (kernel, kernel, channels, 8))
  pad = dilation * (kernel - 1) // 2
  reference = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (stride, stride), ((pad, pad), (pad, pad)), rhs_dilation=(dilation, dilation),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  out, vjp = jax.vjp(jax.jit(functools.partial(deeplab.conv2d, stride=stride,
                                                dilation=dilation)), x, w)
  expected, expected_vjp = jax.vjp(reference, x, w)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
  g = jax.random.normal(key_g, out.shape)
  for ours, theirs in zip(vjp(g), expected_vjp(g)):
    assert relative_error(ours, theirs) < 1e-5


def test_residual_relu_is_relu_with_relus_gradient():
  x = jnp.array([[-1.5, 0.0, 2.0], [-0.0, 1e-30, -3.0]])
  weights = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  np.testing.assert_array_equal(deeplab.residual_relu(x),
                                np.array([[0, 0, 2], [0, 1e-30, 0]], np.float32))
  # d/dx sum(w * relu(x)): w where x > 0, 0 elsewhere (0 at x == 0, as torch and nn.relu)
  np.testing.assert_array_equal(jax.grad(lambda v: jnp.sum(weights * deeplab.residual_relu(v)))(x),
                                [[0, 0, 3], [0, 5, 0]])
