"""StyleGAN (v1) generator as pure functions over a parameter pytree (NHWC).

Parameters are stored raw, as in NVIDIA's and DatasetGAN's checkpoints; the
equalized-learning-rate multipliers are applied at run time. Layout:

  mapping/dense{i}/{weight [in, out], bias [out]}           i = 0..7
  synthesis/b4/{const [4, 4, C], bias [C]}
  synthesis/b{r}/conv0_up/{weight [3, 3, in, out], bias}    r >= 8
  synthesis/b4/conv, synthesis/b{r}/conv1: {weight [3, 3, C, C], bias}
  synthesis/b{r}/epi{1,2}/{noise_strength [C], style/{weight [512, 2C], bias [2C]}}
  synthesis/torgb/{weight [1, 1, C, 3], bias [3]}

Layer j (j = 0 .. num_ws - 1) is the j-th noise input and reads w[:, j]:
4x4 first layer, 4x4 second, 8x8 first, 8x8 second, ...
"""

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dgan_jax.generators import base
from dgan_jax.generators import style
from dgan_jax.generators.checkpoint import unflatten

Params = dict[str, Any]

LRELU_SLOPE = 0.2
PIXEL_NORM_EPS = 1e-8
FUSED_UPSCALE_MIN_RESOLUTION = 128  # NVIDIA's fused_scale='auto': output size >= 128


@dataclasses.dataclass(frozen=True)
class StyleGAN1Arch:
  """Everything needed to rebuild the network besides its weights."""
  resolution: int = 1024
  fmap_base: int = 8192
  fmap_decay: float = 1.0
  fmap_max: int = 512
  latent_size: int = 512
  dlatent_size: int = 512
  mapping_layers: int = 8
  mapping_fmaps: int = 512
  mapping_lrmul: float = 0.01
  num_channels: int = 3
  # nn.InstanceNorm2d's 1e-5 in DatasetGAN's PyTorch port; NVIDIA's TF code uses 1e-8.
  instance_norm_eps: float = 1e-5

  def __post_init__(self):
    if (not isinstance(self.resolution, int) or isinstance(self.resolution, bool)
        or not 4 <= self.resolution <= 1024):
      raise ValueError(f'resolution must be a power of two in 4..1024, got {self.resolution!r}')
    for field in ('fmap_base', 'fmap_max', 'latent_size', 'dlatent_size', 'mapping_layers',
                  'mapping_fmaps', 'num_channels'):
      value = getattr(self, field)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f'{field} must be a positive integer, got {value!r}')
    for field in ('fmap_decay', 'mapping_lrmul', 'instance_norm_eps'):
      value = getattr(self, field)
      if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f'{field} must be a positive number, got {value!r}')
    if not math.log2(self.resolution).is_integer():
      raise ValueError(f'resolution must be a power of two in 4..1024, got {self.resolution}')

  @property
  def resolution_log2(self) -> int:
    return int(math.log2(self.resolution))

  @property
  def num_ws(self) -> int:
    return 2 * self.resolution_log2 - 2

  @property
  def resolutions(self) -> list[int]:
    return [2 ** r for r in range(2, self.resolution_log2 + 1)]

  def channels(self, resolution: int) -> int:
    stage = int(math.log2(resolution)) - 1
    return min(int(self.fmap_base / (2.0 ** (stage * self.fmap_decay))), self.fmap_max)

  @property
  def feature_channels(self) -> list[int]:
    """Channels of each map `synthesize` returns (2 per block)."""
    return [c for r in self.resolutions for c in (self.channels(r),) * 2]

  @property
  def noise_shapes(self) -> list[tuple[int, int]]:
    """(height, width) of each layer's noise input, in layer order."""
    return [(r, r) for r in self.resolutions for _ in range(2)]

  def to_json(self) -> dict:
    return {'type': 'stylegan1', **dataclasses.asdict(self)}


def _lrelu(x):
  return jnp.where(x >= 0, x, x * LRELU_SLOPE)


