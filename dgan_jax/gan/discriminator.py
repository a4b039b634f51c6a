"""A residual discriminator for training StyleGAN generators (pure functions, NHWC).

Equalized learning rate as in StyleGAN: weights are stored N(0, 1) and scaled by
He's constant at run time. Layout (flat names):

  fromrgb/{weight [1, 1, 3, C_R], bias}
  b{r}/conv0/{weight [3, 3, C_r, C_r], bias}, b{r}/conv1/{weight [3, 3, C_r, C_r/2], bias},
  b{r}/skip/{weight [1, 1, C_r, C_r/2]}                          r = R .. 8
  b4/conv/{weight [3, 3, C_4 + 1, C_4], bias}, b4/dense/{weight [16 C_4, C_4], bias},
  b4/out/{weight [C_4, 1], bias}
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from dgan_jax.generators.checkpoint import unflatten


@dataclasses.dataclass(frozen=True)
class DiscriminatorArch:
  resolution: int = 32
  fmap_base: int = 1024
  fmap_max: int = 128
  mbstd_group: int = 4

  def channels(self, resolution: int) -> int:
    return min(self.fmap_base // resolution, self.fmap_max)

  @property
  def resolutions(self) -> list[int]:
    """Block resolutions from the image down to 8 (the 4x4 head follows)."""
    return [2 ** r for r in range(int(math.log2(self.resolution)), 2, -1)]


def param_shapes(arch: DiscriminatorArch) -> dict[str, tuple[int, ...]]:
  shapes = {'fromrgb/weight': (1, 1, 3, arch.channels(arch.resolution)),
            'fromrgb/bias': (arch.channels(arch.resolution),)}
  for r in arch.resolutions:
    c, c_next = arch.channels(r), arch.channels(r // 2)
    shapes.update({f'b{r}/conv0/weight': (3, 3, c, c), f'b{r}/conv0/bias': (c,),
                   f'b{r}/conv1/weight': (3, 3, c, c_next), f'b{r}/conv1/bias': (c_next,),
                   f'b{r}/skip/weight': (1, 1, c, c_next)})
  c = arch.channels(4)
  shapes.update({'b4/conv/weight': (3, 3, c + 1, c), 'b4/conv/bias': (c,),
                 'b4/dense/weight': (16 * c, c), 'b4/dense/bias': (c,),
                 'b4/out/weight': (c, 1), 'b4/out/bias': (1,)})
  return shapes


def init_params(arch: DiscriminatorArch, key: jax.Array) -> dict:
  """N(0, 1) weights, zero biases."""
  flat = {}
  for i, (name, shape) in enumerate(param_shapes(arch).items()):
    if name.endswith('weight'):
      flat[name] = np.asarray(jax.random.normal(jax.random.fold_in(key, i), shape), np.float32)
    else:
      flat[name] = np.zeros(shape, np.float32)
  return unflatten(flat)


def _lrelu(x):
  return jax.nn.leaky_relu(x, 0.2) * math.sqrt(2)


def _conv(p, x):
  weight = p['weight']
  weight = weight * (np.prod(weight.shape[:3]) ** -0.5)
  y = jax.lax.conv_general_dilated(x, weight.astype(x.dtype), (1, 1), 'SAME',
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return y + p['bias'].astype(x.dtype) if 'bias' in p else y


def _downsample(x):
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _minibatch_stddev(x, group: int):
  """Appends the mean over features of the per-group standard deviation as a channel."""
  b, h, w, c = x.shape
  group = min(group, b)
  while b % group:
    group -= 1
  y = x.reshape(group, b // group, h, w, c)
  std = jnp.sqrt(jnp.var(y, axis=0) + 1e-8).mean(axis=(1, 2, 3))   # [b // group]
  std = jnp.tile(std, group)[:, None, None, None]
  return jnp.concatenate([x, jnp.broadcast_to(std, (b, h, w, 1))], axis=-1)


def discriminate(params: dict, arch: DiscriminatorArch, images: jax.Array) -> jax.Array:
  """images [B, R, R, 3] in [-1, 1] -> logits [B] (real > 0)."""
  x = _lrelu(_conv(params['fromrgb'], images))
  for r in arch.resolutions:
    p = params[f'b{r}']
    skip = _conv(p['skip'], _downsample(x))
    x = _lrelu(_conv(p['conv0'], x))
    x = _downsample(_lrelu(_conv(p['conv1'], x)))
    x = (x + skip) * math.sqrt(0.5)
  p = params['b4']
  x = _lrelu(_conv(p['conv'], _minibatch_stddev(x, arch.mbstd_group)))
  x = x.reshape(x.shape[0], -1)
  for name in ('dense', 'out'):
    weight = p[name]['weight'] * p[name]['weight'].shape[0] ** -0.5
    x = x @ weight + p[name]['bias']
    if name == 'dense':
      x = _lrelu(x)
  return x[:, 0]
