"""DeepLabV3 (ResNet backbone with dilated last stages, ASPP head) in Flax linen.

The network is torchvision's `deeplabv3_resnet101(num_classes=C, aux_loss=None)`, the
model DatasetGAN trains, with two knobs for small test networks:

  stage_sizes   bottleneck blocks per stage: (3, 4, 23, 3) ResNet-101, (3, 4, 6, 3) ResNet-50
  width         stem channels; stage i has width * 2**i bottleneck planes and 4x that
                many output channels (torchvision: 64)

Stem: 7x7/2 conv, BatchNorm, ReLU, 3x3/2 max pool (stride 4). Stage 0 keeps the stride,
every later stage halves the resolution until `output_stride` (8) is reached; after that a
stage keeps the resolution and doubles the dilation instead (torchvision's
replace_stride_with_dilation=[False, True, True]): the first block of such a stage uses
the previous dilation, the others the new one. Bottleneck blocks are ResNet v1.5 (the
stride sits on the 3x3 conv).

Head (torchvision's DeepLabHead): ASPP with a 1x1 branch, one 3x3 branch per rate in
`aspp_rates` (12, 24, 36) and an image-pooling branch, each conv-BN-ReLU with
`aspp_channels` (256) outputs; concatenation, 1x1 projection conv-BN-ReLU, dropout 0.5;
3x3 conv-BN-ReLU; 1x1 conv to C logits; bilinear upsampling (half-pixel centres, as
PyTorch's align_corners=False) to the input size.

BatchNorm: in training, batch statistics (over every device's part of the batch: the
step is jitted over a sharded batch, so XLA reduces across devices) and running averages
updated with momentum 0.1 in PyTorch's convention (flax momentum 0.9; the running
variance takes in the biased batch variance where PyTorch takes the unbiased one, a
factor n/(n-1) over n = batch x height x width values); in evaluation, the running
averages. eps 1e-5. Convolutions have no bias except the last.

Initial values come from `init` (torchvision's initialization), not from the modules'
initializers. Parameter names follow torchvision's with `.` -> `/` and `layer{i}.{j}` ->
`layer{i}_{j}` (see convert_weights/resnet.py): `backbone/layer3_0/conv2/kernel`,
`classifier/aspp/branch1/conv/kernel`, ... Kernels are HWIO.
"""

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dgan_jax.generators import checkpoint as checkpoint_lib
from dgan_jax.generators.checkpoint import CheckpointError

CONVERTED_FORMAT = 'dgan_jax.resnet'
INIT_STREAM = 10   # numpy seed stream of `init` (downstream/data.py uses 11 and 12)
BATCHNORM_EPS = 1e-5
FLAX_BATCHNORM_MOMENTUM = 0.9   # PyTorch momentum 0.1
STEM_STRIDE = 4
# torchvision's input normalization (the images are first scaled to [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

@dataclasses.dataclass(frozen=True)
class DeepLabArch:
  """Everything that fixes the parameter shapes (and the dilations)."""
  num_classes: int
  stage_sizes: tuple[int, ...] = (3, 4, 23, 3)
  width: int = 64
  output_stride: int = 8
  aspp_rates: tuple[int, ...] = (12, 24, 36)
  aspp_channels: int = 256
  dropout: float = 0.5

  def __post_init__(self):
    object.__setattr__(self, 'stage_sizes', tuple(int(s) for s in self.stage_sizes))
    object.__setattr__(self, 'aspp_rates', tuple(int(r) for r in self.aspp_rates))
    if not self.stage_sizes or min(self.stage_sizes) < 1:
      raise ValueError(f'stage_sizes must be positive block counts, got {self.stage_sizes}')
    if self.output_stride < STEM_STRIDE or self.output_stride & (self.output_stride - 1):
      raise ValueError(f'output_stride must be a power of two >= {STEM_STRIDE}, '
                       f'got {self.output_stride}')

  @property
  def feature_channels(self) -> int:
    """Channels of the backbone output (2048 for torchvision's ResNets)."""
    return self.width * 2 ** (len(self.stage_sizes) - 1) * 4

  def stage_layout(self) -> list[tuple[int, int, int]]:
    """Per stage: (stride, dilation of its first block, dilation of the others)."""
    layout, reached, dilation = [], STEM_STRIDE, 1
    for i in range(len(self.stage_sizes)):
      stride, previous = (1 if i == 0 else 2), dilation
      if stride == 2 and reached * 2 > self.output_stride:
        stride, dilation = 1, dilation * 2
      reached *= stride
      layout.append((stride, previous, dilation))
    return layout

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> 'DeepLabArch':
    return cls(**{**d, 'stage_sizes': tuple(d['stage_sizes']),
                  'aspp_rates': tuple(d['aspp_rates'])})


