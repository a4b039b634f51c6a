"""VQGAN's autoencoder (taming-transformers): Encoder, VectorQuantizer codebook, Decoder,
as pure functions over a parameter pytree named like taming's state dict
(`encoder/down/0/block/1/norm1/weight` for `encoder.down.0.block.1.norm1.weight`).

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

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class VQGANArch:
  """taming's `ddconfig` (Encoder/Decoder kwargs) plus the codebook size."""
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
