"""BigGAN-deep generator (the layout of the `pytorch-pretrained-biggan` package, converted
from TF-Hub) as pure functions over a parameter pytree (NHWC).

Differences from BigGAN (`biggan.py`): bottleneck residual blocks (1x1 -> 3x3 -> 3x3 ->
1x1 convs, each after a conditional batch norm + ReLU) of which every second one
upsamples, a shortcut that drops half the channels instead of a 1x1 conv, one
conditioning vector concat(z, class embedding) for every layer (no z chunks), and batch
norm statistics stored for `n_stats` truncation values in [0, 1] and picked by the
truncation argument. Spectral norm is folded into the weights at conversion.
Parameter layout ('/'-joined names; D = 2 * z_dim; C: channels where used):

  embedding/weight                                   [num_classes, z_dim]
  linear/{weight [D, 4 * 4 * 16 * ch], bias}          output in (h, w, c) order
  block{i}/bn{0,1,2,3}/{means, vars [n_stats, C], gain_kernel, bias_kernel [D, C]}
  block{i}/conv0/{weight [1, 1, C_in, C_mid], bias}, conv1, conv2 [3, 3, C_mid, C_mid],
  block{i}/conv3/{weight [1, 1, C_mid, C_out], bias}
  attention/{theta, phi, g, o}/weight, attention/gamma   (see biggan.attention_shapes)
  output/bn/{means, vars [n_stats, C], gain, bias [C]}
  output/conv/{weight [3, 3, C, 3], bias [3]}
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from dgan_jax.generators import biggan
from dgan_jax.generators.biggan import Params

# (upsample, input channels / ch, output channels / ch) of each block of the
# package's 128 px model (its BigGANConfig default).
LAYERS_128 = ((False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8),
              (False, 8, 8), (True, 8, 4), (False, 4, 4), (True, 4, 2),
              (False, 2, 2), (True, 2, 1))


@dataclasses.dataclass(frozen=True)
class BigGANDeepArch:
  """Everything needed to rebuild the network besides its weights (defaults: 128 px)."""
  ch: int = 128                        # channel_width
  z_dim: int = 128                     # also the class embedding width
  num_classes: int = 1000
  layers: tuple[tuple[bool, int, int], ...] = LAYERS_128
  attention_position: int | None = 8   # attention runs before block `attention_position`
  n_stats: int = 51
  eps: float = 1e-4                    # batch norm epsilon
  reduction_factor: int = 4            # block input channels / bottleneck channels

  def __post_init__(self):
    layers = tuple((bool(up), int(a), int(b)) for up, a, b in self.layers)
    object.__setattr__(self, 'layers', layers)
    if not layers:
      raise ValueError('layers is empty')
    for i, (_, a, b) in enumerate(layers):
      if a != b and a != 2 * b:
        raise ValueError(f'block {i}: output channels {b} * ch must equal the input '
                         f'{a} * ch or half of it (the shortcut drops channels)')
      if self.ch * a < self.reduction_factor:
        raise ValueError(f'block {i}: {self.ch * a} channels, fewer than the '
                         f'reduction factor {self.reduction_factor}')
    if layers[0][1] != 16 or layers[-1][2] != 1:
      raise ValueError('the first block must take 16 * ch channels (the linear layer gives '
                       f'4x4x16ch) and the last give 1 * ch (the output layer), got {layers}')
    for i in range(1, len(layers)):
      if layers[i][1] != layers[i - 1][2]:
        raise ValueError(f'block {i} takes {layers[i][1]} * ch channels, block {i - 1} '
                         f'gives {layers[i - 1][2]} * ch')
    if self.attention_position is not None and not 0 <= self.attention_position < len(layers):
      raise ValueError(f'attention_position {self.attention_position} is not a block index '
                       f'(0..{len(layers) - 1}) or None')
    if self.n_stats < 2:
      raise ValueError(f'n_stats must be at least 2, got {self.n_stats}')

  @property
  def resolution(self) -> int:
    return 4 * 2 ** sum(up for up, _, _ in self.layers)

  @property
  def cond_dim(self) -> int:
    return 2 * self.z_dim

  def block_channels(self, i: int) -> tuple[int, int, int]:
    """(C_in, C_mid, C_out) of block i."""
    _, a, b = self.layers[i]
    return self.ch * a, self.ch * a // self.reduction_factor, self.ch * b

  @property
  def modules(self) -> list[tuple[str, int]]:
    """('block', i) and ('attention', position) in the order they run."""
    order = []
    for i in range(len(self.layers)):
      if i == self.attention_position:
        order.append(('attention', i))
      order.append(('block', i))
    return order

  @property
  def feature_channels(self) -> list[int]:
    """Channels of each map `synthesize` returns, one per module in `modules` order."""
    return [self.block_channels(i)[0] if kind == 'attention' else self.block_channels(i)[2]
            for kind, i in self.modules]

  @property
  def feature_names(self) -> list[str]:
    """'block{i}' and 'attention' in the order they run."""
    return ['attention' if kind == 'attention' else f'block{i}' for kind, i in self.modules]

  @property
  def feature_resolutions(self) -> list[int]:
    resolutions = []
    for kind, i in self.modules:
      ups = sum(up for up, _, _ in self.layers[:i + (kind == 'block')])
      resolutions.append(4 * 2 ** ups)
    return resolutions

  def to_json(self) -> dict:
    record = dataclasses.asdict(self)
    record['layers'] = [list(layer) for layer in self.layers]
    return {'type': 'biggan_deep', **record}


def truncation_stats(truncation: float, n_stats: int) -> tuple[np.ndarray, np.ndarray]:
  """Which stored statistics a truncation value uses: (indices [2] int32, weights [2]).

  Statistics i were stored for truncation i / (n_stats - 1). Between two entries the
  package weights the lower entry by the fractional part, not by 1 minus it; kept as
  is, so that converted models compute what the package computes.
  """
  truncation = float(truncation)
  if not 0 < truncation <= 1:
    raise ValueError(f'truncation must be in (0, 1], got {truncation}')
  fraction, whole = math.modf(truncation / (1.0 / (n_stats - 1)))
  start = int(whole)
  if fraction == 0.0:
    return np.array([start, start], np.int32), np.array([1.0, 0.0], np.float32)
  return (np.array([start, start + 1], np.int32),
          np.array([fraction, 1 - fraction], np.float32))


def _stats(p: Params, index: jax.Array, weight: jax.Array):
  mean = p['means'][index[0]] * weight[0] + p['means'][index[1]] * weight[1]
  var = p['vars'][index[0]] * weight[0] + p['vars'][index[1]] * weight[1]
  return mean, var


def _bottleneck_block(p: Params, x: jax.Array, cond: jax.Array, upsample: bool,
                      stats: tuple[jax.Array, jax.Array], eps: float) -> jax.Array:
  def bn_relu(name, h):
    mean, var = _stats(p[name], *stats)
    return jax.nn.relu(biggan.conditional_batch_norm(p[name], h, cond, eps, mean, var))

  h = biggan.conv(p['conv0'], bn_relu('bn0', x))
  h = bn_relu('bn1', h)
  if upsample:
    h = biggan.upsample_nearest(h)
  h = biggan.conv(p['conv1'], h)
  h = biggan.conv(p['conv2'], bn_relu('bn2', h))
  h = biggan.conv(p['conv3'], bn_relu('bn3', h))
  shortcut = x[..., :h.shape[-1]]
  if upsample:
    shortcut = biggan.upsample_nearest(shortcut)
  return h + shortcut


def embed_classes(params: Params, class_vecs: jax.Array) -> jax.Array:
  """class vectors [B, num_classes] -> class embedding [B, z_dim]."""
  return class_vecs @ params['embedding']['weight'].astype(class_vecs.dtype)


def synthesis(params: Params, arch: BigGANDeepArch, z: jax.Array, embedding: jax.Array,
              stats_index: jax.Array, stats_weight: jax.Array
              ) -> tuple[jax.Array, list[jax.Array]]:
  """z [B, z_dim], class embedding [B, z_dim], statistics choice (`truncation_stats`)
  -> (image [B, H, W, 3] in [-1, 1], feature maps: list of [B, r, r, C], one per
  module in `arch.modules` order)."""
  cond = jnp.concatenate([z, embedding], axis=1)
  stats = (stats_index, stats_weight.astype(z.dtype))
  x = biggan.dense(params['linear'], cond).reshape(z.shape[0], 4, 4, -1)
  features = []
  for kind, i in arch.modules:
    if kind == 'attention':
      x = biggan.self_attention(params['attention'], x)
    else:
      x = _bottleneck_block(params[f'block{i}'], x, cond, arch.layers[i][0], stats, arch.eps)
    features.append(x)
  out = params['output']
  mean, var = _stats(out['bn'], *stats)
  x = jax.nn.relu(biggan.batch_norm(x, mean, var, out['bn']['gain'], out['bn']['bias'],
                                    arch.eps))
  return jnp.tanh(biggan.conv(out['conv'], x)), features


def param_shapes(arch: BigGANDeepArch) -> dict[str, tuple[int, ...]]:
  """Flat '/'-joined parameter names -> shapes, in checkpoint order."""
  d = arch.cond_dim
  shapes = {'embedding/weight': (arch.num_classes, arch.z_dim),
            'linear/weight': (d, 4 * 4 * 16 * arch.ch),
            'linear/bias': (4 * 4 * 16 * arch.ch,)}

  def bn(prefix, c, conditional=True):
    shapes[f'{prefix}/means'] = (arch.n_stats, c)
    shapes[f'{prefix}/vars'] = (arch.n_stats, c)
    if conditional:
      shapes[f'{prefix}/gain_kernel'] = (d, c)
      shapes[f'{prefix}/bias_kernel'] = (d, c)
    else:
      shapes[f'{prefix}/gain'] = (c,)
      shapes[f'{prefix}/bias'] = (c,)

  def conv_shapes(prefix, k, c_in, c_out):
    shapes[f'{prefix}/weight'] = (k, k, c_in, c_out)
    shapes[f'{prefix}/bias'] = (c_out,)

  for kind, i in arch.modules:
    c_in, c_mid, c_out = arch.block_channels(i)
    if kind == 'attention':
      biggan.attention_shapes(shapes, 'attention', c_in)
      continue
    block = f'block{i}'
    bn(f'{block}/bn0', c_in)
    conv_shapes(f'{block}/conv0', 1, c_in, c_mid)
    bn(f'{block}/bn1', c_mid)
    conv_shapes(f'{block}/conv1', 3, c_mid, c_mid)
    bn(f'{block}/bn2', c_mid)
    conv_shapes(f'{block}/conv2', 3, c_mid, c_mid)
    bn(f'{block}/bn3', c_mid)
    conv_shapes(f'{block}/conv3', 1, c_mid, c_out)
  bn('output/bn', arch.ch, conditional=False)
  conv_shapes('output/conv', 3, arch.ch, 3)
  return shapes


def init_params(arch: BigGANDeepArch, key: jax.Array) -> Params:
  """Random weights of `arch` (see `biggan.random_params`)."""
  return biggan.random_params(param_shapes(arch), key)


@functools.lru_cache(maxsize=None)
def jitted(arch: BigGANDeepArch):
  """Compiled (class embedding, synthesis from class vectors) for one architecture."""
  embed_fn = jax.jit(embed_classes)

  @functools.partial(jax.jit, static_argnames=('return_features',))
  def synth_fn(params, z, class_vecs, stats_index, stats_weight, return_features=True):
    image, features = synthesis(params, arch, z, embed_classes(params, class_vecs),
                                stats_index, stats_weight)
    return image, (features if return_features else [])

  return embed_fn, synth_fn


class BigGANDeepGenerator(biggan.ClassConditionalGenerator):
  """A BigGAN-deep network: params (pytree) + architecture; methods are jitted.

    g = dgan_jax.generators.load(path)
    image, feature_maps = g.synthesize(z, y, truncation=0.4)

  `truncation` picks the stored batch-norm statistics; draw z from the matching
  truncated normal (as the package's `truncated_noise_sample`) yourself.
  """

  family = 'biggan_deep'
  arch_class = BigGANDeepArch
  param_shapes = staticmethod(param_shapes)
  init_params = staticmethod(init_params)
  embed_classes = staticmethod(embed_classes)

  def __init__(self, arch: BigGANDeepArch, params: Params, dtype=jnp.float32):
    super().__init__(arch, params, dtype)
    self._embed, self._synthesize = jitted(arch)

  def _synthesis(self, params, z, embedding):
    """The pipeline samples at truncation 1 (the last stored statistics), z as
    config.biggan.z_std * N(0, I)."""
    index, weight = truncation_stats(1.0, self.arch.n_stats)
    return synthesis(params, self.arch, z, embedding, jnp.asarray(index), jnp.asarray(weight))

  @property
  def dim_z(self) -> int:
    return self.arch.z_dim

  @property
  def embedding_dim(self) -> int:
    return self.arch.z_dim

  def class_embedding(self, y) -> jax.Array:
    """y: ids [B] or class vectors [B, num_classes] -> embedding [B, z_dim] (float32)."""
    vectors = jnp.asarray(biggan.class_vectors(y, self.num_classes), self.dtype)
    return self._embed(self.params, vectors).astype(jnp.float32)

  def synthesize(self, z, y, truncation: float = 1.0, return_features: bool = True):
    """z [B, z_dim], y ids [B] or class vectors [B, num_classes], truncation in (0, 1]
    -> (image [B, H, W, 3] float32 in [-1, 1]; feature_maps: list of [B, r, r, C] in
    the compute dtype, every block's and the attention layer's output in order)."""
    z, vectors = self._inputs(z, y)
    index, weight = truncation_stats(truncation, self.arch.n_stats)
    image, features = self._synthesize(self.params, z, vectors, index, weight,
                                       return_features)
    return image.astype(jnp.float32), features

  def __call__(self, z, y, truncation: float = 1.0):
    return self.synthesize(z, y, truncation)


Generator = BigGANDeepGenerator