def _batch_norm(train: bool, name: str, dtype) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=FLAX_BATCHNORM_MOMENTUM,
                      epsilon=BATCHNORM_EPS, dtype=dtype, name=name)


# On CPU (2-core Xeon, jax 0.10, 2026-12-07), with the steps compiled by
# `parallel.compiler_options()` (XLA's Eigen dots and convolutions, YNNPACK reductions):
#   * a 1x1 convolution is a matrix product over the flattened pixels; written as an
#     einsum over [B, H, W, C] instead, the kernel gradient of 256 -> 1024 channels on a
#     2x64x64 map took 43 ms against 15 ms, because XLA transposed the operands first;
#   * a 3x3 convolution's gradients are XLA's own (kernel gradient 3x3, 256 channels,
#     64x64: 39 ms, 250 GFLOP/s);
#   * a stride-1 convolution whose taps would read padding for more than 30% of their
#     products (the ASPP's rates 24 and 36 on a 64x64 map: 44% and 61%) is a sum of one
#     matrix product per tap over the output window the tap reads inside the image
#     (`_conv_valid_taps`; gradients by autodiff). 2048 -> 256 channels, forward and
#     backward: rate 36 379 ms against XLA's 689, rate 24 549 against 681; rate 12 (23%
#     padding) 753 against 691, so XLA's. Maps smaller than MIN_TAP_PIXELS (test networks)
#     keep XLA's convolution: more ops compile slower and there is no time to win.
MAX_PADDING_SHARE = 0.3
MIN_TAP_PIXELS = 1024


def _lax_conv(x, kernel, stride: int, dilation: int):
  pad = dilation * (kernel.shape[0] - 1) // 2
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), ((pad, pad), (pad, pad)), rhs_dilation=(dilation, dilation),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _tap_windows(size: int, kernel: int, dilation: int) -> list[tuple[int, int, int]]:
  """Per tap along one axis of a stride-1 'same' convolution: (offset, first, stop) of
  the output positions whose input position (output + offset) is inside 0..size-1."""
  centre = kernel // 2
  windows = []
  for i in range(kernel):
    offset = (i - centre) * dilation
    windows.append((offset, max(0, -offset), min(size, size - offset)))
  return windows


def _inside_share(height: int, width: int, kernel: int, dilation: int) -> float:
  """Share of a stride-1 'same' convolution's tap products that read the image."""
  share = 1.0
  for size in (height, width):
    share *= sum(max(0, stop - first) for _, first, stop in
                 _tap_windows(size, kernel, dilation)) / (kernel * size)
  return share


