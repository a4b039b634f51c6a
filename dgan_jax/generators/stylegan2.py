"""StyleGAN2 / StyleGAN2-ADA generator ('skip' architecture) as pure functions (NHWC).

What stylegan2-ada-pytorch's `training/networks.py` Generator computes in eval mode. The
parameters keep the names and layouts of its state dict, so a converter is a name map:

  mapping/embed/{weight [E, c_dim], bias [E]}                  conditional models only
  mapping/fc{i}/{weight [out, in], bias [out]}                 i = 0 .. mapping_layers-1
  synthesis/b4/const [C, 4, 4]
  synthesis/b{r}/conv0 (r >= 8), synthesis/b{r}/conv1:
      {weight [out, in, 3, 3], bias [out], noise_strength [], affine/{weight [in, w_dim],
      bias [in]}}
  synthesis/b{r}/torgb/{weight [3, in, 1, 1], bias [3], affine/{weight, bias}}

The average W (`mapping.w_avg`) is the checkpoint's `avg_latent`, the constant noise
(`noise_const`) its `noise/{j}` arrays [1, r, r, 1], in layer order: b4.conv1, b8.conv0,
b8.conv1, b16.conv0, ... Weights are stored raw; the equalised-learning-rate gains are
applied at run time, as there.

Layer j of the synthesis network reads w[:, j]: b4.conv1 reads w[:, 0] and b4's ToRGB
w[:, 1]; block k >= 1 (resolution 4 * 2**k) reads w[:, 2k-1] (conv0), w[:, 2k] (conv1) and
w[:, 2k+1] (ToRGB), so num_ws = 2 * log2(resolution) - 2.
"""

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dgan_jax.errors import InputError
from dgan_jax.generators import base
from dgan_jax.generators import style
from dgan_jax.generators.checkpoint import unflatten

Params = dict[str, Any]

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2)
EPS = 1e-8                        # normalize_2nd_moment and demodulation
RESAMPLE_TAPS = (1., 3., 3., 1.)  # the [1,3,3,1] resample filter


def synthesis_layers(resolutions: Sequence[int]) -> list[tuple[int, str]]:
  """(resolution, 'conv0' | 'conv1') of every synthesis layer, in order (b4: conv1 only)."""
  return [(r, name) for r in resolutions for name in (('conv1',) if r == 4 else
                                                      ('conv0', 'conv1'))]


@dataclasses.dataclass(frozen=True)
class StyleGAN2Arch:
  """Everything needed to rebuild the network besides its weights.

  Channels at resolution r: min(channel_base // r, channel_max), as NVIDIA's code; or
  `channels` (one per resolution 4 .. resolution) where a network does not follow that
  rule (rosinality's stylegan2-pytorch uses a fixed table)."""
  resolution: int = 1024
  z_dim: int = 512
  w_dim: int = 512
  c_dim: int = 0
  channel_base: int = 32768
  channel_max: int = 512
  channels: tuple[int, ...] = ()
  mapping_layers: int = 8
  mapping_lr_multiplier: float = 0.01
  conv_clamp: float | None = None
  img_channels: int = 3

  def __post_init__(self):
    if isinstance(self.channels, list):   # as generator.json stores it
      object.__setattr__(self, 'channels', tuple(self.channels))
    if not isinstance(self.resolution, int) or isinstance(self.resolution, bool):
      raise ValueError(f'resolution must be an integer, got {self.resolution!r}')
    if self.resolution < 4 or self.resolution & (self.resolution - 1) or self.resolution > 1024:
      raise ValueError(f'resolution must be a power of two in 4..1024, got {self.resolution}')
    if self.channels and len(self.channels) != len(self.resolutions):
      raise ValueError(f'channels must give one count per resolution '
                       f'{self.resolutions}, got {list(self.channels)}')
    for field in ('z_dim', 'w_dim', 'mapping_layers', 'img_channels', 'channel_base',
                  'channel_max'):
      value = getattr(self, field)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f'{field} must be a positive integer, got {value!r}')
    if not isinstance(self.c_dim, int) or self.c_dim < 0:
      raise ValueError(f'c_dim must be a non-negative integer, got {self.c_dim!r}')
    if self.conv_clamp is not None and not self.conv_clamp > 0:
      raise ValueError(f'conv_clamp must be positive or null, got {self.conv_clamp!r}')

  @property
  def resolutions(self) -> list[int]:
    return [2 ** k for k in range(2, int(math.log2(self.resolution)) + 1)]

  @property
  def latent_size(self) -> int:
    return self.z_dim

  @property
  def dlatent_size(self) -> int:
    return self.w_dim

  @property
  def num_ws(self) -> int:
    return 2 * int(math.log2(self.resolution)) - 2

  def channels_at(self, resolution: int) -> int:
    if self.channels:
      return self.channels[self.resolutions.index(resolution)]
    return min(self.channel_base // resolution, self.channel_max)

  @property
  def layers(self) -> list[tuple[int, str]]:
    return synthesis_layers(self.resolutions)

  @property
  def noise_shapes(self) -> list[tuple[int, int]]:
    """(height, width) of each layer's noise input, in layer order."""
    return [(r, r) for r, _ in self.layers]

  def to_json(self) -> dict:
    record = dataclasses.asdict(self)
    record['channels'] = list(self.channels)
    return {'type': 'stylegan2', **record}


def _fc(p, x, lr_multiplier=1.0):
  """FullyConnectedLayer: x [B, in] @ (weight [out, in] * lr / sqrt(in)).T + bias * lr."""
  weight = p['weight'].astype(x.dtype) * (lr_multiplier / math.sqrt(p['weight'].shape[1]))
  return x @ weight.T + p['bias'].astype(x.dtype) * lr_multiplier


def _lrelu(x, gain=LRELU_GAIN):
  return jnp.where(x >= 0, x, x * LRELU_SLOPE) * gain


def _normalize_2nd_moment(x):
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=1, keepdims=True) + EPS)


