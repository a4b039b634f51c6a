"""Where one car-sized generate step spends its time: each part compiled and timed alone,
beside XLA's FLOP and byte counts for it and this machine's matmul rate.

  python benchmarks/generate_profile.py [--images 3] [--family stylegan1|stylegan2]

The step of benchmarks/generate_throughput.py (512 px StyleGAN with random weights, maps
resized to 512x512 and cropped to 384x512, 10 members, 20 classes), cut into:
  synthesis     the generator's pure function: z -> mapping, truncation, image and its
                feature maps (the step's first half);
  labelling     the labeler's function on those maps (the step's second half):
    first layer   the member's Linear(D, 128) folded into the native maps (per-group
                  projections, then their bilinear resize to the grid), all members;
    head          ReLU-BatchNorm-Linear-ReLU-BatchNorm-Linear from the first layer's
                  output [10, 196608, 128] to the logits;
    vote and JS   softmax, majority vote and per-pixel Jensen-Shannon divergence;
  whole step    the factory's compiled step, for the sum's check.
`first layer` is labelling minus head minus vote and JS. Head, vote and JS are timed on
random first-layer outputs in chunks of config.generate.chunk_rows rows, as the step runs
them (on the whole grid at once, its 1 GB input made the head 2.3x slower).

FLOPs: XLA's cost analysis for synthesis, head and the whole step's synthesis half; the
labelling runs in a `lax.map` over row chunks, whose body XLA's analysis counts once, so
its FLOPs are counted here: the first layer as every kept native-map pixel projected once,
2 * M * H1 * sum_l(kept_l * w_l * C_l) (chunk overlaps and the resize not counted), the
head as 2 * P * M * (H1 * H2 + H2 * C). GFLOP/s is FLOPs over the measured seconds, and
"x matmul" its ratio to this machine's jitted float32 matmul rate.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import ml_collections  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

import generate_throughput as car  # pylint: disable=wrong-import-position
import machine  # pylint: disable=wrong-import-position
from dgan_jax import config as config_lib  # pylint: disable=wrong-import-position
from dgan_jax import factory as factory_lib  # pylint: disable=wrong-import-position
from dgan_jax import features as features_lib  # pylint: disable=wrong-import-position
from dgan_jax import interpreter  # pylint: disable=wrong-import-position
from dgan_jax import uncertainty  # pylint: disable=wrong-import-position


def timed(fn, args, repeats: int) -> tuple[float, float]:
  """Compiles fn(*args) -> (median seconds per call, XLA's FLOP count)."""
  compiled = jax.jit(fn).lower(*args).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times)), float(cost.get('flops', 0.0))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--images', type=int, default=3, help='timed calls per part (median)')
  parser.add_argument('--family', choices=('stylegan1', 'stylegan2'), default='stylegan1')
  args = parser.parse_args()

  g = car._car_generator(args.family)  # pylint: disable=protected-access
  data = ml_collections.ConfigDict({'feature_size': car.FEATURE_SIZE,
                                    'crop_rows': car.CROP_ROWS})
  layout = features_lib.layout_for(g, data)
  arch = interpreter.InterpreterArch(layout.dim, car.NUM_CLASSES, car.NUM_MEMBERS)
  params, stats = interpreter.init(arch, jax.random.key(1))
  labeler = interpreter.Labeler(arch, variables={'params': params, 'batch_stats': stats})
  config = config_lib.base()
  sampling = g.sampling(config)
  chunk_rows = config.generate.chunk_rows
  factory = factory_lib.Factory(g, sampling, labeler, layout, chunk_rows=chunk_rows)
  g_variables = g.variables(sampling)
  inputs = sampling.draw('generate', np.arange(1, dtype=np.uint32))
  label = labeler.label_fn(layout, 0.1, chunk_rows)   # the factory's top_fraction, chunk_rows
  height, width = layout.output_shape
  pixels = height * width
  rate = machine.matmul_gflops()

  def synthesis(variables, inputs):
    return g.apply(variables, inputs, sampling)[:2]

  maps = jax.block_until_ready(jax.jit(synthesis)(g_variables, inputs)[1])

  def labelling(variables, maps):
    return label(variables, maps, None)

  # Head, vote and JS run per chunk of rows, as in the step: [chunks, M, chunk pixels, ...].
  num_chunks = -(-height // chunk_rows)
  first = jnp.asarray(np.random.RandomState(0).standard_normal(
      (num_chunks, car.NUM_MEMBERS, chunk_rows * width, arch.hidden[0])), jnp.float32)

  def head(params, stats, first):
    return jax.lax.map(lambda chunk: interpreter.head(params, stats, chunk), first)

  logits = jax.block_until_ready(jax.jit(head)(params, stats, first))

  def vote_and_js(logits):
    def one(chunk):
      votes = uncertainty.majority_vote(jnp.argmax(chunk, -1), car.NUM_CLASSES)
      return votes, uncertainty.js_divergence(jax.nn.softmax(chunk, axis=-1))
    return jax.lax.map(one, logits)

  parts = {
      'synthesis': timed(synthesis, (g_variables, inputs), args.images),
      'labelling': timed(labelling, (labeler.variables, maps), args.images),
      'head': timed(head, (params, stats, first), args.images),
      'vote and JS': timed(vote_and_js, (logits,), args.images),
  }
  step = factory._step(True, 'labels')  # pylint: disable=protected-access
  parts['whole step'] = timed(lambda gv, lv, i: step(gv, lv, i),
                              (g_variables, labeler.variables, np.arange(1, dtype=np.uint32)),
                              args.images)
  h1, h2 = arch.hidden
  members_hidden = car.NUM_MEMBERS * h1
  native = sum((stop - first) * m.shape[2] * m.shape[3]
               for m, (first, stop) in zip(maps, layout.kept_rows))
  first_layer_flops = 2 * members_hidden * native
  head_flops = 2 * pixels * car.NUM_MEMBERS * (h1 * h2 + h2 * car.NUM_CLASSES)
  parts['first layer'] = (parts['labelling'][0] - parts['head'][0] - parts['vote and JS'][0],
                          first_layer_flops)
  parts['head'] = (parts['head'][0], head_flops)
  # XLA counts a lax.map body once.
  parts['vote and JS'] = (parts['vote and JS'][0], parts['vote and JS'][1] * num_chunks)
  parts['labelling'] = (parts['labelling'][0], first_layer_flops + head_flops)
  parts['whole step'] = (parts['whole step'][0], parts['synthesis'][1] + first_layer_flops
                         + head_flops)

  print(f'car-sized generate step ({args.family}, {len(layout.channels)} maps, D = '
        f'{layout.dim}, {height}x{width} pixels, {car.NUM_MEMBERS} members, '
        f'{car.NUM_CLASSES} classes), one image, {jax.devices()[0].platform}; matmul '
        f'{rate:.0f} GFLOP/s; median of {args.images} calls per part')
  print(f'first layer folded into the native maps: {native / 1e6:.1f}M native values '
        f'projected to {members_hidden} outputs, against {pixels * layout.dim / 1e6:.0f}M '
        'for the resized maps')
  print(f'{"part":<16}{"seconds":>9}{"share":>8}{"GFLOP":>9}{"GFLOP/s":>9}{"x matmul":>10}')
  total = parts['whole step'][0]
  for name in ('synthesis', 'labelling', 'first layer', 'head', 'vote and JS', 'whole step'):
    seconds, flops = parts[name]
    indent = '  ' if name in ('first layer', 'head', 'vote and JS') else ''
    print(f'{indent + name:<16}{seconds:>9.3f}{seconds / total:>8.0%}{flops / 1e9:>9.1f}'
          f'{flops / 1e9 / seconds:>9.1f}{flops / 1e9 / seconds / rate:>10.2f}')
  print(f'synthesis + labelling = {parts["synthesis"][0] + parts["labelling"][0]:.3f} s '
        f'against the whole step {total:.3f} s')


if __name__ == '__main__':
  main()