def _dense(p, x, gain, lrmul=1.0):
  weight_mul = gain * p['weight'].shape[0] ** -0.5 * lrmul
  return x @ (p['weight'].astype(x.dtype) * weight_mul) + p['bias'].astype(x.dtype) * lrmul


def _conv_weight(p, dtype, gain=math.sqrt(2)):
  kh, kw, cin, _ = p['weight'].shape
  return p['weight'].astype(dtype) * (gain * (kh * kw * cin) ** -0.5)


def _conv(x, weight):
  return jax.lax.conv_general_dilated(
      x, weight, window_strides=(1, 1), padding='SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _blur(x):
  """[1,2,1] x [1,2,1] / 16 filter per channel, zero padding 1."""
  return style.separable_filter(x, (0.25, 0.5, 0.25), 1)


def _upscale_conv(p, x):
  """Conv0_up: nearest x2 + 3x3 conv, or the fused transposed conv from 128 px on."""
  weight = _conv_weight(p, x.dtype)
  if x.shape[1] * 2 < FUSED_UPSCALE_MIN_RESOLUTION:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(x, weight)
  # NVIDIA's fused kernel: the 3x3 kernel summed over its four 1-pixel shifts
  # (4x4), applied as conv_transpose(stride 2, padding 1). A transposed conv is a
  # conv over the 2x-dilated input, padded by k - 1 - padding = 2, with the
  # spatially flipped kernel.
  w = jnp.pad(weight, ((1, 1), (1, 1), (0, 0), (0, 0)))
  w = w[1:, 1:] + w[:-1, 1:] + w[1:, :-1] + w[:-1, :-1]
  return jax.lax.conv_general_dilated(
      x, w[::-1, ::-1], window_strides=(1, 1), padding=((2, 2), (2, 2)),
      lhs_dilation=(2, 2), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _epilogue(p, x, w, noise, eps):
  """noise -> lrelu -> instance norm -> style modulation x * (s0 + 1) + s1."""
  x = x + p['noise_strength'].astype(x.dtype) * noise.astype(x.dtype)
  x = _lrelu(x)
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=(1, 2), keepdims=True)
  x = ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)
  style = _dense(p['style'], w, gain=1.0)
  scale, shift = jnp.split(style, 2, axis=-1)
  return x * (scale[:, None, None, :] + 1) + shift[:, None, None, :]


def mapping(params: Params, arch: StyleGAN1Arch, z: jax.Array, c=None) -> jax.Array:
  """z [B, latent_size] -> w [B, num_ws, dlatent_size] (broadcast over layers)."""
  if c is not None:
    raise ValueError('StyleGAN (v1) is unconditional: it takes no class labels c')
  x = z * jax.lax.rsqrt(jnp.mean(jnp.square(z), axis=1, keepdims=True) + PIXEL_NORM_EPS)
  for i in range(arch.mapping_layers):
    x = _lrelu(_dense(params['mapping'][f'dense{i}'], x, math.sqrt(2), arch.mapping_lrmul))
  return jnp.broadcast_to(x[:, None, :], (x.shape[0], arch.num_ws, x.shape[1]))


def synthesis(params: Params, arch: StyleGAN1Arch, w: jax.Array,
              noise: Sequence[jax.Array]) -> tuple[jax.Array, list[jax.Array]]:
  """w [B, num_ws, D], noise list of [B or 1, h, w, 1] -> (image [B, H, W, 3], feature maps).

  Feature maps: 2 per resolution block, in block order: the block output, then the
  block's second conv output (bias added, before noise/activation/norm/style).
  Each is [B, r, r, C_r].
  """
  synth = params['synthesis']
  eps = arch.instance_norm_eps
  batch = w.shape[0]
  features = []
  x = None
  for block, res in enumerate(arch.resolutions):
    p = synth[f'b{res}']
    j = 2 * block
    if res == 4:
      x = jnp.broadcast_to(p['const'].astype(w.dtype)[None], (batch, 4, 4, p['const'].shape[-1]))
      x = x + p['bias'].astype(w.dtype)
      second_conv = p['conv']
    else:
      x = _upscale_conv(p['conv0_up'], x)
      x = _blur(x) + p['conv0_up']['bias'].astype(x.dtype)
      second_conv = p['conv1']
    x = _epilogue(p['epi1'], x, w[:, j], noise[j], eps)
    conv_out = _conv(x, _conv_weight(second_conv, x.dtype)) + second_conv['bias'].astype(x.dtype)
    x = _epilogue(p['epi2'], conv_out, w[:, j + 1], noise[j + 1], eps)
    features += [x, conv_out]
  rgb = _conv(x, _conv_weight(synth['torgb'], x.dtype, gain=1.0))
  return rgb + synth['torgb']['bias'].astype(x.dtype), features