def mapping(params: Params, arch: StyleGAN2Arch, z: jax.Array,
            c: jax.Array | None = None) -> jax.Array:
  """z [B, z_dim] (c [B, c_dim] one-hot for conditional models) -> w [B, num_ws, w_dim]."""
  p = params['mapping']
  x = _normalize_2nd_moment(z)
  if arch.c_dim:
    if c is None or c.shape[-1] != arch.c_dim:
      raise ValueError(f'this network is conditional: pass c [B, {arch.c_dim}]')
    x = jnp.concatenate([x, _normalize_2nd_moment(_fc(p['embed'], c.astype(x.dtype)))], 1)
  elif c is not None and c.shape[-1]:
    raise ValueError('this network is unconditional: it takes no labels c')
  for i in range(arch.mapping_layers):
    x = _lrelu(_fc(p[f'fc{i}'], x, arch.mapping_lr_multiplier))
  return jnp.broadcast_to(x[:, None, :], (x.shape[0], arch.num_ws, x.shape[1]))


def _fir(x, pad: int):
  """upfirdn2d with the [1,3,3,1] resample filter (normalised, gain 4), padding `pad` on
  each side: [B, H, W, C] -> [B, H+2p-3, W+2p-3, C]."""
  taps = np.asarray(RESAMPLE_TAPS) / sum(RESAMPLE_TAPS) * 2   # 1-D taps; 2 x 2 = gain 4
  return style.separable_filter(x, taps, pad)


def upsample_image(img: jax.Array) -> jax.Array:
  """upfirdn2d.upsample2d: zero-insertion x2, pad (2, 1), the 4x4 filter: [B, H, W, C] ->
  [B, 2H, 2W, C]."""
  b, h, w, c = img.shape
  up = jnp.zeros((b, h, 2, w, 2, c), img.dtype).at[:, :, 0, :, 0].set(img)
  up = jnp.pad(up.reshape(b, 2 * h, 2 * w, c), ((0, 0), (1, 0), (1, 0), (0, 0)))
  return _fir(up, 1)   # with the pad above: 2 before, 1 after


# _PHASE_TAP[phase, offset]: along one axis, output 2m (phase 0) of the stride-2 transposed
# conv is x[m-1] w[2] + x[m] w[0], output 2m+1 (phase 1) is x[m] w[1]; x[m-1] and x[m] sit
# at offsets 0 and 1 of a 2-tap window over x padded by 1. Tap 3 stands for a zero.
_PHASE_TAP = np.array([[2, 0], [3, 1]])


