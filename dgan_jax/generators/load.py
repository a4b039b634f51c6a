"""Converted checkpoint directory (or a config) -> generator object."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from dgan_jax.errors import InputError
from dgan_jax.generators import biggan
from dgan_jax.generators import biggan_deep
from dgan_jax.generators import checkpoint
from dgan_jax.generators import stylegan1


def build_stylegan1(arch_json: dict, arrays: dict, source: str, dtype):
  fields = {k: v for k, v in arch_json.items() if k != 'type'}
  try:
    arch = stylegan1.StyleGAN1Arch(**fields)
  except (TypeError, ValueError) as e:
    raise checkpoint.CheckpointError(f'{source}: bad architecture record ({e})') from None
  params = {k: v for k, v in arrays.items() if k != 'avg_latent' and not k.startswith('noise/')}
  checkpoint.check_names_and_shapes(params, stylegan1.param_shapes(arch), source)
  noise_names = [f'noise/{j}' for j in range(arch.num_ws)]
  const_noise = None
  if all(n in arrays for n in noise_names):
    const_noise = [arrays[n] for n in noise_names]
  return stylegan1.StyleGAN1Generator(arch, checkpoint.unflatten(params),
                                      avg_latent=arrays.get('avg_latent'),
                                      const_noise=const_noise, dtype=dtype)


def _build_class_conditional(arch_cls, module, generator_cls):
  def build(arch_json: dict, arrays: dict, source: str, dtype):
    fields = {k: v for k, v in arch_json.items() if k != 'type'}
    try:
      arch = arch_cls(**fields)
    except (TypeError, ValueError) as e:
      raise checkpoint.CheckpointError(f'{source}: bad architecture record ({e})') from None
    checkpoint.check_names_and_shapes(arrays, module.param_shapes(arch), source)
    return generator_cls(arch, checkpoint.unflatten(arrays), dtype=dtype)
  return build


BUILDERS = {
    'stylegan1': build_stylegan1,
    'biggan': _build_class_conditional(biggan.BigGANArch, biggan, biggan.BigGANGenerator),
    'biggan_deep': _build_class_conditional(biggan_deep.BigGANDeepArch, biggan_deep,
                                            biggan_deep.BigGANDeepGenerator),
}


def load(path: str, dtype=jnp.float32):
  """Loads a converted generator directory (see `python -m convert_weights`).

  dtype: compute dtype, float32 (default) or bfloat16 for accelerators.
  """
  meta, arrays = checkpoint.read(path)
  kind = meta['arch'].get('type')
  if kind not in BUILDERS:
    raise checkpoint.CheckpointError(f'{path}/generator.json: unknown generator type {kind!r}')
  return BUILDERS[kind](meta['arch'], arrays, path, dtype)


def kind_from_config(generator_config) -> str:
  """The generator type a config asks for ('stylegan1', 'biggan', 'biggan_deep'): the
  random_init type, else the checkpoint's generator.json; '' when that is unreadable
  (from_config then reports the problem)."""
  if generator_config.random_init.enabled:
    return generator_config.random_init.type
  try:
    with open(os.path.join(generator_config.checkpoint, 'generator.json')) as f:
      return str(json.load(f)['arch']['type'])
  except (OSError, ValueError, KeyError, TypeError):
    return ''


def _random_biggan(random_init, seed: int, dtype):
  b = random_init.biggan
  try:
    arch = biggan.BigGANArch(resolution=random_init.resolution, ch=b.ch, dim_z=b.dim_z,
                             shared_dim=b.shared_dim, num_classes=b.num_classes,
                             attention_resolutions=tuple(b.attention_resolutions))
  except ValueError as e:
    raise InputError(f'config.generator.random_init: {e}') from None
  return biggan.BigGANGenerator(arch, biggan.init_params(arch, jax.random.key(seed)),
                                dtype=dtype)


def from_config(generator_config, seed: int):
  """The run's generator: a converted checkpoint, or a random-weight StyleGAN (v1) or
  BigGAN when `generator.random_init.enabled` (tests, smoke runs)."""
  dtype = jnp.dtype(generator_config.dtype)
  random_init = generator_config.random_init
  if random_init.enabled and random_init.type == 'biggan':
    g = _random_biggan(random_init, seed, dtype)
  elif random_init.enabled:
    arch = stylegan1.StyleGAN1Arch(resolution=random_init.resolution,
                                   fmap_base=random_init.fmap_base,
                                   fmap_max=random_init.fmap_max,
                                   mapping_layers=random_init.mapping_layers)
    params = stylegan1.init_params(arch, jax.random.key(seed))
    g = stylegan1.StyleGAN1Generator(arch, params, const_noise=stylegan1.draw_const_noise(arch, seed),
                                     dtype=dtype)
    z = np.random.RandomState(seed).standard_normal((1024, arch.latent_size))
    g.avg_latent = jnp.mean(g.map(z)[:, 0], axis=0)
  else:
    path = generator_config.checkpoint
    if not path or not os.path.exists(path):
      raise InputError(
          f'config.generator.checkpoint: {path or "(empty)"} does not exist. '
          f'{generator_config.how_to_get}'.strip())
    g = load(path, dtype)
  if generator_config.avg_latent:
    if not isinstance(g, stylegan1.StyleGAN1Generator):
      raise InputError('config.generator.avg_latent applies to StyleGAN generators only')
    avg = np.load(generator_config.avg_latent, allow_pickle=False)
    if avg.shape not in ((g.arch.dlatent_size,), (g.num_ws, g.arch.dlatent_size)):
      raise InputError(f'{generator_config.avg_latent}: average W must be [512] or '
                       f'[{g.num_ws}, 512], got {avg.shape}')
    g.avg_latent = jnp.asarray(avg, jnp.float32)
  return g
