"""What the benchmark scripts share: this machine's reference rates (matmul, memory
bandwidth), printed beside benchmark figures to compare machines, and the timing of a
compiled function or of a factory's generate step."""

import dataclasses
import time
from typing import Any


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


def bandwidth_bytes_per_second(size: int = 2 ** 26, repeats: int = 20) -> float:
  """Best bytes/s of a jitted y <- 1.5 * x + y over float32 arrays of `size` values (two
  reads, one write). y is donated: with a fresh output on every call, page faults on the
  new array, not memory, would set the figure (12-13 GB/s here, against 48 at 256 MiB)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  x, y = jnp.ones((size,), jnp.float32), jnp.ones((size,), jnp.float32)
  f = jax.jit(lambda x, y: 1.5 * x + y, donate_argnums=(1,))
  y = f(x, y).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    y = f(x, y).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 3 * x.nbytes / best


@dataclasses.dataclass
class Timing:
  compile_seconds: float
  seconds: float            # per call, the first (warm-up) call excluded
  memory_bytes: int         # XLA's temporaries + arguments + outputs
  temp_bytes: int           # XLA's temporaries alone
  flops: float              # XLA's count
  bytes_accessed: float     # XLA's count (operands read and written, caches included)
  out: Any                  # the last call's output


def timed(jitted, args, repeats: int, carry: bool = False) -> Timing:
  """Compiles `jitted` for `args`, calls it once, then times `repeats` calls.
  carry: it returns (new first argument, ...) and donates the old one (a train step)."""
  import jax  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, list) else cost) or {}
  args = list(args)

  def call():
    out = compiled(*args)
    if carry:
      args[0] = out[0]
    return out

  jax.block_until_ready(call())
  start = time.perf_counter()
  for _ in range(repeats):
    out = call()
  jax.block_until_ready(out)
  return Timing(compile_seconds, (time.perf_counter() - start) / repeats,
                memory.temp_size_in_bytes + memory.argument_size_in_bytes
                + memory.output_size_in_bytes, memory.temp_size_in_bytes,
                float(cost.get('flops', 0)),
                float(cost.get('bytes accessed', 0)), out)


def timed_factory(factory, batch: int, repeats: int) -> tuple[float, float, dict]:
  """A dgan_jax Factory's compiled step on samples 0..batch-1 -> (compile seconds, seconds
  per call after a warm-up call, its `memory_analysis`)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  memory = factory.memory_analysis(batch)
  compile_seconds = time.perf_counter() - start
  indices = np.arange(batch)
  factory(indices)
  start = time.perf_counter()
  for _ in range(repeats):
    factory(indices)
  return compile_seconds, (time.perf_counter() - start) / repeats, memory
