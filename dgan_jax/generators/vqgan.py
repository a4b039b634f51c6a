"""VQGAN (taming-transformers) as a labelled-data generator: the autoencoder (Encoder,
VectorQuantizer codebook, Decoder) and the class-conditional transformer prior
(`Net2NetTransformer` with minGPT, `cin_transformer`; dgan_jax/generators/mingpt.py).

Parameters are a pytree named like the cin_transformer's state dict:
`first_stage_model/encoder/down/0/block/1/norm1/weight` for
`first_stage_model.encoder.down.0.block.1.norm1.weight`, `transformer/blocks/0/...`; the
autoencoder's own functions (encode, quantize, decode) take the `first_stage_model`
subtree, whose names are a VQModel's (`encoder/...`, `quantize/embedding/weight`).

Layout: images and maps NHWC; conv kernels HWIO (taming's are OIHW), the codebook
`quantize/embedding/weight` [n_embed, embed_dim] as stored.

The decoder returns its feature maps for the labeler: per resolution level, from the
lowest to the highest, the output of the level's res blocks and attention before its
upsample (`up{i}`: the last, at full resolution, is the map before `norm_out`).
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dgan_jax.errors import InputError
from dgan_jax.generators import base
from dgan_jax.generators import checkpoint
from dgan_jax.generators import mingpt

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class VQGANArch:
  """taming's `ddconfig` (Encoder/Decoder kwargs) and codebook size; for a generator, the
  transformer's config (n_layer > 0) and the classes of its `Labelator` conditioning.
  Defaults: the ImageNet cin_transformer (2021-04-03T19-39-50)."""
  resolution: int = 256
  ch: int = 128
  ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  attn_resolutions: tuple[int, ...] = (16,)
  in_channels: int = 3
  out_ch: int = 3
  z_channels: int = 256
  n_embed: int = 16384
  embed_dim: int = 256
  vocab_size: int = 16384
  block_size: int = 256
  n_layer: int = 48        # 0: an autoencoder alone (encodes and decodes, cannot sample)
  n_head: int = 24
  n_embd: int = 1536
  num_classes: int = 1000

  def __post_init__(self):
    for name in ('ch_mult', 'attn_resolutions'):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    if self.resolution % 2 ** (self.num_levels - 1):
      raise ValueError(f'resolution {self.resolution} does not halve {self.num_levels - 1} '
                       'times')
    if any(self.ch * m % 32 for m in self.ch_mult):
      raise ValueError(f'channels ch * ch_mult must be multiples of 32 (GroupNorm), got '
                       f'ch={self.ch}, ch_mult={self.ch_mult}')
    if self.n_layer:
      if self.vocab_size != self.n_embed or self.num_classes > self.vocab_size:
        raise ValueError(f'the transformer draws codebook indices: vocab_size '
                         f'{self.vocab_size} must equal n_embed {self.n_embed} and hold '
                         f'the {self.num_classes} class tokens')
      if self.block_size < self.code_resolution ** 2:
        raise ValueError(f'block_size {self.block_size} cannot hold the class token and '
                         f'the first {self.code_resolution ** 2 - 1} codes')
      if self.n_embd % self.n_head:
        raise ValueError(f'n_embd {self.n_embd} is not a multiple of n_head {self.n_head}')

  @property
  def gpt(self) -> mingpt.GPTArch:
    return mingpt.GPTArch(self.vocab_size, self.block_size, self.n_layer, self.n_head,
                          self.n_embd)

  @property
  def num_levels(self) -> int:
    return len(self.ch_mult)

  @property
  def code_resolution(self) -> int:
    return self.resolution // 2 ** (self.num_levels - 1)

  def level_resolution(self, level: int) -> int:
    return self.resolution // 2 ** level

  @property
  def feature_maps(self) -> list[tuple[str, int, int]]:
    """The decoder's maps in output order: (name, resolution, channels)."""
    return [(f'up{level}', self.level_resolution(level), self.ch * self.ch_mult[level])
            for level in reversed(range(self.num_levels))]


def _conv_shapes(name, k, c_in, c_out):
  return {f'{name}/weight': (k, k, c_in, c_out), f'{name}/bias': (c_out,)}


def _norm_shapes(name, c):
  return {f'{name}/weight': (c,), f'{name}/bias': (c,)}


