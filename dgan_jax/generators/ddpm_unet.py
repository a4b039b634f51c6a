"""openai guided-diffusion's `UNetModel` as pure functions over a parameter pytree.

Parameter names are guided-diffusion's state-dict keys with '/' for '.':
`input_blocks/1/0/in_layers/0/weight` (a ResBlock's first GroupNorm),
`input_blocks/2/1/qkv/weight` (an AttentionBlock), `middle_block/{0,1,2}/...`,
`output_blocks/{i}/{j}/...`, `time_embed/{0,2}/...`, `label_emb/weight`, `out/{0,2}/...`.

Layout: activations NHWC; 3x3 and 1x1 convolutions HWIO (PyTorch's are OIHW); the
attention's 1-d convolutions (`qkv`, `proj_out`) and Linear layers as [in, out] matrices;
`label_emb/weight` [num_classes, 4 * model_channels] as stored.

Numerics follow guided-diffusion: GroupNorm32 (32 groups, eps 1e-5) computed in float32
and cast back; the attention softmax in float32; the timestep embedding, `time_embed`,
`label_emb`, the ResBlocks' embedding projections and the `out` head in float32. With a
bfloat16 `dtype` the input, middle and output blocks' convolutions and attention run in
bfloat16 (guided-diffusion's `use_fp16` converts those blocks' convolutions to float16).

`apply` returns the model output and every input block's (`in{i}`) and output block's
(`out{i}`) output, as ddpm-segmentation hooks `model.output_blocks[i]`; under jit, what no
one reads is never computed.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, Any]

GROUP_NORM_GROUPS = 32
GROUP_NORM_EPS = 1e-5   # torch.nn.GroupNorm's default, which GroupNorm32 keeps
MAX_PERIOD = 10000


@dataclasses.dataclass(frozen=True)
class UNetArch:
  """`UNetModel`'s constructor arguments as guided-diffusion's `create_model` sets them
  from MODEL_FLAGS. attention_resolutions are pixel sizes (the flags' '32,16,8'), not
  downsampling rates; num_classes 0 is unconditional (`class_cond` gives 1000).
  Defaults: ddpm-segmentation's 256 px LSUN / FFHQ models."""
  image_size: int = 256
  model_channels: int = 256
  num_res_blocks: int = 2
  channel_mult: tuple[float, ...] = (1, 1, 2, 2, 4, 4)
  attention_resolutions: tuple[int, ...] = (32, 16, 8)
  num_heads: int = 4
  num_head_channels: int = 64        # -1: num_heads heads of any width
  num_heads_upsample: int = -1       # -1: num_heads
  use_scale_shift_norm: bool = True
  resblock_updown: bool = True
  use_new_attention_order: bool = False
  learn_sigma: bool = True           # 6 output channels: eps and the variance fraction
  num_classes: int = 0
  in_channels: int = 3
  conv_resample: bool = True

  def __post_init__(self):
    for name in ('channel_mult', 'attention_resolutions'):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    if self.image_size % 2 ** (len(self.channel_mult) - 1):
      raise ValueError(f'image_size {self.image_size} does not halve '
                       f'{len(self.channel_mult) - 1} times (channel_mult {self.channel_mult})')
    widths = [self.model_channels] + [self.width(level) for level in range(self.num_levels)]
    if any(w % GROUP_NORM_GROUPS for w in widths):
      raise ValueError(f'channel widths {sorted(set(widths))} must be multiples of '
                       f'{GROUP_NORM_GROUPS} (GroupNorm32)')
    for level in range(self.num_levels):
      if self.downsample_rate(level) in self.attention_rates:
        self.heads(self.width(level), self.num_heads)
        self.heads(self.width(level), self.heads_upsample)

  @property
  def num_levels(self) -> int:
    return len(self.channel_mult)

  @property
  def out_channels(self) -> int:
    return 6 if self.learn_sigma else 3

  @property
  def time_embed_dim(self) -> int:
    return 4 * self.model_channels

  @property
  def attention_rates(self) -> tuple[int, ...]:
    """The downsampling rates with attention (`UNetModel`'s attention_resolutions)."""
    return tuple(self.image_size // r for r in self.attention_resolutions)

  @property
  def heads_upsample(self) -> int:
    return self.num_heads if self.num_heads_upsample == -1 else self.num_heads_upsample

  def width(self, level: int) -> int:
    return int(self.channel_mult[level] * self.model_channels)

  def downsample_rate(self, level: int) -> int:
    return 2 ** level

  def heads(self, channels: int, num_heads: int) -> int:
    if self.num_head_channels == -1:
      if channels % num_heads:
        raise ValueError(f'{channels} attention channels do not split into {num_heads} heads')
      return num_heads
    if channels % self.num_head_channels:
      raise ValueError(f'{channels} attention channels are not a multiple of '
                       f'num_head_channels {self.num_head_channels}')
    return channels // self.num_head_channels

  def blocks(self) -> dict[str, list[dict]]:
    """The input, middle and output blocks as `UNetModel.__init__` builds them: per block
    a list of layers {'kind': 'conv' | 'res' | 'attn' | 'down' | 'up', ...}, and per
    block its output's (resolution, channels) under 'shape'."""
    ch = self.width(0)
    inputs = [{'layers': [{'kind': 'conv', 'c_in': self.in_channels, 'c_out': ch}],
               'shape': (self.image_size, ch)}]
    skip_channels = [ch]
    rate = 1
    for level in range(self.num_levels):
      for _ in range(self.num_res_blocks):
        layers = [{'kind': 'res', 'c_in': ch, 'c_out': self.width(level)}]
        ch = self.width(level)
        if rate in self.attention_rates:
          layers.append({'kind': 'attn', 'c': ch, 'heads': self.heads(ch, self.num_heads)})
        inputs.append({'layers': layers, 'shape': (self.image_size // rate, ch)})
        skip_channels.append(ch)
      if level != self.num_levels - 1:
        layer = ({'kind': 'res', 'c_in': ch, 'c_out': ch, 'down': True} if self.resblock_updown
                 else {'kind': 'down', 'c': ch})
        rate *= 2
        inputs.append({'layers': [layer], 'shape': (self.image_size // rate, ch)})
        skip_channels.append(ch)
    middle = {'layers': [{'kind': 'res', 'c_in': ch, 'c_out': ch},
                         {'kind': 'attn', 'c': ch, 'heads': self.heads(ch, self.num_heads)},
                         {'kind': 'res', 'c_in': ch, 'c_out': ch}],
              'shape': (self.image_size // rate, ch)}
    outputs = []
    for level in reversed(range(self.num_levels)):
      for i in range(self.num_res_blocks + 1):
        layers = [{'kind': 'res', 'c_in': ch + skip_channels.pop(), 'c_out': self.width(level)}]
        ch = self.width(level)
        if rate in self.attention_rates:
          layers.append({'kind': 'attn', 'c': ch, 'heads': self.heads(ch, self.heads_upsample)})
        if level and i == self.num_res_blocks:
          layers.append({'kind': 'res', 'c_in': ch, 'c_out': ch, 'up': True}
                        if self.resblock_updown else {'kind': 'up', 'c': ch})
          rate //= 2
        outputs.append({'layers': layers, 'shape': (self.image_size // rate, ch)})
    return {'input_blocks': inputs, 'middle_block': middle, 'output_blocks': outputs}

  def block_shapes(self, prefix: str = 'output_blocks') -> list[tuple[int, int]]:
    """(resolution, channels) of each input or output block's output."""
    return [b['shape'] for b in self.blocks()[prefix]]


# ----------------------------------------------------------------------------------------
# Parameter shapes (the state dict's names, our layouts).

def _conv(name, k, c_in, c_out):
  return {f'{name}/weight': (k, k, c_in, c_out), f'{name}/bias': (c_out,)}


def _dense(name, c_in, c_out):
  return {f'{name}/weight': (c_in, c_out), f'{name}/bias': (c_out,)}


def _norm(name, c):
  return {f'{name}/weight': (c,), f'{name}/bias': (c,)}


def _layer_shapes(arch: UNetArch, name: str, layer: dict) -> dict[str, tuple]:
  kind = layer['kind']
  if kind == 'conv':
    return _conv(name, 3, layer['c_in'], layer['c_out'])
  if kind == 'res':
    c_in, c_out = layer['c_in'], layer['c_out']
    shapes = {**_norm(f'{name}/in_layers/0', c_in), **_conv(f'{name}/in_layers/2', 3, c_in, c_out),
              **_dense(f'{name}/emb_layers/1', arch.time_embed_dim,
                       2 * c_out if arch.use_scale_shift_norm else c_out),
              **_norm(f'{name}/out_layers/0', c_out),
              **_conv(f'{name}/out_layers/3', 3, c_out, c_out)}
    if c_in != c_out:
      shapes.update(_conv(f'{name}/skip_connection', 1, c_in, c_out))
    return shapes
  if kind == 'attn':
    c = layer['c']
    return {**_norm(f'{name}/norm', c), **_dense(f'{name}/qkv', c, 3 * c),
            **_dense(f'{name}/proj_out', c, c)}
  if kind == 'down':
    return _conv(f'{name}/op', 3, layer['c'], layer['c']) if arch.conv_resample else {}
  if kind == 'up':
    return _conv(f'{name}/conv', 3, layer['c'], layer['c']) if arch.conv_resample else {}
  raise ValueError(kind)


def param_shapes(arch: UNetArch) -> dict[str, tuple[int, ...]]:
  """Flat name ('/'-joined state-dict key) -> shape, in our layouts."""
  d = arch.time_embed_dim
  shapes = {**_dense('time_embed/0', arch.model_channels, d), **_dense('time_embed/2', d, d)}
  if arch.num_classes:
    shapes['label_emb/weight'] = (arch.num_classes, d)
  blocks = arch.blocks()
  for prefix in ('input_blocks', 'output_blocks'):
    for i, block in enumerate(blocks[prefix]):
      for j, layer in enumerate(block['layers']):
        shapes.update(_layer_shapes(arch, f'{prefix}/{i}/{j}', layer))
  for j, layer in enumerate(blocks['middle_block']['layers']):
    shapes.update(_layer_shapes(arch, f'middle_block/{j}', layer))
  shapes.update(_norm('out/0', arch.width(0)))
  shapes.update(_conv('out/2', 3, arch.width(0), arch.out_channels))
  return shapes


def random_params(arch: UNetArch, key: jax.Array) -> dict[str, np.ndarray]:
  """Flat random weights for tests and smoke runs, none zero (guided-diffusion zeroes
  each ResBlock's last conv, `proj_out` and `out/2` at initialisation): weights
  N(0, 1/fan_in), biases N(0, 0.1^2), norm scales 1 + N(0, 0.1^2), label embeddings
  N(0, 1). One draw of every parameter's numbers (one compiled program, not one per
  shape), cut in param_shapes' order."""
  shapes = param_shapes(arch)
  sizes = [int(np.prod(shape)) for shape in shapes.values()]
  numbers = np.asarray(jax.random.normal(key, (sum(sizes),)), np.float64)
  starts = np.cumsum([0] + sizes)
  flat = {}
  for i, (name, shape) in enumerate(shapes.items()):
    normal = numbers[starts[i]:starts[i + 1]].reshape(shape)
    if name == 'label_emb/weight':
      value = normal
    elif len(shape) >= 2:
      value = normal / np.sqrt(np.prod(shape[:-1]))
    elif name.endswith('bias'):
      value = 0.1 * normal
    else:
      value = 1 + 0.1 * normal
    flat[name] = value.astype(np.float32)
  return flat


# ----------------------------------------------------------------------------------------
# Layers (x: [B, H, W, C]).

def timestep_embedding(timesteps: jax.Array, dim: int) -> jax.Array:
  """timesteps [B] (may be fractional) -> [B, dim] float32: cos then sin of t * f_k,
  f_k = exp(-ln(MAX_PERIOD) * k / (dim // 2)), a zero column when dim is odd."""
  half = dim // 2
  freqs = jnp.exp(-math.log(MAX_PERIOD) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(timesteps, jnp.float32)[:, None] * freqs[None]
  embedding = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    embedding = jnp.concatenate([embedding, jnp.zeros_like(embedding[:, :1])], axis=-1)
  return embedding


def group_norm(p, x: jax.Array) -> jax.Array:
  """GroupNorm32: 32 groups, statistics and affine in float32, cast back to x's dtype."""
  b, h, w, c = x.shape
  g = x.astype(jnp.float32).reshape(b, h, w, GROUP_NORM_GROUPS, c // GROUP_NORM_GROUPS)
  mean = jnp.mean(g, axis=(1, 2, 4), keepdims=True)
  var = jnp.mean(jnp.square(g - mean), axis=(1, 2, 4), keepdims=True)
  g = ((g - mean) * jax.lax.rsqrt(var + GROUP_NORM_EPS)).reshape(b, h, w, c)
  return (g * p['weight'].astype(jnp.float32) + p['bias'].astype(jnp.float32)).astype(x.dtype)


def conv(p, x: jax.Array, stride: int = 1) -> jax.Array:
  """A k x k convolution with PyTorch's symmetric padding (k - 1) // 2."""
  k = p['weight'].shape[0]
  pad = (k - 1) // 2
  y = jax.lax.conv_general_dilated(x, p['weight'].astype(x.dtype), (stride, stride),
                                   ((pad, pad), (pad, pad)),
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return y + p['bias'].astype(x.dtype)


def dense(p, x: jax.Array) -> jax.Array:
  return x @ p['weight'].astype(x.dtype) + p['bias'].astype(x.dtype)


def upsample_nearest(x: jax.Array) -> jax.Array:
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_pool(x: jax.Array) -> jax.Array:
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def res_block(p, x: jax.Array, emb: jax.Array, arch: UNetArch, layer: dict) -> jax.Array:
  """ResBlock: x [B, H, W, c_in], emb [B, time_embed_dim] float32 -> [B, H', W', c_out]."""
  resample = (upsample_nearest if layer.get('up') else avg_pool if layer.get('down') else None)
  h = jax.nn.silu(group_norm(p['in_layers']['0'], x))
  if resample is not None:
    h, x = resample(h), resample(x)
  h = conv(p['in_layers']['2'], h)
  emb_out = dense(p['emb_layers']['1'], jax.nn.silu(emb)).astype(h.dtype)[:, None, None, :]
  if arch.use_scale_shift_norm:
    scale, shift = jnp.split(emb_out, 2, axis=-1)
    h = group_norm(p['out_layers']['0'], h) * (1 + scale) + shift
  else:
    h = group_norm(p['out_layers']['0'], h + emb_out)
  h = conv(p['out_layers']['3'], jax.nn.silu(h))   # out_layers.2 is dropout (eval: none)
  if 'skip_connection' in p:
    x = conv(p['skip_connection'], x)
  return x + h


def qk_scale(head_channels: int) -> float:
  """Each of q and k is multiplied by this before their product (guided-diffusion's
  float16-friendly split of 1 / sqrt(head_channels))."""
  return 1 / math.sqrt(math.sqrt(head_channels))


def attention_block(p, x: jax.Array, arch: UNetArch, heads: int) -> jax.Array:
  """AttentionBlock over all H * W positions. The qkv projection's 3C outputs are, per
  head, [q, k, v] (QKVAttentionLegacy) or, with use_new_attention_order, [q | k | v]
  each split into heads (QKVAttention)."""
  b, hgt, wid, c = x.shape
  ch = c // heads
  qkv = dense(p['qkv'], group_norm(p['norm'], x).reshape(b, hgt * wid, c))
  if arch.use_new_attention_order:
    q, k, v = jnp.moveaxis(qkv.reshape(b, hgt * wid, 3, heads, ch), 2, 0)
  else:
    q, k, v = jnp.moveaxis(qkv.reshape(b, hgt * wid, heads, 3, ch), 3, 0)
  scale = qk_scale(ch)
  logits = jnp.einsum('bthc,bshc->bhts', q * scale, k * scale)
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(logits.dtype)
  out = jnp.einsum('bhts,bshc->bthc', weights, v).reshape(b, hgt * wid, c)
  return x + dense(p['proj_out'], out).reshape(b, hgt, wid, c)


def _block(p, x, emb, arch: UNetArch, layers: list[dict]):
  for j, layer in enumerate(layers):
    q = p[str(j)]
    kind = layer['kind']
    if kind == 'res':
      x = res_block(q, x, emb, arch, layer)
    elif kind == 'attn':
      x = attention_block(q, x, arch, layer['heads'])
    elif kind == 'conv':
      x = conv(q, x)
    elif kind == 'down':
      x = conv(q['op'], x, stride=2) if arch.conv_resample else avg_pool(x)
    else:   # 'up'
      x = upsample_nearest(x)
      x = conv(q['conv'], x) if arch.conv_resample else x
  return x


def apply(params: Params, arch: UNetArch, x: jax.Array, timesteps: jax.Array,
          y: jax.Array | None = None, dtype=jnp.float32
          ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`UNetModel.forward`: x [B, R, R, in_channels], timesteps [B] (the model's own
  scale, may be fractional), y [B] int class ids when arch.num_classes, dtype of the
  blocks -> (output [B, R, R, out_channels] float32 (eps, then the variance values when
  learn_sigma), {'in{i}': input block i's output, 'out{i}': output block i's output,
  [B, r, r, C] in `dtype`})."""
  if (y is None) != (not arch.num_classes):
    raise ValueError('y (class ids) is needed exactly when the model is class-conditional')
  emb = timestep_embedding(timesteps, arch.model_channels)
  emb = dense(params['time_embed']['2'], jax.nn.silu(dense(params['time_embed']['0'], emb)))
  if arch.num_classes:
    emb = emb + jnp.take(params['label_emb']['weight'].astype(jnp.float32),
                         jnp.asarray(y, jnp.int32), axis=0)
  blocks = arch.blocks()
  h = x.astype(dtype)
  skips, named = [], {}
  for i, block in enumerate(blocks['input_blocks']):
    h = _block(params['input_blocks'][str(i)], h, emb, arch, block['layers'])
    skips.append(h)
    named[f'in{i}'] = h
  h = _block(params['middle_block'], h, emb, arch, blocks['middle_block']['layers'])
  for i, block in enumerate(blocks['output_blocks']):
    h = jnp.concatenate([h, skips.pop()], axis=-1)
    h = _block(params['output_blocks'][str(i)], h, emb, arch, block['layers'])
    named[f'out{i}'] = h
  h = jax.nn.silu(group_norm(params['out']['0'], h.astype(jnp.float32)))
  return conv(params['out']['2'], h), named
