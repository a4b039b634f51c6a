"""BigGAN generator (BigGAN-PyTorch's `Generator`, the layout of BigDatasetGAN's
`biggan-512.pth`) as pure functions over a parameter pytree (NHWC).

Spectral norm is folded into the weights at conversion and batch norm runs on its
stored statistics (eval mode), so the network is a fixed function of (z, class).
Parameter layout ('/'-joined names; C_in, C_out: a block's channels; D: cond_dim):

  shared/embedding                                   [num_classes, shared_dim]
  linear/{weight [z_chunk, 4 * 4 * C_0], bias}        output in (h, w, c) order
  block{i}/bn1/{mean, var [C_in], gain_kernel, bias_kernel [D, C_in]}
  block{i}/conv1/{weight [3, 3, C_in, C_out], bias [C_out]}
  block{i}/bn2/{mean, var [C_out], gain_kernel, bias_kernel [D, C_out]}
  block{i}/conv2/{weight [3, 3, C_out, C_out], bias [C_out]}
  block{i}/conv_sc/{weight [1, 1, C_in, C_out], bias [C_out]}
  attention{i}/{theta, phi [1, 1, C, C/8]; g [1, 1, C, C/2]; o [1, 1, C/2, C]}/weight
  attention{i}/gamma                                 []
  output/bn/{mean, var, gain, bias}                  [C]
  output/conv/{weight [3, 3, C, 3], bias [3]}

Every block doubles the resolution (8, 16, ..., resolution px); attention{i} follows
block i when block i's output resolution is in `attention_resolutions`. Hierarchical
latent: z splits into num_blocks + 1 chunks; chunk 0 feeds `linear` and the batch
norms of block i read concat(class embedding, chunk i + 1).

The ops (conditional batch norm, self-attention, ...) are shared with BigGAN-deep
(`biggan_deep.py`).
"""

import abc
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dgan_jax.generators import base
from dgan_jax.generators import checkpoint
from dgan_jax.generators.checkpoint import unflatten

Params = dict[str, Any]

BOTTOM_WIDTH = 4
# BigGAN-PyTorch's G_arch: per output resolution, the input and output channels of
# each block as multiples of G_ch.
CHANNEL_MULTIPLIERS = {
    32: ((4, 4, 4), (4, 4, 4)),
    64: ((16, 16, 8, 4), (16, 8, 4, 2)),
    128: ((16, 16, 8, 4, 2), (16, 8, 4, 2, 1)),
    256: ((16, 16, 8, 8, 4, 2), (16, 8, 8, 4, 2, 1)),
    512: ((16, 16, 8, 8, 4, 2, 1), (16, 8, 8, 4, 2, 1, 1)),
}


