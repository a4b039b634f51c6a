"""VQGAN speed, random weights: the transformer's sampler with its KV cache against a
cache-free loop in the same run (each step reruns the whole context, as taming's sample
does), and the whole generate step (class -> tokens -> decoder -> segmentation heads ->
vote and JS score) in images per second.

  python benchmarks/vqgan_speed.py                    # tiny sizes, CPU (the README's)
  python benchmarks/vqgan_speed.py --size=imagenet    # taming's ImageNet cin_transformer
                                                      # (48 layers, 1536 wide, 16x16 codes
                                                      # of 16384, 256 px): an accelerator

Prints seconds, tokens or images per second, the ratio to the baseline, XLA's memory
figures of each compiled function and the process's peak RSS. Both samplers decode
greedily here, so the run also checks that they choose the same tokens.
"""

import argparse
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import machine  # pylint: disable=wrong-import-position

from dgan_jax import factory as factory_lib  # pylint: disable=wrong-import-position
from dgan_jax import features  # pylint: disable=wrong-import-position
from dgan_jax.bigdatasetgan import head as head_lib  # pylint: disable=wrong-import-position
from dgan_jax.bigdatasetgan import train as train_lib  # pylint: disable=wrong-import-position
from dgan_jax.generators import mingpt  # pylint: disable=wrong-import-position
from dgan_jax.generators import vqgan  # pylint: disable=wrong-import-position

SIZES = {
    'tiny': dict(resolution=128, ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1,
                 attn_resolutions=(16,), z_channels=32, n_embed=1024, embed_dim=32,
                 vocab_size=1024, block_size=256, n_layer=4, n_head=4, n_embd=128,
                 num_classes=1000),
    'imagenet': {},   # VQGANArch's defaults: the 2021-04-03T19-39-50 cin_transformer
}
# The segmentation heads' groups: (sizes, channels).
GROUPS = {'tiny': ((32, 128), (32, 16)), 'imagenet': ((32, 128, 256), (128, 64, 32))}


def cache_free_sample(params, arch: mingpt.GPTArch, prefix, steps: int):
  """Greedy decoding without a cache: step t runs the whole [B, steps] context through
  every layer (causal, so later positions do not change position t's logits)."""
  batch = prefix.shape[0]
  buffer = jnp.zeros((batch, steps + 1), jnp.int32).at[:, :1].set(prefix)

  def one_position(buffer, position):
    logits = mingpt.forward(params, arch, buffer[:, :-1])
    chosen = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, position, 1, keepdims=False),
                        axis=-1).astype(jnp.int32)
    return jax.lax.dynamic_update_index_in_dim(buffer, chosen, position + 1, 1), None

  return jax.lax.scan(one_position, buffer, jnp.arange(steps))[0]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--size', choices=sorted(SIZES), default='tiny')
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
  args = parser.parse_args()

  start = time.perf_counter()
  arch = vqgan.VQGANArch(**SIZES[args.size])
  g = vqgan.VQGANGenerator(arch, vqgan.random_params(arch, jax.random.key(0)),
                           dtype=jnp.dtype(args.dtype))
  print(f'{args.size}: {arch.resolution} px, {arch.code_resolution}x{arch.code_resolution} '
        f'codes, {arch.n_layer}-layer transformer ({arch.n_embd} wide); random weights in '
        f'{time.perf_counter() - start:.1f} s; {jax.device_count()} '
        f'{jax.default_backend()} device(s), {args.dtype}; matmul '
        f'{machine.matmul_gflops():.0f} GFLOP/s')

  b, steps = args.batch, g.latent_size
  transformer = g.params['transformer']
  prefix = jnp.arange(b, dtype=jnp.int32)[:, None] * 7 % arch.num_classes
  cached = machine.timed(jax.jit(lambda p, c: mingpt.sample(p, arch.gpt, c, steps, None)),
                         (transformer, prefix), args.repeats)
  free = machine.timed(jax.jit(lambda p, c: cache_free_sample(p, arch.gpt, c, steps)),
                       (transformer, prefix), args.repeats)
  same = bool(np.array_equal(np.asarray(cached.out), np.asarray(free.out)))
  for name, timing in (('KV cache', cached), ('no cache', free)):
    print(f'sampler, {name}: compile {timing.compile_seconds:.1f} s, {timing.seconds:.3f} s '
          f'per batch of {b}, {b * steps / timing.seconds:,.0f} tokens/s, '
          f'{timing.memory_bytes / 2**30:.2f} GB')
  print(f'sampler: the KV cache is {free.seconds / cached.seconds:.1f}x the cache-free loop; '
        f'greedy tokens equal: {same}')

  heads = head_lib.HeadArch(tuple(s.height for s in g.feature_specs),
                            tuple(s.channels for s in g.feature_specs), 0,
                            group_sizes=GROUPS[args.size][0],
                            group_channels=GROUPS[args.size][1], num_members=2)
  sampling = vqgan.VQGANSampling(0, (225, 200), 1, b, 1.0, steps, arch.num_classes,
                                 temperature=1.0, top_k=min(600, arch.vocab_size))
  layout = features.FeatureLayout.create([s.shape for s in g.feature_specs],
                                         [s.channels for s in g.feature_specs])
  step = factory_lib.Factory(g, sampling, train_lib.Labeler(heads,
                                                            variables=head_lib.init(heads, 0)),
                             layout, batch_size=b)
  compile_s, seconds, memory = machine.timed_factory(step, b, args.repeats)
  print(f'generate step (sampling top-k {sampling.top_k}, decoder, 2 heads, vote, JS), batch '
        f'{b}: compile {compile_s:.1f} s, {seconds:.3f} s per batch, {b / seconds:.2f} '
        f'images/s, {memory["total_bytes"] / 2**30:.2f} GB')
  print(f'peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB')


if __name__ == '__main__':
  main()
