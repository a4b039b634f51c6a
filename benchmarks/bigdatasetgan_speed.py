"""BigDatasetGAN speed: the generate step (BigGAN + segmentation heads, per sample) and
the head's training step, with random weights of a given BigGAN architecture.

  python benchmarks/bigdatasetgan_speed.py                     # BigGAN-512, batch 1
  python benchmarks/bigdatasetgan_speed.py --resolution=128 --ch=96 --batch=4 --members=3

Prints compile seconds, seconds per call and samples per second, and XLA's memory figures
of each compiled step (so a run that would not fit is reported before it is attempted:
--max_gigabytes). The head's 1x1 projections run at each map's native resolution before
resizing; the baseline in the same run resizes every map to its group's size first, as
BigDatasetGAN's PyTorch code does, and the ratio is printed.
"""

import argparse
import os
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
from dgan_jax.generators import base  # pylint: disable=wrong-import-position
from dgan_jax.generators import biggan  # pylint: disable=wrong-import-position

GROUPS = {512: (32, 128, 512), 256: (16, 64, 256), 128: (8, 32, 128)}


def resize_then_project(arch, params, feature_maps):
  """BigDatasetGAN's order: every map resized to its group's size, concatenated, 1x1."""
  out = []
  for g, size in enumerate(arch.group_sizes):
    maps = [head_lib.resize_bilinear(feature_maps[l].astype(jnp.float32), size, size)
            for l in arch.group_maps(g)]
    out.append(jnp.einsum('bhwc,ck->bhwk', jnp.concatenate(maps, -1),
                          params[f'proj{g}']['weight'][0, 0]))
  return out


def gigabytes(memory) -> float:
  return (memory.temp_size_in_bytes + memory.argument_size_in_bytes
          + memory.output_size_in_bytes) / 2**30


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--resolution', type=int, default=512)
  parser.add_argument('--ch', type=int, default=96)
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--members', type=int, default=1)
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--train', action='store_true', help='also time the training step')
  parser.add_argument('--max_gigabytes', type=float, default=6.0)
  args = parser.parse_args()

  attention = {512: (64,), 256: (128,), 128: (64,)}[args.resolution]
  dim_z = {512: 128, 256: 140, 128: 120}[args.resolution]   # BigGAN-PyTorch's TF-Hub ports
  gen_arch = biggan.BigGANArch(resolution=args.resolution, ch=args.ch, dim_z=dim_z,
                               attention_resolutions=attention)
  start = time.perf_counter()
  g = biggan.BigGANGenerator(gen_arch, biggan.init_params(gen_arch, jax.random.key(0)))
  print(f'BigGAN-{args.resolution} ch {args.ch}: random weights in '
        f'{time.perf_counter() - start:.1f} s; {jax.device_count()} {jax.default_backend()} '
        f'device(s)')
  arch = head_lib.HeadArch(tuple(g.feature_resolutions), tuple(g.feature_channels),
                           g.embedding_dim, group_sizes=GROUPS[args.resolution],
                           num_members=args.members)
  variables = head_lib.init(arch, 0)
  b = args.batch
  # Sample i of the run: number 0 of class 7 i.
  sampling = base.ClassSampling(0, tuple(7 * i % 1000 for i in range(b)), 1, 1, 0.9, g.dim_z,
                                g.num_classes)
  layout = features.FeatureLayout.create([s.shape for s in g.feature_specs],
                                         [s.channels for s in g.feature_specs])
  step = factory_lib.Factory(g, sampling, train_lib.Labeler(arch, variables=variables), layout,
                             batch_size=b)
  compile_s, seconds, memory = machine.timed_factory(step, b, args.repeats)
  print(f'generate step, batch {b}, {args.members} head(s): compile {compile_s:.1f} s, '
        f'{seconds:.2f} s per call, {b / seconds:.3f} samples/s, '
        f'{memory["total_bytes"] / 2**30:.2f} GB')

  inputs = sampling.draw('generate', np.arange(b, dtype=np.uint32))
  _, maps, _ = g.apply(g.variables(sampling), inputs, sampling)
  params = jax.tree.map(lambda a: a[0], variables['params'])
  ours = jax.jit(lambda p, m: head_lib.project_groups(arch, p, m))
  baseline = jax.jit(lambda p, m: resize_then_project(arch, p, m))
  ours_s = machine.timed(ours, (params, maps), args.repeats + 3).seconds
  base_s = machine.timed(baseline, (params, maps), args.repeats + 3).seconds
  difference = max(float(jnp.abs(a - b_).max() / (jnp.abs(b_).max() + 1e-12))
                   for a, b_ in zip(ours(params, maps), baseline(params, maps)))
  print(f'group projections: project then resize {1000 * ours_s:.1f} ms, resize then '
        f'project (baseline) {1000 * base_s:.1f} ms: {base_s / ours_s:.2f}x; max relative '
        f'difference {difference:.1e}')

  if args.train:
    options = train_lib.TrainOptions(batch_size=b)
    state = train_lib.init_state(arch, options, 0)
    masks = jnp.zeros((b, args.resolution, args.resolution), jnp.uint8)
    train_step = train_lib.make_train_step(g, sampling, arch, options)
    generator_variables = g.variables(sampling)
    lowered = train_step.lower(state, generator_variables, inputs, masks)
    compiled = lowered.compile()
    need = gigabytes(compiled.memory_analysis())
    if need > args.max_gigabytes:
      print(f'training step, batch {b}: needs {need:.1f} GB > --max_gigabytes; not run')
      return
    start = time.perf_counter()
    state, metrics = compiled(state, generator_variables, inputs, masks)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.repeats):
      state, metrics = compiled(state, generator_variables, inputs, masks)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / args.repeats
    print(f'training step, batch {b}, {args.members} head(s): {seconds:.2f} s per step '
          f'(first {first:.2f} s), {b / seconds:.3f} samples/s, {need:.2f} GB')


if __name__ == '__main__':
  main()