@dataclasses.dataclass(frozen=True)
class BigGANArch:
  """Everything needed to rebuild the network besides its weights.

  Defaults are BigDatasetGAN's BigGAN-512 (TF-Hub weights in BigGAN-PyTorch layout).
  """
  resolution: int = 512
  ch: int = 96                   # G_ch
  dim_z: int = 128               # after BigGAN-PyTorch rounds it to whole chunks
  shared_dim: int = 128
  num_classes: int = 1000
  attention_resolutions: tuple[int, ...] = (64,)
  hier: bool = True
  bn_eps: float = 1e-4           # BN_eps of the class-conditional batch norms
  output_bn_eps: float = 1e-5    # the output batch norm keeps BigGAN-PyTorch's default

  def __post_init__(self):
    object.__setattr__(self, 'attention_resolutions',
                       tuple(int(r) for r in self.attention_resolutions))
    if self.resolution not in CHANNEL_MULTIPLIERS:
      raise ValueError(f'resolution must be one of {sorted(CHANNEL_MULTIPLIERS)}, '
                       f'got {self.resolution}')
    unknown = set(self.attention_resolutions) - set(self.block_resolutions)
    if unknown:
      raise ValueError(f'attention resolutions {sorted(unknown)} are not block outputs '
                       f'{self.block_resolutions}')
    if self.hier and self.dim_z % self.num_slots:
      raise ValueError(f'dim_z {self.dim_z} does not split into {self.num_slots} equal chunks')

  @property
  def num_blocks(self) -> int:
    return len(CHANNEL_MULTIPLIERS[self.resolution][1])

  @property
  def block_resolutions(self) -> list[int]:
    return [BOTTOM_WIDTH * 2 ** (i + 1) for i in range(self.num_blocks)]

  @property
  def block_channels(self) -> list[tuple[int, int]]:
    """(C_in, C_out) of each block."""
    ins, outs = CHANNEL_MULTIPLIERS[self.resolution]
    return [(self.ch * a, self.ch * b) for a, b in zip(ins, outs)]

  def has_attention(self, block: int) -> bool:
    return self.block_resolutions[block] in self.attention_resolutions

  @property
  def latent_size(self) -> int:
    """z width, under the name the StyleGAN architecture record uses."""
    return self.dim_z

  @property
  def num_slots(self) -> int:
    return self.num_blocks + 1 if self.hier else 1

  @property
  def z_chunk_size(self) -> int:
    """Width of each z chunk; the whole z when not hierarchical."""
    return self.dim_z // self.num_slots

  @property
  def cond_dim(self) -> int:
    """Width of the vector the conditional batch norms read."""
    return self.shared_dim + (self.z_chunk_size if self.hier else 0)

  @property
  def feature_channels(self) -> list[int]:
    """Channels of each map `synthesize` returns: every block, then its attention."""
    channels = []
    for i, (_, c_out) in enumerate(self.block_channels):
      channels += [c_out] * (2 if self.has_attention(i) else 1)
    return channels

  @property
  def feature_resolutions(self) -> list[int]:
    return [r for i, r in enumerate(self.block_resolutions)
            for _ in range(2 if self.has_attention(i) else 1)]

  @property
  def feature_names(self) -> list[str]:
    """'block{i}' (the block's output), then 'attention{i}' where attention follows."""
    names = []
    for i in range(self.num_blocks):
      names += [f'block{i}'] + ([f'attention{i}'] if self.has_attention(i) else [])
    return names

  def to_json(self) -> dict:
    record = dataclasses.asdict(self)
    record['attention_resolutions'] = list(self.attention_resolutions)
    return {'type': 'biggan', **record}


# Ops shared with BigGAN-deep.

def dense(p: Params, x: jax.Array) -> jax.Array:
  """x [..., in] @ weight [in, out] + bias."""
  return x @ p['weight'].astype(x.dtype) + p['bias'].astype(x.dtype)


def conv(p: Params, x: jax.Array) -> jax.Array:
  """Stride-1 'same' convolution, x [B, H, W, in], weight [k, k, in, out], optional bias."""
  y = jax.lax.conv_general_dilated(
      x, p['weight'].astype(x.dtype), window_strides=(1, 1), padding='SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  if 'bias' in p:
    y = y + p['bias'].astype(x.dtype)
  return y


def upsample_nearest(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, 2H, 2W, C], each pixel repeated (F.interpolate 'nearest')."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def batch_norm(x: jax.Array, mean: jax.Array, var: jax.Array, gain: jax.Array,
               bias: jax.Array, eps: float) -> jax.Array:
  """Batch norm with stored statistics: x [B, H, W, C]; mean, var [C];
  gain, bias [C] or per sample [B, C]."""
  scale = jax.lax.rsqrt(var.astype(jnp.float32) + eps).astype(x.dtype)
  gain = jnp.asarray(gain, x.dtype)
  bias = jnp.asarray(bias, x.dtype)
  if gain.ndim == 2:
    gain, bias = gain[:, None, None, :], bias[:, None, None, :]
  return (x - mean.astype(x.dtype)) * scale * gain + bias


def conditional_batch_norm(p: Params, x: jax.Array, cond: jax.Array, eps: float,
                           mean=None, var=None) -> jax.Array:
  """Class-conditional batch norm: gain 1 + cond @ gain_kernel, bias cond @ bias_kernel.

  x [B, H, W, C], cond [B, D]; statistics from p['mean'], p['var'] unless given.
  """
  gain = 1 + cond @ p['gain_kernel'].astype(x.dtype)
  bias = cond @ p['bias_kernel'].astype(x.dtype)
  mean = p['mean'] if mean is None else mean
  var = p['var'] if var is None else var
  return batch_norm(x, mean, var, gain, bias, eps)


