"""Converted checkpoint directory (or a config) -> generator object."""

import os

import jax.numpy as jnp

from dgan_jax import io
from dgan_jax.errors import InputError
from dgan_jax.generators import base
from dgan_jax.generators import checkpoint


def load(path: str, dtype=jnp.float32) -> base.Generator:
  """Loads a converted generator directory (see `python -m convert_weights`).

  dtype: compute dtype, float32 (default) or bfloat16 for accelerators.
  """
  meta, arrays = checkpoint.read(path)
  if not isinstance(meta['arch'], dict):
    raise checkpoint.CheckpointError(f'{path}/generator.json: arch is not a record')
  kind = meta['arch'].get('type')
  try:
    cls = base.family_class(kind)
  except InputError as e:
    raise checkpoint.CheckpointError(f'{path}/generator.json: {e}') from None
  return cls.from_checkpoint(meta['arch'], arrays, path, dtype)


def identity(generator_config, seed: int) -> dict:
  """JSON: which weights config.generator names (the checkpoint's params.npz and average
  W file digests, or the random-weight record), so that results made from other weights
  are never reused."""
  random_init = generator_config.random_init
  if random_init.type:
    record = {'random_init': random_init.to_dict(), 'seed': seed}
  else:
    params = os.path.join(generator_config.checkpoint, 'params.npz')
    record = {'params': io.file_digest(params) if os.path.isfile(params) else None}
  if generator_config.avg_latent and os.path.isfile(generator_config.avg_latent):
    record['avg_latent'] = io.file_digest(generator_config.avg_latent)
  return {**record, 'dtype': generator_config.dtype}


def from_config(generator_config, seed: int) -> base.Generator:
  """The run's generator: a converted checkpoint, or random weights of the family
  `generator.random_init.type` (tests, smoke runs), with config.generator.avg_latent
  replacing the checkpoint's average W when set."""
  dtype = jnp.dtype(generator_config.dtype)
  random_init = generator_config.random_init
  if random_init.type:
    try:
      cls = base.family_class(random_init.type)
    except InputError as e:
      raise InputError(f'config.generator.random_init.type: {e}') from None
    g = cls.random(random_init.arch.to_dict(), seed, dtype)
  else:
    path = generator_config.checkpoint
    if not path or not os.path.exists(path):
      raise InputError(
          f'config.generator.checkpoint: {path or "(empty)"} does not exist. '
          f'{generator_config.how_to_get}'.strip())
    g = load(path, dtype)
  if generator_config.avg_latent:
    if not hasattr(g, 'set_avg_latent'):
      raise InputError(f'config.generator.avg_latent: a {g.family} generator has no '
                       'average W')
    g.set_avg_latent(generator_config.avg_latent)
  return g
