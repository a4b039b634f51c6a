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
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dgan_jax.errors import InputError
from dgan_jax.generators import base
from dgan_jax.generators import checkpoint
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
    log2 = math.log2(self.resolution)
    if not (log2.is_integer() and 2 <= log2 <= 10):
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
  """Depthwise [1,2,1] x [1,2,1] / 16 filter, zero padding 1."""
  k = jnp.array([1., 2., 1.], x.dtype)
  kernel = (k[:, None] * k[None, :] / 16.)[:, :, None, None]
  kernel = jnp.tile(kernel, (1, 1, 1, x.shape[-1]))
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=x.shape[-1])


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


def mapping(params: Params, arch: StyleGAN1Arch, z: jax.Array) -> jax.Array:
  """z [B, latent_size] -> w [B, num_ws, dlatent_size] (broadcast over layers)."""
  x = z * jax.lax.rsqrt(jnp.mean(jnp.square(z), axis=1, keepdims=True) + PIXEL_NORM_EPS)
  for i in range(arch.mapping_layers):
    x = _lrelu(_dense(params['mapping'][f'dense{i}'], x, math.sqrt(2), arch.mapping_lrmul))
  return jnp.broadcast_to(x[:, None, :], (x.shape[0], arch.num_ws, x.shape[1]))


def truncate(w: jax.Array, avg_latent: jax.Array, psi: float, cutoff: int) -> jax.Array:
  """w [B, num_ws, D]; avg_latent [D] or [num_ws, D]. Layers < cutoff move toward the average."""
  layer = jnp.arange(w.shape[1])[None, :, None]
  return jnp.where(layer < cutoff, avg_latent + psi * (w - avg_latent), w)


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


def draw_const_noise(arch: StyleGAN1Arch, seed: int) -> list[np.ndarray]:
  """Constant noise inputs [1, h, w, 1] from numpy RandomState(seed), for networks that
  store none (DatasetGAN's .pt files, random-weight generators)."""
  rng = np.random.RandomState(seed)
  return [rng.standard_normal((1, h, w, 1)).astype(np.float32) for h, w in arch.noise_shapes]


@functools.lru_cache(maxsize=None)
def jitted(arch: StyleGAN1Arch):
  """Compiled (map, synthesis, synthesis-from-keys) for one architecture."""
  map_fn = jax.jit(lambda params, z: mapping(params, arch, z))

  @functools.partial(jax.jit, static_argnames=('return_features',))
  def synth_fn(params, w, noise, return_features=True):
    image, features = synthesis(params, arch, w, noise)
    return image, (features if return_features else [])

  @functools.partial(jax.jit, static_argnames=('return_features',))
  def synth_keys_fn(params, w, keys, return_features=True):
    image, features = synthesis(params, arch, w, noise_from_keys(arch, keys, w.dtype))
    return image, (features if return_features else [])

  return map_fn, synth_fn, synth_keys_fn


def noise_from_keys(arch: StyleGAN1Arch, keys: jax.Array, dtype=jnp.float32) -> list[jax.Array]:
  """One key per sample, keys [B] -> noise list of [B, h, w, 1]; layer j uses fold_in(key, j)."""
  def one(key):
    return [jax.random.normal(jax.random.fold_in(key, j), (h, w, 1), dtype)
            for j, (h, w) in enumerate(arch.noise_shapes)]
  return jax.vmap(one)(keys)


def _is_key_array(x) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


