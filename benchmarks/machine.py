"""This machine's reference rate, printed beside benchmark figures to compare machines."""

import time


def matmul_gflops(repeats: int = 10) -> float:
  """GFLOP/s of a jitted float32 2048x2048 @ 2048x2048 matmul."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  a = jnp.ones((2048, 2048), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    out = matmul(a)
  out.block_until_ready()
  return repeats * 2 * 2048 ** 3 / (time.perf_counter() - start) / 1e9