def _resnet_shapes(name, c_in, c_out):
  shapes = {**_norm_shapes(f'{name}/norm1', c_in), **_conv_shapes(f'{name}/conv1', 3, c_in, c_out),
            **_norm_shapes(f'{name}/norm2', c_out),
            **_conv_shapes(f'{name}/conv2', 3, c_out, c_out)}
  if c_in != c_out:
    shapes.update(_conv_shapes(f'{name}/nin_shortcut', 1, c_in, c_out))
  return shapes


def _attn_shapes(name, c):
  shapes = _norm_shapes(f'{name}/norm', c)
  for part in ('q', 'k', 'v', 'proj_out'):
    shapes.update(_conv_shapes(f'{name}/{part}', 1, c, c))
  return shapes


def _middle_shapes(name, c):
  return {**_resnet_shapes(f'{name}/mid/block_1', c, c), **_attn_shapes(f'{name}/mid/attn_1', c),
          **_resnet_shapes(f'{name}/mid/block_2', c, c)}


def param_shapes(arch: VQGANArch) -> dict[str, tuple[int, ...]]:
  """Flat name -> shape, taming's state-dict names with '/' (VQModel without `loss.*`)."""
  ch, mult = arch.ch, arch.ch_mult
  shapes = _conv_shapes('encoder/conv_in', 3, arch.in_channels, ch)
  c_in = ch
  for level in range(arch.num_levels):
    c_out = ch * mult[level]
    for block in range(arch.num_res_blocks):
      shapes.update(_resnet_shapes(f'encoder/down/{level}/block/{block}', c_in, c_out))
      c_in = c_out
      if arch.level_resolution(level) in arch.attn_resolutions:
        shapes.update(_attn_shapes(f'encoder/down/{level}/attn/{block}', c_in))
    if level != arch.num_levels - 1:
      shapes.update(_conv_shapes(f'encoder/down/{level}/downsample/conv', 3, c_in, c_in))
  shapes.update(_middle_shapes('encoder', c_in))
  shapes.update(_norm_shapes('encoder/norm_out', c_in))
  shapes.update(_conv_shapes('encoder/conv_out', 3, c_in, arch.z_channels))
  shapes.update(_conv_shapes('quant_conv', 1, arch.z_channels, arch.embed_dim))
  shapes['quantize/embedding/weight'] = (arch.n_embed, arch.embed_dim)
  shapes.update(_conv_shapes('post_quant_conv', 1, arch.embed_dim, arch.z_channels))

  c_in = ch * mult[-1]
  shapes.update(_conv_shapes('decoder/conv_in', 3, arch.z_channels, c_in))
  shapes.update(_middle_shapes('decoder', c_in))
  for level in reversed(range(arch.num_levels)):
    c_out = ch * mult[level]
    for block in range(arch.num_res_blocks + 1):
      shapes.update(_resnet_shapes(f'decoder/up/{level}/block/{block}', c_in, c_out))
      c_in = c_out
      if arch.level_resolution(level) in arch.attn_resolutions:
        shapes.update(_attn_shapes(f'decoder/up/{level}/attn/{block}', c_in))
    if level != 0:
      shapes.update(_conv_shapes(f'decoder/up/{level}/upsample/conv', 3, c_in, c_in))
  shapes.update(_norm_shapes('decoder/norm_out', c_in))
  shapes.update(_conv_shapes('decoder/conv_out', 3, c_in, arch.out_ch))
  return shapes


# ----------------------------------------------------------------------------------------
# Layers (x: [B, H, W, C]).