def _max_pool_2x2(x: jax.Array) -> jax.Array:
  b, h, w, c = x.shape
  return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def self_attention(p: Params, x: jax.Array) -> jax.Array:
  """SA-GAN non-local block: x + gamma * o(softmax(theta phi^T) g), with phi and g
  max-pooled 2x2. x [B, H, W, C] -> [B, H, W, C]."""
  b, h, w, c = x.shape
  theta = conv(p['theta'], x).reshape(b, h * w, -1)
  phi = _max_pool_2x2(conv(p['phi'], x)).reshape(b, h * w // 4, -1)
  g = _max_pool_2x2(conv(p['g'], x)).reshape(b, h * w // 4, -1)
  logits = jnp.einsum('bnk,bmk->bnm', theta, phi).astype(jnp.float32)
  attention = jax.nn.softmax(logits, axis=-1).astype(x.dtype)
  attended = jnp.einsum('bnm,bmk->bnk', attention, g).reshape(b, h, w, -1)
  return x + p['gamma'].astype(x.dtype) * conv(p['o'], attended)


def class_vectors(y, num_classes: int, batch: int | None = None) -> np.ndarray:
  """Class ids [B] (ints) or class vectors [B, num_classes] (one-hot or soft)
  -> float32 [B, num_classes]. Raises ValueError for ids out of range or bad shapes."""
  y = np.asarray(y)
  if y.ndim == 1 and np.issubdtype(y.dtype, np.integer):
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.size:
      raise ValueError(f'class ids must be in [0, {num_classes}), got {bad[:5].tolist()}')
    vectors = np.zeros((y.shape[0], num_classes), np.float32)
    vectors[np.arange(y.shape[0]), y] = 1
  elif y.ndim == 2 and y.shape[1] == num_classes and np.issubdtype(y.dtype, np.number):
    vectors = y.astype(np.float32)
  else:
    raise ValueError(f'y must be int class ids [B] or class vectors [B, {num_classes}], '
                     f'got {y.dtype} {y.shape}')
  if batch is not None and vectors.shape[0] != batch:
    raise ValueError(f'y has {vectors.shape[0]} classes for a batch of {batch} latents')
  return vectors


# BigGAN-PyTorch.

def embed_classes(params: Params, class_vecs: jax.Array) -> jax.Array:
  """class vectors [B, num_classes] -> shared class embedding [B, shared_dim]."""
  return class_vecs @ params['shared']['embedding'].astype(class_vecs.dtype)


def _residual_block(p: Params, x: jax.Array, cond: jax.Array, eps: float) -> jax.Array:
  h = jax.nn.relu(conditional_batch_norm(p['bn1'], x, cond, eps))
  h = conv(p['conv1'], upsample_nearest(h))
  h = jax.nn.relu(conditional_batch_norm(p['bn2'], h, cond, eps))
  h = conv(p['conv2'], h)
  return h + conv(p['conv_sc'], upsample_nearest(x))


def synthesis(params: Params, arch: BigGANArch, z: jax.Array,
              embedding: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
  """z [B, dim_z], class embedding [B, shared_dim] -> (image [B, H, W, 3] in [-1, 1],
  feature maps: list of [B, r, r, C], every block's output then its attention's)."""
  if arch.hier:
    chunks = jnp.split(z, arch.num_slots, axis=1)
    z0 = chunks[0]
    conds = [jnp.concatenate([embedding, chunk], axis=1) for chunk in chunks[1:]]
  else:
    z0 = z
    conds = [embedding] * arch.num_blocks
  x = dense(params['linear'], z0).reshape(z.shape[0], BOTTOM_WIDTH, BOTTOM_WIDTH, -1)
  features = []
  for i in range(arch.num_blocks):
    x = _residual_block(params[f'block{i}'], x, conds[i], arch.bn_eps)
    features.append(x)
    if arch.has_attention(i):
      x = self_attention(params[f'attention{i}'], x)
      features.append(x)
  out = params['output']
  x = jax.nn.relu(batch_norm(x, out['bn']['mean'], out['bn']['var'], out['bn']['gain'],
                             out['bn']['bias'], arch.output_bn_eps))
  return jnp.tanh(conv(out['conv'], x)), features


def param_shapes(arch: BigGANArch) -> dict[str, tuple[int, ...]]:
  """Flat '/'-joined parameter names -> shapes, in checkpoint order."""
  shapes = {'shared/embedding': (arch.num_classes, arch.shared_dim)}
  c0 = arch.block_channels[0][0]
  shapes['linear/weight'] = (arch.z_chunk_size, BOTTOM_WIDTH * BOTTOM_WIDTH * c0)
  shapes['linear/bias'] = (BOTTOM_WIDTH * BOTTOM_WIDTH * c0,)

  def bn(prefix, c):
    shapes[f'{prefix}/mean'] = (c,)
    shapes[f'{prefix}/var'] = (c,)
    shapes[f'{prefix}/gain_kernel'] = (arch.cond_dim, c)
    shapes[f'{prefix}/bias_kernel'] = (arch.cond_dim, c)

  def conv_shapes(prefix, k, c_in, c_out, bias=True):
    shapes[f'{prefix}/weight'] = (k, k, c_in, c_out)
    if bias:
      shapes[f'{prefix}/bias'] = (c_out,)

  for i, (c_in, c_out) in enumerate(arch.block_channels):
    bn(f'block{i}/bn1', c_in)
    conv_shapes(f'block{i}/conv1', 3, c_in, c_out)
    bn(f'block{i}/bn2', c_out)
    conv_shapes(f'block{i}/conv2', 3, c_out, c_out)
    conv_shapes(f'block{i}/conv_sc', 1, c_in, c_out)
    if arch.has_attention(i):
      attention_shapes(shapes, f'attention{i}', c_out)
  c = arch.block_channels[-1][1]
  for name in ('mean', 'var', 'gain', 'bias'):
    shapes[f'output/bn/{name}'] = (c,)
  conv_shapes('output/conv', 3, c, 3)
  return shapes


def attention_shapes(shapes: dict, prefix: str, c: int) -> None:
  """Adds the self-attention entries for C channels under `prefix` to `shapes`."""
  shapes[f'{prefix}/theta/weight'] = (1, 1, c, c // 8)
  shapes[f'{prefix}/phi/weight'] = (1, 1, c, c // 8)
  shapes[f'{prefix}/g/weight'] = (1, 1, c, c // 2)
  shapes[f'{prefix}/o/weight'] = (1, 1, c // 2, c)
  shapes[f'{prefix}/gamma'] = ()


def random_params(shapes: dict[str, tuple[int, ...]], key: jax.Array) -> Params:
  """Random weights for tests and smoke runs: every matrix and kernel N(0, 1) divided by
  its largest singular value (what spectral norm would leave), embeddings N(0, 1),
  biases, batch-norm kernels and means zero, variances and output gains one,
  attention gamma 0.5. Returns the nested parameter dict."""
  flat = {}
  for i, (name, shape) in enumerate(shapes.items()):
    leaf = name.rsplit('/', 1)[-1]
    if leaf in ('weight', 'gain_kernel', 'bias_kernel', 'embedding'):
      value = np.asarray(jax.random.normal(jax.random.fold_in(key, i), shape), np.float64)
      if leaf == 'weight' and len(shape) >= 2:
        matrix = value.reshape(-1, shape[-1])
        gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
        value = value / np.sqrt(np.linalg.eigvalsh(gram)[-1])
      elif leaf != 'embedding':
        value = value * 0.1
    elif leaf in ('var', 'vars', 'gain'):
      value = np.ones(shape)
    elif leaf == 'gamma':
      value = np.full(shape, 0.5)
    else:
      value = np.zeros(shape)
    flat[name] = value.astype(np.float32)
  return unflatten(flat)


def init_params(arch: BigGANArch, key: jax.Array) -> Params:
  """Random weights of `arch` (see `random_params`)."""
  return random_params(param_shapes(arch), key)


@functools.lru_cache(maxsize=None)
def jitted(arch: BigGANArch):
  """Compiled (class embedding, synthesis from class vectors) for one architecture."""
  embed_fn = jax.jit(embed_classes)

  @functools.partial(jax.jit, static_argnames=('return_features',))
  def synth_fn(params, z, class_vecs, return_features=True):
    image, features = synthesis(params, arch, z, embed_classes(params, class_vecs))
    return image, (features if return_features else [])

  return embed_fn, synth_fn


class ClassConditionalGenerator(base.Generator):
  """What the BigGAN variants share: params + arch, input checks, class handling, the
  per-class sampling of config.biggan, the class embedding as the conditioning."""

  arch_class: type = None
  # The family's functions: arch -> {name: shape}, (arch, key) -> params, (params,
  # class vectors) -> class embedding.
  param_shapes = None
  init_params = None
  embed_classes = None

  def __init__(self, arch, params: Params, dtype=jnp.float32):
    self.arch = arch
    self.dtype = jnp.dtype(dtype)
    self.params = jax.tree.map(lambda a: jnp.asarray(a, self.dtype), params)

  @classmethod
  def from_checkpoint(cls, arch_json, arrays, source, dtype):
    arch = checkpoint.build_arch(cls.arch_class, arch_json, source)
    checkpoint.check_names_and_shapes(arrays, cls.param_shapes(arch), source)
    return cls(arch, unflatten(arrays), dtype=dtype)

  @classmethod
  def random(cls, arch_kwargs, seed, dtype):
    """Random weights (`random_params`) from jax.random.key(seed)."""
    arch = base.build_random_arch(cls.arch_class, arch_kwargs)
    return cls(arch, cls.init_params(arch, jax.random.key(seed)), dtype=dtype)

  @property
  def resolution(self) -> int:
    return self.arch.resolution

  @property
  def num_classes(self) -> int:
    return self.arch.num_classes

  @property
  def latent_size(self) -> int:
    return self.dim_z

  @property
  def cond_dim(self) -> int:
    return self.embedding_dim

  @property
  def feature_specs(self) -> tuple[base.FeatureSpec, ...]:
    return tuple(base.FeatureSpec(name, r, r, c) for name, r, c in zip(
        self.arch.feature_names, self.arch.feature_resolutions, self.arch.feature_channels))

  def sampling(self, config) -> base.ClassSampling:
    return base.ClassSampling.from_config(config, self.dim_z, self.num_classes)

  def apply(self, variables, inputs, sampling):
    """inputs 'z' [B, dim_z], 'class_id' [B] -> (image, every block's output (and the
    attention's), the class embedding [B, embedding_dim])."""
    del sampling
    params = variables['params']
    vectors = jax.nn.one_hot(inputs['class_id'], self.num_classes, dtype=self.dtype)
    embedding = self.embed_classes(params, vectors)
    image, features = self._synthesis(params, inputs['z'].astype(self.dtype), embedding)
    return image, features, embedding

  @abc.abstractmethod
  def _synthesis(self, params, z, embedding):
    """The family's synthesis from z and the class embedding (eval mode)."""

  @property
  def feature_channels(self) -> list[int]:
    return self.arch.feature_channels

  @property
  def feature_resolutions(self) -> list[int]:
    return self.arch.feature_resolutions

  def _inputs(self, z, y) -> tuple[jax.Array, jax.Array]:
    z = jnp.asarray(z, self.dtype)
    if z.ndim != 2 or z.shape[1] != self.dim_z:
      raise ValueError(f'z must be [B, {self.dim_z}], got {tuple(z.shape)}')
    vectors = class_vectors(y, self.num_classes, batch=z.shape[0])
    return z, jnp.asarray(vectors, self.dtype)


class BigGANGenerator(ClassConditionalGenerator):
  """A BigGAN (BigGAN-PyTorch layout): params (pytree) + architecture; methods are jitted.

    g = dgan_jax.generators.load(path)
    image, feature_maps = g.synthesize(z, y)   # z [B, dim_z]; y ids [B] or [B, num_classes]
  """

  family = 'biggan'
  arch_class = BigGANArch
  param_shapes = staticmethod(param_shapes)
  init_params = staticmethod(init_params)
  embed_classes = staticmethod(embed_classes)

  def __init__(self, arch: BigGANArch, params: Params, dtype=jnp.float32):
    super().__init__(arch, params, dtype)
    self._embed, self._synthesize = jitted(arch)

  def _synthesis(self, params, z, embedding):
    return synthesis(params, self.arch, z, embedding)

  @property
  def dim_z(self) -> int:
    return self.arch.dim_z

  @property
  def embedding_dim(self) -> int:
    return self.arch.shared_dim

  def class_embedding(self, y) -> jax.Array:
    """y: ids [B] or class vectors [B, num_classes] -> shared embedding [B, shared_dim]
    (the class input of every conditional batch norm; float32)."""
    vectors = jnp.asarray(class_vectors(y, self.num_classes), self.dtype)
    return self._embed(self.params, vectors).astype(jnp.float32)

  def synthesize(self, z, y, return_features: bool = True):
    """z [B, dim_z], y ids [B] or class vectors [B, num_classes] -> (image [B, H, W, 3]
    float32 in [-1, 1]; feature_maps: list of [B, r, r, C] in the compute dtype, every
    block's output in order with the attention output after its block)."""
    z, vectors = self._inputs(z, y)
    image, features = self._synthesize(self.params, z, vectors, return_features)
    return image.astype(jnp.float32), features

  def __call__(self, z, y):
    return self.synthesize(z, y)


Generator = BigGANGenerator