def _conv_valid_taps(x, kernel, dilation: int):
  """Stride-1 'same' convolution as a sum over taps of matrix products on the windows
  that read inside the image."""
  k = kernel.shape[0]
  height, width = x.shape[1:3]
  out = jnp.zeros(x.shape[:3] + (kernel.shape[-1],), x.dtype)
  for i, (dy, y0, y1) in enumerate(_tap_windows(height, k, dilation)):
    for j, (dx, x0, x1) in enumerate(_tap_windows(width, k, dilation)):
      if y0 < y1 and x0 < x1:
        out = out.at[:, y0:y1, x0:x1].add(jnp.einsum(
            'bhwc,cd->bhwd', x[:, y0 + dy:y1 + dy, x0 + dx:x1 + dx], kernel[i, j]))
  return out


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, dilation: int = 1) -> jax.Array:
  """PyTorch-style convolution (symmetric zero padding dilation * (k - 1) // 2):
  x [B, H, W, C_in], kernel [k, k, C_in, C_out] -> [B, H', W', C_out]. The same function
  as lax.conv_general_dilated, computed as above."""
  k = kernel.shape[0]
  if k == 1:
    x = x[:, ::stride, ::stride]
    return (x.reshape(-1, x.shape[-1]) @ kernel[0, 0]).reshape(x.shape[:-1] + kernel.shape[-1:])
  if (jax.default_backend() == 'cpu' and stride == 1 and x.shape[1] * x.shape[2] >= MIN_TAP_PIXELS
      and _inside_share(x.shape[1], x.shape[2], k, dilation) < 1 - MAX_PADDING_SHARE):
    return _conv_valid_taps(x, kernel, dilation)
  return _lax_conv(x, kernel, stride, dilation)


class Conv(nn.Module):
  """A square convolution through `conv2d`; params 'kernel' [k, k, C_in, C_out] (HWIO)
  and, with use_bias, 'bias' [C_out]."""
  features: int
  kernel_size: int
  stride: int = 1
  dilation: int = 1
  use_bias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (self.kernel_size, self.kernel_size, x.shape[-1], self.features))
    y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.dilation)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,)).astype(self.dtype)
    return y


def _conv(features: int, kernel: int, stride: int = 1, dilation: int = 1, *, name: str,
          dtype) -> Conv:
  return Conv(features, kernel, stride, dilation, dtype=dtype, name=name)


@jax.custom_vjp
def residual_relu(x: jax.Array) -> jax.Array:
  """max(x, 0) for a block's output, computed as a reduction over [x, 0] stacked on a
  new last axis. A residual network's block output is an elementwise function of the
  previous block's output, and XLA's CPU fusion recomputes elementwise producers inside
  their consumers: with `jnp.maximum` it recomputed every block output from the stage's
  first one (fusions of up to 120 operands). A reduction ends a fusion, so each block
  output is computed once. The gradient is the ReLU's, from the output (0 where it is 0).
  Other backends (not measured) take jnp.maximum.
  """
  if jax.default_backend() != 'cpu':
    return jnp.maximum(x, 0)
  return jnp.max(jnp.stack([x, jnp.zeros_like(x)], axis=-1), axis=-1)


def _residual_relu_fwd(x):
  y = residual_relu(x)
  return y, y


def _residual_relu_bwd(y, g):
  return (jnp.where(y > 0, g, jnp.zeros_like(g)),)