def param_shapes(arch: StyleGAN1Arch) -> dict[str, tuple[int, ...]]:
  """Flat '/'-joined parameter names -> shapes, in checkpoint order."""
  shapes = {}
  fan_in = arch.latent_size
  for i in range(arch.mapping_layers):
    out = arch.dlatent_size if i == arch.mapping_layers - 1 else arch.mapping_fmaps
    shapes[f'mapping/dense{i}/weight'] = (fan_in, out)
    shapes[f'mapping/dense{i}/bias'] = (out,)
    fan_in = out

  def conv(prefix, k, cin, cout):
    shapes[f'{prefix}/weight'] = (k, k, cin, cout)
    shapes[f'{prefix}/bias'] = (cout,)

  def epilogue(prefix, c):
    shapes[f'{prefix}/noise_strength'] = (c,)
    shapes[f'{prefix}/style/weight'] = (arch.dlatent_size, 2 * c)
    shapes[f'{prefix}/style/bias'] = (2 * c,)

  previous = None
  for res in arch.resolutions:
    c = arch.channels(res)
    block = f'synthesis/b{res}'
    if res == 4:
      shapes[f'{block}/const'] = (4, 4, c)
      shapes[f'{block}/bias'] = (c,)
      epilogue(f'{block}/epi1', c)
      conv(f'{block}/conv', 3, c, c)
    else:
      conv(f'{block}/conv0_up', 3, previous, c)
      epilogue(f'{block}/epi1', c)
      conv(f'{block}/conv1', 3, c, c)
    epilogue(f'{block}/epi2', c)
    previous = c
  conv('synthesis/torgb', 1, previous, arch.num_channels)
  return shapes


def init_params(arch: StyleGAN1Arch, key: jax.Array) -> Params:
  """NVIDIA's initialisation: N(0, 1/lrmul) weights, zero biases and noise strengths,
  ones for the const input and its bias. Returns the nested parameter dict."""
  flat = {}
  for i, (name, shape) in enumerate(param_shapes(arch).items()):
    if name.endswith('weight'):
      std = 1 / arch.mapping_lrmul if name.startswith('mapping/') else 1.0
      value = np.asarray(jax.random.normal(jax.random.fold_in(key, i), shape)) * std
    elif name.endswith('const') or name == 'synthesis/b4/bias':
      value = np.ones(shape)
    else:
      value = np.zeros(shape)
    flat[name] = value.astype(np.float32)
  return unflatten(flat)


class StyleGAN1Generator(style.StyleGenerator):
  """A StyleGAN (v1) network (see `style.StyleGenerator` for the API)."""

  family = 'stylegan1'
  arch_class = StyleGAN1Arch
  mapping = staticmethod(mapping)
  synthesis = staticmethod(synthesis)
  param_shapes = staticmethod(param_shapes)
  init_params = staticmethod(init_params)

  @property
  def feature_specs(self) -> tuple[base.FeatureSpec, ...]:
    """Per block: its output ('b{r}.out'), then its second conv's output ('b{r}.conv1';
    'b4.conv' at 4x4), as `synthesis` returns them."""
    specs = []
    for r in self.arch.resolutions:
      c = self.arch.channels(r)
      specs += [base.FeatureSpec(f'b{r}.out', r, r, c),
                base.FeatureSpec(f'b{r}.conv' if r == 4 else f'b{r}.conv1', r, r, c)]
    return tuple(specs)


Generator = StyleGAN1Generator
