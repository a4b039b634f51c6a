"""Converted checkpoint directory -> generator object."""

import jax.numpy as jnp

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


BUILDERS = {'stylegan1': build_stylegan1}


def load(path: str, dtype=jnp.float32):
  """Loads a converted generator directory (see `python -m convert_weights`).

  dtype: compute dtype, float32 (default) or bfloat16 for accelerators.
  """
  meta, arrays = checkpoint.read(path)
  kind = meta['arch'].get('type')
  if kind not in BUILDERS:
    raise checkpoint.CheckpointError(f'{path}/generator.json: unknown generator type {kind!r}')
  return BUILDERS[kind](meta['arch'], arrays, path, dtype)