class StyleGAN1Generator(base.Generator):
  """A StyleGAN (v1) network: params (pytree) + architecture; methods are jitted.

    g = dgan_jax.generators.load(path)
    w = g.truncate(g.map(z), psi=0.7, cutoff=8)        # z [B, 512] -> w [B, num_ws, 512]
    image, feature_maps = g.synthesize(w, noise='const')

  `noise` is one of:
    'const'  the constant noise stored in the checkpoint (the default),
    'zero'   no noise,
    a PRNG key (one key: the whole batch; a batch of keys [B]: one per sample, so
             sample i does not depend on the batch it is in),
    a list of num_ws arrays [B, h, w, 1] or [B, 1, h, w] (B may be 1), layer order.
  """

  family = 'stylegan1'

  def __init__(self, arch: StyleGAN1Arch, params: Params, avg_latent=None,
               const_noise: Sequence[np.ndarray] | None = None, dtype=jnp.float32):
    self.arch = arch
    self.dtype = jnp.dtype(dtype)
    self.params = jax.tree.map(lambda a: jnp.asarray(a, self.dtype), params)
    self.avg_latent = None if avg_latent is None else jnp.asarray(avg_latent, jnp.float32)
    self.const_noise = None if const_noise is None else [
        jnp.asarray(n, self.dtype) for n in const_noise]
    self._map, self._synthesize, self._synthesize_keys = jitted(arch)

  @classmethod
  def from_checkpoint(cls, arch_json, arrays, source, dtype) -> 'StyleGAN1Generator':
    arch = checkpoint.build_arch(StyleGAN1Arch, arch_json, source)
    params = {k: v for k, v in arrays.items()
              if k != 'avg_latent' and not k.startswith('noise/')}
    checkpoint.check_names_and_shapes(params, param_shapes(arch), source)
    noise_names = [f'noise/{j}' for j in range(arch.num_ws)]
    const_noise = None
    if all(n in arrays for n in noise_names):
      const_noise = [arrays[n] for n in noise_names]
    return cls(arch, unflatten(params), avg_latent=arrays.get('avg_latent'),
               const_noise=const_noise, dtype=dtype)

  @classmethod
  def random(cls, arch_kwargs, seed, dtype) -> 'StyleGAN1Generator':
    """NVIDIA's initialisation (`init_params`), constant noise from RandomState(seed) and
    the average W of 1024 mapped z."""
    arch = base.build_random_arch(StyleGAN1Arch, arch_kwargs)
    g = cls(arch, init_params(arch, jax.random.key(seed)),
            const_noise=draw_const_noise(arch, seed), dtype=dtype)
    z = np.random.RandomState(seed).standard_normal((1024, arch.latent_size))
    g.avg_latent = jnp.mean(g.map(z)[:, 0], axis=0)
    return g

  @property
  def resolution(self) -> int:
    return self.arch.resolution

  @property
  def num_ws(self) -> int:
    return self.arch.num_ws

  @property
  def latent_size(self) -> int:
    return self.arch.latent_size

  @property
  def feature_channels(self) -> list[int]:
    return self.arch.feature_channels

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

  def files_for_annotators(self) -> dict[str, np.ndarray]:
    if self.avg_latent is None:
      return {}
    return {'avg_latent.npy': np.asarray(self.avg_latent, np.float32)}

  def set_avg_latent(self, path: str) -> None:
    """Replaces the checkpoint's average W by a .npy file ([512] or [num_ws, 512])."""
    try:
      avg = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
      raise InputError(f'{path}: not a readable .npy array ({e})') from None
    if avg.shape not in ((self.arch.dlatent_size,), (self.num_ws, self.arch.dlatent_size)):
      raise InputError(f'{path}: average W must be [512] or [{self.num_ws}, 512], got '
                       f'{avg.shape}')
    self.avg_latent = jnp.asarray(avg, jnp.float32)

  def sampling(self, config) -> base.StyleSampling:
    sampling = base.StyleSampling.from_config(config, self.arch.latent_size, self.num_ws)
    if self.avg_latent is None and sampling.truncation_psi != 1:
      raise InputError('config.generator.truncation_psi: this checkpoint has no average W '
                       'to truncate toward; convert it with --avg-latent, set '
                       'config.generator.avg_latent, or set truncation_psi=1')
    if sampling.noise == 'const' and self.const_noise is None:
      raise InputError("config.generator.noise: this checkpoint stores no constant noise; "
                       "use 'zero' or 'per_sample'")
    return sampling

  def variables(self, sampling: base.StyleSampling) -> dict:
    avg = self.avg_latent
    if avg is None:   # truncation_psi is 1: truncating toward zeros leaves w as it is
      avg = jnp.zeros((self.arch.dlatent_size,), jnp.float32)
    noise = None if sampling.noise == 'per_sample' else self.noise(sampling.noise, 1)
    return {'params': self.params, 'avg_latent': avg, 'noise': noise}

  def regenerate(self, inputs, sampling: base.StyleSampling):
    """Through the public API: synthesize(truncate(map(z))) (or synthesize(w))."""
    if 'w' in inputs:
      w = inputs['w']
    else:
      avg = self.variables(sampling)['avg_latent']
      w = self.truncate(self.map(inputs['z']), sampling.truncation_psi,
                        sampling.truncation_cutoff, avg_latent=avg)
    noise = sampling.noise
    if noise == 'per_sample':
      noise = sampling.noise_keys(jnp.asarray(inputs['index']))
    return self.synthesize(w, noise=noise)

  def apply(self, variables, inputs, sampling: base.StyleSampling):
    """inputs 'z' [B, latent_size] (mapped and truncated) or 'w' [B, num_ws, 512], and
    'index' [B] (per-sample noise) -> (image, the 2 maps per block, None)."""
    params = variables['params']
    if 'w' in inputs:
      w = inputs['w']
    else:
      w = truncate(mapping(params, self.arch, inputs['z']), variables['avg_latent'],
                   sampling.truncation_psi, sampling.truncation_cutoff)
    if sampling.noise == 'per_sample':
      noise = noise_from_keys(self.arch, sampling.noise_keys(inputs['index']), self.dtype)
    else:
      noise = variables['noise']
    image, features = synthesis(params, self.arch, w.astype(self.dtype), noise)
    return image, features, None

  def map(self, z: jax.Array) -> jax.Array:
    """z [B, 512] -> w [B, num_ws, 512] (float32)."""
    z = jnp.asarray(z, jnp.float32)
    if z.ndim != 2 or z.shape[1] != self.arch.latent_size:
      raise ValueError(f'z must be [B, {self.arch.latent_size}], got {z.shape}')
    mapping_params = jax.tree.map(lambda a: a.astype(jnp.float32), self.params['mapping'])
    return self._map({'mapping': mapping_params}, z)

  def truncate(self, w: jax.Array, psi: float = 0.7, cutoff: int = 8,
               avg_latent=None) -> jax.Array:
    """w [B, num_ws, 512] -> w moved toward the average W by psi for layers < cutoff."""
    avg = self.avg_latent if avg_latent is None else jnp.asarray(avg_latent, jnp.float32)
    if avg is None:
      raise ValueError('this checkpoint has no average W: pass avg_latent=, or convert with '
                       '--avg-latent avg_latent.npy')
    return truncate(jnp.asarray(w, jnp.float32), avg, psi, cutoff)

  def noise(self, noise, batch: int) -> list[jax.Array]:
    """Resolves a `noise` argument (see the class docstring) to arrays [B|1, h, w, 1]."""
    shapes = self.arch.noise_shapes
    if isinstance(noise, str):
      if noise == 'zero':
        return [jnp.zeros((1, h, w, 1), self.dtype) for h, w in shapes]
      if noise == 'const':
        if self.const_noise is None:
          raise ValueError("this checkpoint stores no constant noise: pass noise='zero', "
                           'a PRNG key or arrays')
        return self.const_noise
      raise ValueError(f"noise must be 'const', 'zero', a PRNG key or arrays, got {noise!r}")
    if isinstance(noise, (list, tuple)):
      if len(noise) != len(shapes):
        raise ValueError(f'expected {len(shapes)} noise arrays, got {len(noise)}')
      resolved = []
      for j, (n, (h, w)) in enumerate(zip(noise, shapes)):
        n = jnp.asarray(n, self.dtype)
        if n.ndim == 4 and n.shape[1:] == (1, h, w):
          n = jnp.transpose(n, (0, 2, 3, 1))
        if n.ndim != 4 or n.shape[1:] != (h, w, 1) or n.shape[0] not in (1, batch):
          raise ValueError(f'noise[{j}] must be [{batch}, {h}, {w}, 1] or [{batch}, 1, {h}, {w}],'
                           f' got {tuple(n.shape)}')
        resolved.append(n)
      return resolved
    raise ValueError(f'unsupported noise argument of type {type(noise).__name__}')

  def synthesize(self, w: jax.Array, noise='const', return_features: bool = True):
    """w [B, num_ws, 512] -> (image [B, H, W, 3] float32 about [-1, 1], not clipped;
    feature_maps: list of 2 * log2(H/2) arrays [B, r, r, C_r] in the compute dtype)."""
    w = jnp.asarray(w, self.dtype)
    if w.ndim != 3 or w.shape[1:] != (self.num_ws, self.arch.dlatent_size):
      raise ValueError(f'w must be [B, {self.num_ws}, {self.arch.dlatent_size}], got {w.shape}')
    if _is_key_array(noise) or (isinstance(noise, (jax.Array, np.ndarray))
                                and noise.dtype == np.uint32):
      keys = noise
      single = keys.ndim == (0 if _is_key_array(keys) else 1)
      if single:
        keys = jax.random.split(keys, w.shape[0])
      image, features = self._synthesize_keys(self.params, w, keys, return_features)
    else:
      image, features = self._synthesize(self.params, w, self.noise(noise, w.shape[0]),
                                         return_features)
    return image.astype(jnp.float32), features

  def __call__(self, z, psi: float = 0.7, cutoff: int = 8, noise='const'):
    """z [B, 512] -> synthesize(truncate(map(z))). psi=1 skips truncation."""
    w = self.map(z)
    if psi != 1:
      w = self.truncate(w, psi, cutoff)
    return self.synthesize(w, noise)


Generator = StyleGAN1Generator