residual_relu.defvjp(_residual_relu_fwd, _residual_relu_bwd)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (stride, dilation) -> 1x1 (4x planes), plus the shortcut."""
  planes: int
  stride: int = 1
  dilation: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    out_channels = self.planes * 4
    y = _conv(self.planes, 1, name='conv1', dtype=self.dtype)(x)
    y = nn.relu(_batch_norm(train, 'bn1', self.dtype)(y))
    y = _conv(self.planes, 3, self.stride, self.dilation, name='conv2', dtype=self.dtype)(y)
    y = nn.relu(_batch_norm(train, 'bn2', self.dtype)(y))
    y = _conv(out_channels, 1, name='conv3', dtype=self.dtype)(y)
    y = _batch_norm(train, 'bn3', self.dtype)(y)
    if self.stride != 1 or x.shape[-1] != out_channels:
      x = _conv(out_channels, 1, self.stride, name='downsample_conv', dtype=self.dtype)(x)
      x = _batch_norm(train, 'downsample_bn', self.dtype)(x)
    return residual_relu(x + y)


class ResNet(nn.Module):
  """[B, H, W, 3] normalized images -> [B, H/os, W/os, arch.feature_channels]."""
  arch: DeepLabArch
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = _conv(self.arch.width, 7, 2, name='conv1', dtype=self.dtype)(x)
    x = nn.relu(_batch_norm(train, 'bn1', self.dtype)(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, (size, (stride, first_dilation, dilation)) in enumerate(
        zip(self.arch.stage_sizes, self.arch.stage_layout())):
      for j in range(size):
        x = Bottleneck(self.arch.width * 2 ** i, stride if j == 0 else 1,
                       first_dilation if j == 0 else dilation, dtype=self.dtype,
                       name=f'layer{i + 1}_{j}')(x, train)
    return x


class ConvBNReLU(nn.Module):
  features: int
  kernel: int = 1
  dilation: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = _conv(self.features, self.kernel, 1, self.dilation, name='conv', dtype=self.dtype)(x)
    return nn.relu(_batch_norm(train, 'bn', self.dtype)(x))


class ASPP(nn.Module):
  """[B, h, w, C_in] -> [B, h, w, aspp_channels]."""
  arch: DeepLabArch
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    channels = self.arch.aspp_channels
    branches = [ConvBNReLU(channels, 1, dtype=self.dtype, name='branch0')(x, train)]
    for k, rate in enumerate(self.arch.aspp_rates, start=1):
      branches.append(ConvBNReLU(channels, 3, rate, dtype=self.dtype,
                                 name=f'branch{k}')(x, train))
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
    pooled = ConvBNReLU(channels, 1, dtype=self.dtype, name='pooling')(pooled, train)
    branches.append(jnp.broadcast_to(pooled, x.shape[:3] + (channels,)))
    y = ConvBNReLU(channels, 1, dtype=self.dtype, name='project')(
        jnp.concatenate(branches, axis=-1), train)
    return nn.Dropout(self.arch.dropout, deterministic=not train)(y)


class DeepLabHead(nn.Module):
  """Backbone features -> [B, h, w, num_classes] logits at the feature resolution."""
  arch: DeepLabArch
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = ASPP(self.arch, self.dtype, name='aspp')(x, train)
    x = ConvBNReLU(self.arch.aspp_channels, 3, dtype=self.dtype, name='block')(x, train)
    return Conv(self.arch.num_classes, 1, use_bias=True, dtype=self.dtype, name='out')(x)


class DeepLabV3(nn.Module):
  """images [B, H, W, 3] (normalized, see `normalize`) -> logits [B, H, W, num_classes]
  float32. `train` selects batch statistics and dropout (needs a 'dropout' rng)."""
  arch: DeepLabArch
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    features = ResNet(self.arch, self.dtype, name='backbone')(images.astype(self.dtype), train)
    logits = DeepLabHead(self.arch, self.dtype, name='classifier')(features, train)
    batch, height, width = images.shape[:3]
    return jax.image.resize(logits.astype(jnp.float32),
                            (batch, height, width, self.arch.num_classes), 'bilinear')


def normalize(images_uint8: jax.Array) -> jax.Array:
  """uint8 [..., 3] -> float32, scaled to [0, 1] and standardized with ImageNet's mean
  and std (torchvision's Normalize, as DatasetGAN feeds DeepLab)."""
  x = images_uint8.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def init(arch: DeepLabArch, seed: int) -> tuple[dict, dict]:
  """-> (params, batch_stats) with torchvision's initialization, drawn with numpy (fast
  for any depth, the same on every backend; the modules' own initializers are not used):

    backbone conv kernels   N(0, 2 / fan_out)   (kaiming_normal_, mode='fan_out')
    head conv kernels       U(-b, b), b = 1 / sqrt(fan_in)   (PyTorch's default)
    head output bias        U(-b, b), b = 1 / sqrt(aspp_channels)
    BatchNorm               scale 1, bias 0, mean 0, var 1

  fan_in = kh * kw * C_in, fan_out = kh * kw * C_out. Leaf i (in sorted name order)
  draws from numpy's default_rng([seed, INIT_STREAM, i]).
  """
  shapes = variable_shapes(arch)
  flat = {}
  for i, name in enumerate(sorted(shapes)):
    shape, rng = shapes[name], np.random.default_rng([seed, INIT_STREAM, i])
    leaf = name.rsplit('/', 1)[1]
    if leaf == 'kernel':
      kh, kw, c_in, c_out = shape
      if name.startswith('params/backbone/'):
        value = rng.standard_normal(shape) * np.sqrt(2.0 / (kh * kw * c_out))
      else:
        bound = 1.0 / np.sqrt(kh * kw * c_in)
        value = rng.uniform(-bound, bound, shape)
    elif name == 'params/classifier/out/bias':
      bound = 1.0 / np.sqrt(arch.aspp_channels)
      value = rng.uniform(-bound, bound, shape)
    elif leaf in ('scale', 'var'):
      value = np.ones(shape)
    elif leaf in ('bias', 'mean'):
      value = np.zeros(shape)
    else:
      raise ValueError(f'{name}: no initialization rule')
    flat[name] = jnp.asarray(value, jnp.float32)
  tree = checkpoint_lib.unflatten(flat)
  return tree['params'], tree['batch_stats']


def variable_shapes(arch: DeepLabArch) -> dict[str, tuple[int, ...]]:
  """Flat '/'-joined names of params and batch_stats ('params/backbone/conv1/kernel',
  'batch_stats/backbone/bn1/mean', ...) -> shapes."""
  model = DeepLabV3(arch)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1, 64, 64, 3)), train=False))
  return {name: tuple(leaf.shape) for name, leaf in _flatten(shapes).items()}