def _group_norm(p, x, groups: int = 32, eps: float = 1e-6):
  b, h, w, c = x.shape
  g = x.reshape(b, h, w, groups, c // groups).astype(jnp.float32)
  mean = jnp.mean(g, axis=(1, 2, 4), keepdims=True)
  var = jnp.mean(jnp.square(g - mean), axis=(1, 2, 4), keepdims=True)
  g = (g - mean) * jax.lax.rsqrt(var + eps)
  return (g.reshape(b, h, w, c) * p['weight'] + p['bias']).astype(x.dtype)


def _conv(p, x, stride: int = 1, padding='SAME'):
  y = jax.lax.conv_general_dilated(x, p['weight'].astype(x.dtype), (stride, stride), padding,
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return y + p['bias'].astype(x.dtype)


def _resnet_block(p, x):
  h = _conv(p['conv1'], jax.nn.silu(_group_norm(p['norm1'], x)))
  h = _conv(p['conv2'], jax.nn.silu(_group_norm(p['norm2'], h)))
  if 'nin_shortcut' in p:
    x = _conv(p['nin_shortcut'], x)
  return x + h


def _attn_block(p, x):
  b, h, w, c = x.shape
  n = _group_norm(p['norm'], x)
  q, k, v = (_conv(p[name], n).reshape(b, h * w, c) for name in ('q', 'k', 'v'))
  weights = jax.nn.softmax(jnp.einsum('bic,bjc->bij', q, k) * (c ** -0.5), axis=-1)
  out = jnp.einsum('bij,bjc->bic', weights, v).reshape(b, h, w, c)
  return x + _conv(p['proj_out'], out)


def _middle(p, x):
  return _resnet_block(p['block_2'], _attn_block(p['attn_1'], _resnet_block(p['block_1'], x)))


def _level(p, x, num_blocks: int):
  for block in range(num_blocks):
    x = _resnet_block(p['block'][str(block)], x)
    if 'attn' in p:
      x = _attn_block(p['attn'][str(block)], x)
  return x


# ----------------------------------------------------------------------------------------
# The autoencoder.

def encode(params: Params, arch: VQGANArch, images: jax.Array) -> jax.Array:
  """images [B, R, R, in_channels] in [-1, 1] -> pre-quantization latents
  [B, r, r, embed_dim] (after quant_conv), r = arch.code_resolution."""
  p = params['encoder']
  x = _conv(p['conv_in'], images)
  for level in range(arch.num_levels):
    x = _level(p['down'][str(level)], x, arch.num_res_blocks)
    if level != arch.num_levels - 1:
      # taming pads right and bottom by one, then a stride-2 3x3 conv without padding
      x = _conv(p['down'][str(level)]['downsample']['conv'], x, 2, ((0, 1), (0, 1)))
  x = _middle(p['mid'], x)
  x = _conv(p['conv_out'], jax.nn.silu(_group_norm(p['norm_out'], x)))
  return _conv(params['quant_conv'], x)


def quantize(params: Params, latents: jax.Array) -> tuple[jax.Array, jax.Array]:
  """latents [..., embed_dim] -> (code indices [...] int32, the nearest codes [..., embed_dim]).
  Distances as taming computes them, |z|^2 + |e|^2 - 2 z.e; ties go to the smaller index."""
  codebook = params['quantize']['embedding']['weight']
  flat = latents.reshape(-1, latents.shape[-1]).astype(jnp.float32)
  distances = (jnp.sum(flat ** 2, axis=1, keepdims=True) + jnp.sum(codebook ** 2, axis=1)
               - 2 * flat @ codebook.T)
  indices = jnp.argmin(distances, axis=1).astype(jnp.int32).reshape(latents.shape[:-1])
  return indices, codebook_entries(params, indices)


def codebook_entries(params: Params, indices: jax.Array) -> jax.Array:
  """indices [...] -> codes [..., embed_dim] (taming's get_codebook_entry, channels last)."""
  return jnp.take(params['quantize']['embedding']['weight'], indices, axis=0)


def decode(params: Params, arch: VQGANArch, codes: jax.Array
           ) -> tuple[jax.Array, list[jax.Array]]:
  """codes [B, r, r, embed_dim] -> (image [B, R, R, out_ch], feature maps in
  `arch.feature_maps` order, each [B, res, res, channels])."""
  p = params['decoder']
  x = _conv(p['conv_in'], _conv(params['post_quant_conv'], codes))
  x = _middle(p['mid'], x)
  maps = []
  for level in reversed(range(arch.num_levels)):
    up = p['up'][str(level)]
    x = _level(up, x, arch.num_res_blocks + 1)
    maps.append(x)
    if level != 0:
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)   # nearest, scale 2
      x = _conv(up['upsample']['conv'], x)
  image = _conv(p['conv_out'], jax.nn.silu(_group_norm(p['norm_out'], x)))
  return image, maps


# ----------------------------------------------------------------------------------------
# The generator: class -> tokens (transformer) -> codes -> decoder -> image and maps.

def generator_param_shapes(arch: VQGANArch) -> dict[str, tuple[int, ...]]:
  """Flat name -> shape of a converted generator: the cin_transformer's state-dict names
  (`first_stage_model/...`, and `transformer/...` when arch.n_layer > 0)."""
  shapes = {f'first_stage_model/{k}': v for k, v in param_shapes(arch).items()}
  if arch.n_layer:
    shapes.update({f'transformer/{k}': v for k, v in mingpt.param_shapes(arch.gpt).items()})
  return shapes


def random_params(arch: VQGANArch, key: jax.Array) -> Params:
  """Random weights for tests and smoke runs: conv and linear weights N(0, 1/fan_in),
  biases N(0, 0.01), norm scales 1 + N(0, 0.01), the codebook N(0, 1), token and
  position embeddings N(0, 0.02^2) (minGPT's initialisation scale)."""
  flat = {}
  for i, (name, shape) in enumerate(generator_param_shapes(arch).items()):
    normal = np.asarray(jax.random.normal(jax.random.fold_in(key, i), shape), np.float64)
    if name.endswith('embedding/weight'):
      value = normal
    elif name.endswith(('tok_emb/weight', 'pos_emb')):
      value = 0.02 * normal
    elif len(shape) >= 2:
      value = normal / np.sqrt(np.prod(shape[:-1]))
    elif name.endswith('bias'):
      value = 0.1 * normal
    else:
      value = 1 + 0.1 * normal
    flat[name] = value.astype(np.float32)
  return checkpoint.unflatten(flat)


def uniforms_of(z: jax.Array) -> jax.Array:
  """z [...] ~ N(0, 1) -> U[0, 1) numbers Phi(z) (the normal's distribution function),
  one per drawn token, so that a stored z regenerates its sample's tokens."""
  u = 0.5 * jax.scipy.special.erfc(-z.astype(jnp.float32) / np.sqrt(2.0))
  return jnp.clip(u, 0.0, np.nextafter(np.float32(1), np.float32(0)))


@dataclasses.dataclass(frozen=True)
class VQGANSampling(base.ClassSampling):
  """Per-class samples as BigGAN's (config.biggan: class_idx, annotate_per_class,
  samples_per_class), with z [codes] ~ N(0, I) from (seed, purpose, class, number): the
  transformer draws token t by inverting its softmax at Phi(z[t]). config.vqgan: the
  softmax temperature, top_k (0: all tokens) and greedy (the most likely token)."""
  temperature: float = 1.0
  top_k: int = 0
  greedy: bool = False

  @classmethod
  def from_config(cls, config, dim_z: int, num_classes: int,
                  vocab_size: int) -> 'VQGANSampling':
    classes = base.ClassSampling.from_config(config, dim_z, num_classes)
    v = config.vqgan   # temperature > 0 and top_k >= 0: config.validate
    if v.top_k > vocab_size:
      raise InputError(f'config.vqgan.top_k must be in [0, {vocab_size}] (0: every token), '
                       f'got {v.top_k}')
    fields = {**dataclasses.asdict(classes), 'z_std': 1.0}
    return cls(**fields, temperature=float(v.temperature), top_k=int(v.top_k),
               greedy=bool(v.greedy))

  def from_images(self, images: np.ndarray, class_ids: np.ndarray | None) -> base.Inputs:
    """Annotated images uint8 [N, R, R, 3] -> inputs that encode them ('image' in
    [-1, 1]; 'z' zeros, unused; 'class_id' as given, or 0 where unknown)."""
    count = len(images)
    return {'image': np.asarray(images, np.float32) / 127.5 - 1.0,
            'z': np.zeros((count, self.dim_z), np.float32),
            'class_id': (np.zeros(count, np.int32) if class_ids is None
                         else np.asarray(class_ids, np.int32))}

  def record(self) -> dict:
    record = super().record()
    del record['z_std']
    return {**record, 'temperature': self.temperature, 'top_k': self.top_k,
            'greedy': self.greedy}


class VQGANGenerator(base.Generator):
  """A VQGAN with its class-conditional transformer (taming's cin_transformer).

    g = dgan_jax.generators.load(path)
    tokens = g.sample_tokens(class_ids, z)          # [B, codes] codebook indices
    image, feature_maps = g.decode_tokens(tokens)   # [B, R, R, 3] in [-1, 1]; per level
    image, feature_maps = g.reconstruct(images)     # encode, quantize, decode

  Annotated images train the labeler through the encoder (`encodes_images`): no latents
  are needed, so masks drawn on any image (a BigGAN's samples, photographs) serve.
  """

  family = 'vqgan'

  def __init__(self, arch: VQGANArch, params: Params, dtype=jnp.float32):
    self.arch = arch
    self.dtype = jnp.dtype(dtype)
    self.params = jax.tree.map(lambda a: jnp.asarray(a, self.dtype), params)
    self._compiled = {}

  @classmethod
  def from_checkpoint(cls, arch_json, arrays, source, dtype):
    arch = checkpoint.build_arch(VQGANArch, arch_json, source)
    checkpoint.check_names_and_shapes(arrays, generator_param_shapes(arch), source)
    return cls(arch, checkpoint.unflatten(arrays), dtype=dtype)

  @classmethod
  def random(cls, arch_kwargs, seed, dtype):
    arch = base.build_random_arch(VQGANArch, arch_kwargs)
    return cls(arch, random_params(arch, jax.random.key(seed)), dtype=dtype)

  @property
  def resolution(self) -> int:
    return self.arch.resolution

  @property
  def latent_size(self) -> int:
    return self.arch.code_resolution ** 2

  @property
  def num_classes(self) -> int:
    return self.arch.num_classes

  @property
  def encodes_images(self) -> bool:
    return True

  @property
  def feature_specs(self) -> tuple[base.FeatureSpec, ...]:
    return tuple(base.FeatureSpec(name, r, r, c) for name, r, c in self.arch.feature_maps)

  def sampling(self, config) -> VQGANSampling:
    if not self.arch.n_layer:
      raise InputError('this VQGAN has no transformer, so it cannot draw samples: convert '
                       "a cin_transformer (`python -m convert_weights vqgan`), not its "
                       'first stage alone')
    return VQGANSampling.from_config(config, self.latent_size, self.num_classes,
                                     self.arch.vocab_size)

  def apply(self, variables, inputs, sampling):
    """inputs 'image' [B, R, R, 3] (annotated images: encoded, quantized) or 'z' [B, codes]
    and 'class_id' [B] (tokens drawn by the transformer) -> (image, the decoder's maps
    (`feature_specs`), None: the decoder is unconditional)."""
    params = variables['params']
    if 'image' in inputs:
      codes = self._encoded(params, inputs['image'])
    else:
      codes = self._codes(params, self._sample(params, inputs['class_id'], inputs['z'],
                                               sampling.temperature, sampling.top_k,
                                               sampling.greedy))
    image, maps = self._decoded(params, codes)
    return image, maps, None

  def _sample(self, params, class_ids, z, temperature, top_k, greedy):
    prefix = jnp.asarray(class_ids, jnp.int32)[:, None]
    uniforms = None if greedy else uniforms_of(z)
    tokens = mingpt.sample(params['transformer'], self.arch.gpt, prefix, self.latent_size,
                           uniforms, temperature, top_k or None)
    return tokens[:, 1:]

  def _codes(self, params, tokens):
    r = self.arch.code_resolution
    entries = codebook_entries(params['first_stage_model'], tokens)
    return entries.reshape(tokens.shape[0], r, r, self.arch.embed_dim)

  # The library API (compiled; float32 images in [-1, 1]).

  def sample_tokens(self, class_ids, z, temperature: float = 1.0, top_k: int = 0,
                    greedy: bool = False) -> jax.Array:
    """class ids [B], z [B, codes] (N(0, 1); unused when greedy) -> tokens [B, codes]
    int32, row-major over the code grid (taming's identity permuter)."""
    if not self.arch.n_layer:
      raise ValueError('this VQGAN has no transformer')
    return self._jitted('_sample', 3, 4, 5)(self.params, jnp.asarray(class_ids),
                                          jnp.asarray(z, jnp.float32), temperature, top_k,
                                          greedy)

  def decode_tokens(self, tokens) -> tuple[jax.Array, list[jax.Array]]:
    """tokens [B, codes] -> (image [B, R, R, 3] float32, the decoder's maps)."""
    return self._jitted('_decode_tokens')(self.params, jnp.asarray(tokens, jnp.int32))

  def reconstruct(self, images) -> tuple[jax.Array, list[jax.Array]]:
    """images [B, R, R, 3] in [-1, 1] -> (the reconstruction [B, R, R, 3] float32, the
    decoder's maps): encode, quantize, decode."""
    return self._jitted('_reconstruct')(self.params, jnp.asarray(images))

  def _jitted(self, method: str, *static_argnums):
    if (method, static_argnums) not in self._compiled:
      self._compiled[method, static_argnums] = jax.jit(getattr(self, method),
                                                       static_argnums=static_argnums)
    return self._compiled[method, static_argnums]

  def _encoded(self, params, images):
    p = params['first_stage_model']
    return quantize(p, encode(p, self.arch, images.astype(self.dtype)))[1]

  def _decoded(self, params, codes):
    return decode(params['first_stage_model'], self.arch, codes.astype(self.dtype))

  def _decode_tokens(self, params, tokens):
    image, maps = self._decoded(params, self._codes(params, tokens))
    return image.astype(jnp.float32), maps

  def _reconstruct(self, params, images):
    image, maps = self._decoded(params, self._encoded(params, images))
    return image.astype(jnp.float32), maps


Generator = VQGANGenerator
