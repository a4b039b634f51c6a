"""The toy GAN's training speed: images per second of one training step.

  python benchmarks/gan_step.py

Times the compiled step of configs/toy_gan.py (batch 32; D, G and EMA updates) with and
without the lazy R1 pass, and prints images/s at the 1-in-r1_every mix the trainer runs,
next to this machine's matmul rate.
"""

import importlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import machine  # pylint: disable=wrong-import-position


def main():
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from dgan_jax.gan import train  # pylint: disable=import-outside-toplevel
  config = importlib.import_module('configs.toy_gan').get_config()
  g_arch, d_arch = train.architectures(config)
  optimizer = optax.adam(config.learning_rate, b1=0.0, b2=config.adam_b2, eps=1e-8)
  state = train.initial_state(config, g_arch, d_arch, optimizer)
  step = train.make_step(config, g_arch, d_arch, optimizer)
  reals = np.random.default_rng(0).uniform(-1, 1, (config.batch_size, g_arch.resolution,
                                                   g_arch.resolution, 3)).astype(np.float32)
  seconds = {}
  for regularize, repeats in ((False, 20), (True, 5)):
    state, _ = step(state, reals, jax.random.key(0), regularize)  # compile
    jax.block_until_ready(state)
    start = time.perf_counter()
    for i in range(repeats):
      state, _ = step(state, reals, jax.random.key(i), regularize)
    jax.block_until_ready(state)
    seconds[regularize] = (time.perf_counter() - start) / repeats
  every = config.r1_every
  mixed = ((every - 1) * seconds[False] + seconds[True]) / every
  print(f'toy GAN step, batch {config.batch_size}: {seconds[False]:.3f} s, with R1 '
        f'{seconds[True]:.3f} s; {config.batch_size / mixed:.1f} images/s at 1 R1 step in '
        f'{every}; {config.total_kimg * 1000 / (config.batch_size / mixed) / 60:.0f} min for '
        f'{config.total_kimg:.0f}k images')
  print(f'matmul rate of this machine: {machine.matmul_gflops():.0f} GFLOP/s')


if __name__ == '__main__':
  main()