def _flatten(tree, prefix: str = '') -> dict:
  flat = {}
  for k, v in tree.items():
    if hasattr(v, 'items'):
      flat.update(_flatten(v, f'{prefix}{k}/'))
    else:
      flat[f'{prefix}{k}'] = v
  return flat


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def load_converted(directory: str) -> tuple[dict, dict[str, np.ndarray]]:
  """A directory written by `python -m convert_weights resnet` -> (resnet.json contents,
  flat arrays). Read with allow_pickle=False; clear errors for missing/corrupt files."""
  meta, arrays = checkpoint_lib.read_arrays_and_meta(
      directory, 'resnet.json',
      'convert a torchvision ResNet with `python -m convert_weights resnet SRC DST`')
  if meta.get('format') != CONVERTED_FORMAT or 'arch' not in meta:
    raise CheckpointError(f'{os.path.join(directory, "resnet.json")}: not a '
                          f'{CONVERTED_FORMAT} file')
  return meta, arrays


def converted_variables(directory: str) -> tuple[DeepLabArch, dict, dict]:
  """A converted whole DeepLabV3 -> (arch, params, batch_stats)."""
  meta, arrays = load_converted(directory)
  if meta.get('contains') != 'deeplabv3':
    raise CheckpointError(f'{directory}: holds a ResNet backbone only, not a whole DeepLabV3')
  arch = DeepLabArch.from_json(meta['arch'])
  checkpoint_lib.check_names_and_shapes(arrays, variable_shapes(arch), directory)
  tree = checkpoint_lib.unflatten({k: jnp.asarray(v) for k, v in arrays.items()})
  return arch, tree['params'], tree['batch_stats']


def with_pretrained_backbone(params: dict, batch_stats: dict, directory: str,
                             arch: DeepLabArch) -> tuple[dict, dict]:
  """Replaces the backbone of (params, batch_stats) by the converted one in `directory`
  (a ResNet, or the backbone of a converted DeepLabV3); the head keeps its values.
  The backbone shapes must match `arch` (stage_sizes, width)."""
  meta, arrays = load_converted(directory)
  backbone = {k: v for k, v in arrays.items() if k.split('/')[1] == 'backbone'}
  expected = {k: v for k, v in variable_shapes(arch).items() if k.split('/')[1] == 'backbone'}
  source = (f'{directory} (stage_sizes {tuple(meta["arch"]["stage_sizes"])}, width '
            f'{meta["arch"]["width"]}; the config asks for {arch.stage_sizes}, {arch.width})')
  checkpoint_lib.check_names_and_shapes(backbone, expected, source)
  tree = checkpoint_lib.unflatten({k: jnp.asarray(v) for k, v in backbone.items()})
  params = {**params, 'backbone': tree['params']['backbone']}
  batch_stats = {**batch_stats, 'backbone': tree['batch_stats']['backbone']}
  return params, batch_stats
