"""Per-sample randomness: sample i's draws depend only on (seed, i), never on batching."""

import jax
import jax.numpy as jnp

LATENT_STREAM = 0
NOISE_STREAM = 1


def sample_key(seed: int, stream: int, index) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), index)


def sample_z(seed: int, indices, latent_size: int = 512) -> jax.Array:
  """indices [B] (global sample ids) -> z [B, latent_size] ~ N(0, 1)."""
  indices = jnp.asarray(indices).astype(jnp.uint32)
  keys = jax.vmap(lambda i: sample_key(seed, LATENT_STREAM, i))(indices)
  return jax.vmap(lambda k: jax.random.normal(k, (latent_size,)))(keys)