def _transposed_conv2x(x, weight):
  """conv2d_resample's transposed conv (stride 2, no padding, weight [O, I, 3, 3]):
  [B, H, W, I] -> [B, 2H+1, 2W+1, O], computed per output phase so that no product with
  an inserted zero is taken: one 2x2 conv yields the four (row, column) phases as 4*O
  channels, which interleave into the output (its extra last row and column dropped)."""
  o, i = weight.shape[:2]
  padded = jnp.pad(weight, ((0, 0), (0, 0), (0, 1), (0, 1)))       # tap 3 = 0
  kernel = padded[:, :, _PHASE_TAP[:, None, :, None], _PHASE_TAP[None, :, None, :]]
  kernel = kernel.transpose(2, 3, 0, 1, 4, 5).reshape(4 * o, i, 2, 2)   # [(p, q, o), i, a, b]
  b, h, w = x.shape[:3]
  y = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'OIHW', 'NHWC'))
  y = y.reshape(b, h + 1, w + 1, 2, 2, o).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(b, 2 * h + 2, 2 * w + 2, o)[:, :-1, :-1]


def _modulated_conv(x, weight, styles, demodulate: bool, up: bool):
  """modulated_conv2d, the non-fused form: x [B, H, W, I] * styles [B, I], conv with weight
  [O, I, k, k] (x2 transposed conv + filter when `up`), * demodulation coefficients."""
  weight = weight.astype(x.dtype)
  x = x * styles[:, None, None, :].astype(x.dtype)
  k = weight.shape[-1]
  if up:
    x = _fir(_transposed_conv2x(x, weight), 1)
  else:
    x = jax.lax.conv_general_dilated(
        x, weight, (1, 1), ((k // 2, k // 2), (k // 2, k // 2)),
        dimension_numbers=('NHWC', 'OIHW', 'NHWC'))
  if demodulate:
    w32 = weight.astype(jnp.float32)
    energy = jnp.square(styles.astype(jnp.float32)) @ jnp.sum(jnp.square(w32), (2, 3)).T
    x = x * jax.lax.rsqrt(energy + EPS)[:, None, None, :].astype(x.dtype)
  return x


def _synthesis_layer(p, x, w, noise, up: bool, conv_clamp):
  """SynthesisLayer: modulated conv -> + noise * strength -> bias, lrelu * sqrt(2), clamp."""
  styles = _fc(p['affine'], w)
  x = _modulated_conv(x, p['weight'], styles, demodulate=True, up=up)
  if noise is not None:
    x = x + noise.astype(x.dtype) * p['noise_strength'].astype(x.dtype)
  x = _lrelu(x + p['bias'].astype(x.dtype))
  return x if conv_clamp is None else jnp.clip(x, -conv_clamp, conv_clamp)


def _torgb(p, x, w, conv_clamp):
  """ToRGBLayer: 1x1 modulated conv without demodulation (styles * 1/sqrt(in)) + bias."""
  styles = _fc(p['affine'], w) * (1 / math.sqrt(p['weight'].shape[1]))
  x = _modulated_conv(x, p['weight'], styles, demodulate=False, up=False)
  x = x + p['bias'].astype(x.dtype)
  return x if conv_clamp is None else jnp.clip(x, -conv_clamp, conv_clamp)


def synthesis(params: Params, arch: StyleGAN2Arch, w: jax.Array,
              noise: Sequence[jax.Array | None]) -> tuple[jax.Array, list[jax.Array]]:
  """w [B, num_ws, w_dim], noise list (one per layer, [B or 1, r, r, 1], or None entries
  for no noise) -> (image [B, R, R, img_channels], feature maps: every synthesis layer's
  output [B, r, r, C_r] (after bias, activation and clamp), in layer order)."""
  synth = params['synthesis']
  clamp = arch.conv_clamp
  features, x, img = [], None, None
  layer = 0
  for k, res in enumerate(arch.resolutions):
    p = synth[f'b{res}']
    if res == 4:
      const = p['const'].astype(w.dtype).transpose(1, 2, 0)
      x = jnp.broadcast_to(const[None], (w.shape[0],) + const.shape)
    else:
      x = _synthesis_layer(p['conv0'], x, w[:, 2 * k - 1], noise[layer], True, clamp)
      features.append(x)
      layer += 1
    x = _synthesis_layer(p['conv1'], x, w[:, 2 * k], noise[layer], False, clamp)
    features.append(x)
    layer += 1
    y = _torgb(p['torgb'], x, w[:, 2 * k + 1], clamp)
    img = y if img is None else upsample_image(img) + y
  return img, features


def param_shapes(arch: StyleGAN2Arch) -> dict[str, tuple[int, ...]]:
  """Flat '/'-joined parameter names -> shapes, in the official state dict's order."""
  shapes = {}
  fan_in = arch.z_dim
  if arch.c_dim:
    shapes['mapping/embed/weight'] = (arch.w_dim, arch.c_dim)
    shapes['mapping/embed/bias'] = (arch.w_dim,)
    fan_in += arch.w_dim
  for i in range(arch.mapping_layers):
    shapes[f'mapping/fc{i}/weight'] = (arch.w_dim, fan_in)
    shapes[f'mapping/fc{i}/bias'] = (arch.w_dim,)
    fan_in = arch.w_dim

  def modulated(prefix, cin, cout, k):
    shapes[f'{prefix}/weight'] = (cout, cin, k, k)
    shapes[f'{prefix}/bias'] = (cout,)
    shapes[f'{prefix}/affine/weight'] = (cin, arch.w_dim)
    shapes[f'{prefix}/affine/bias'] = (cin,)

  previous = None
  for res in arch.resolutions:
    c = arch.channels_at(res)
    block = f'synthesis/b{res}'
    if res == 4:
      shapes[f'{block}/const'] = (c, 4, 4)
    else:
      modulated(f'{block}/conv0', previous, c, 3)
      shapes[f'{block}/conv0/noise_strength'] = ()
    modulated(f'{block}/conv1', c, c, 3)
    shapes[f'{block}/conv1/noise_strength'] = ()
    modulated(f'{block}/torgb', c, arch.img_channels, 1)
    previous = c
  return shapes


def init_params(arch: StyleGAN2Arch, key: jax.Array) -> Params:
  """NVIDIA's initialisation: N(0, 1) weights (N(0, 1/lr) in the mapping), N(0, 1) const,
  affine biases 1, other biases and noise strengths 0. Returns the nested dict."""
  flat = {}
  for i, (name, shape) in enumerate(param_shapes(arch).items()):
    if name.endswith('weight') or name.endswith('const'):
      std = 1 / arch.mapping_lr_multiplier if name.startswith('mapping/fc') else 1.0
      value = np.asarray(jax.random.normal(jax.random.fold_in(key, i), shape)) * std
    elif name.endswith('affine/bias'):
      value = np.ones(shape)
    else:
      value = np.zeros(shape)
    flat[name] = value.astype(np.float32)
  return unflatten(flat)


class StyleGAN2Generator(style.StyleGenerator):
  """A StyleGAN2 / StyleGAN2-ADA network (see `style.StyleGenerator` for the API):

    g = dgan_jax.generators.load('checkpoints/stylegan2_car')
    image, maps = g(z, psi=0.7, cutoff=8)          # maps: b4.conv1, b8.conv0, b8.conv1, ...
  """

  family = 'stylegan2'
  arch_class = StyleGAN2Arch
  mapping = staticmethod(mapping)
  synthesis = staticmethod(synthesis)
  param_shapes = staticmethod(param_shapes)
  init_params = staticmethod(init_params)

  @property
  def feature_specs(self) -> tuple[base.FeatureSpec, ...]:
    """Every synthesis layer's output, 'b{r}.conv0' / 'b{r}.conv1' (b4: conv1 only)."""
    return tuple(base.FeatureSpec(f'b{r}.{name}', r, r, self.arch.channels_at(r))
                 for r, name in self.arch.layers)

  @property
  def feature_names(self) -> list[str]:
    return [spec.name for spec in self.feature_specs]

  def sampling(self, config) -> base.StyleSampling:
    if self.arch.c_dim:
      raise InputError(f'config.generator: this StyleGAN2 is class-conditional (c_dim '
                       f'{self.arch.c_dim}); the pipeline draws unconditional samples only '
                       '(the library API takes labels: g.map(z, c))')
    return super().sampling(config)


Generator = StyleGAN2Generator
