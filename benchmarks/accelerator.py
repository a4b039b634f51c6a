"""The speed figures of the other benchmarks at real size on whatever `jax.devices()`
offers (GPU, TPU or CPU), each with its share of the chip's peak:

  interpreter  the MLP ensemble's training step: car layout (5,056 channels, 384x512 px),
               10 members x 64 pixels, 20 classes                 (interpreter_train.py)
  generate     the compiled generate step: 512 px StyleGAN (v1) + 10 members, car size
                                                                  (generate_throughput.py)
  deeplab      DeepLabV3-ResNet-101 train step and evaluation, 512 px, batch 2 per device
                                                                  (downstream_throughput.py)

  python benchmarks/accelerator.py                 # real sizes, bfloat16 compute
  python benchmarks/accelerator.py --dtype=float32
  python benchmarks/accelerator.py --small         # tiny sizes: checks the script on a CPU

Per step it prints seconds, throughput, XLA's FLOP and byte counts, the model FLOP
utilisation (FLOP/s over the chip's bfloat16 peak: its data sheet's dense figure for known
chips, else the matmul rate measured here) and the share of the memory bandwidth (bytes/s
over the data sheet's, else a donated a * x + y measured here). The interpreter's first layer is
gather-bound, so its bandwidth share is the figure to read; the others are matmul-bound.
XLA's "bytes accessed" counts every operand read and written, including what caches
serve, so a share above 1 means reuse from cache (common on CPUs), not a wrong clock.
No part starts after --budget seconds (default 420), so the run ends within 8 minutes.
VQGAN's sampler at the ImageNet size: `python benchmarks/vqgan_speed.py --size=imagenet`.
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

import generate_throughput  # pylint: disable=wrong-import-position
import interpreter_train  # pylint: disable=wrong-import-position
import machine  # pylint: disable=wrong-import-position
from dgan_jax import config as config_lib  # pylint: disable=wrong-import-position
from dgan_jax import factory as factory_lib  # pylint: disable=wrong-import-position
from dgan_jax import features  # pylint: disable=wrong-import-position
from dgan_jax import interpreter  # pylint: disable=wrong-import-position
from dgan_jax import parallel  # pylint: disable=wrong-import-position
from dgan_jax.downstream import deeplab  # pylint: disable=wrong-import-position
from dgan_jax.downstream import evaluate  # pylint: disable=wrong-import-position
from dgan_jax.downstream import train  # pylint: disable=wrong-import-position
from dgan_jax.generators import style  # pylint: disable=wrong-import-position
from dgan_jax.generators import stylegan1  # pylint: disable=wrong-import-position

# Data-sheet peaks: (dense bfloat16 FLOP/s, memory bytes/s), matched in device_kind.
PEAKS = {'H200': (989e12, 4.8e12), 'H100': (989e12, 3.35e12), 'A100': (312e12, 2.0e12),
         'L4': (121e12, 0.3e12), 'TPU v6': (918e12, 1.64e12), 'TPU v5p': (459e12, 2.76e12),
         'TPU v5': (197e12, 0.82e12), 'TPU v4': (275e12, 1.2e12)}
NUM_CLASSES, NUM_MEMBERS = 20, 10


def matmul_flops(dtype) -> float:
  """Matmul FLOP/s in `dtype` (float32 on a CPU, where bfloat16 is emulated) measured on
  the default device."""
  on_cpu = jax.default_backend() == 'cpu'
  n = 2048 if on_cpu else 4096
  a = jnp.ones((n, n), jnp.float32 if on_cpu else dtype)
  return 2 * n ** 3 / machine.timed(jax.jit(lambda x: x @ x), (a,), 5).seconds


class Report:
  def __init__(self, peak_flops: float, peak_bytes: float):
    self.peak_flops, self.peak_bytes = peak_flops, peak_bytes

  def line(self, name: str, seconds: float, throughput: str, flops: float, moved: float,
           note: str = ''):
    print(f'{name}: {seconds:.4f} s, {throughput}; {flops / 1e9:,.1f} GFLOP, '
          f'{moved / 1e9:,.2f} GB moved; MFU {flops / seconds / self.peak_flops:.3f}, '
          f'bandwidth {moved / seconds / self.peak_bytes:.3f}{note}', flush=True)


def run_interpreter(report: Report, small: bool, dtype, repeats: int):
  """The ensemble step on random native maps of the car layout (what features.extract_stores
  keeps), with interpreter_train.py's Stepper."""
  if small:
    shapes, channels, size, rows = [(8, 8), (16, 16), (32, 32)], [64, 32, 16], (32, 32), ()
  else:
    arch = stylegan1.StyleGAN1Arch(resolution=512, fmap_base=8192, fmap_max=512)
    shapes = [(r, r) for r in arch.resolutions for _ in range(2)]
    channels, size, rows = arch.feature_channels, (512, 512), (64, 448)
  layout = features.FeatureLayout.create(shapes, channels, size, rows)
  count = 16
  keys = jax.random.split(jax.random.key(0), len(layout.kept_shapes))
  stores = [jax.random.normal(k, (count,) + s, dtype) for k, s in zip(keys, layout.kept_shapes)]
  labels = jax.random.randint(jax.random.key(1), (count,) + layout.output_shape, 0,
                              NUM_CLASSES).astype(jnp.uint8)
  stepper = interpreter_train.Stepper(interpreter.TrainData(stores, labels, layout), layout,
                                      NUM_MEMBERS)
  per_call = stepper.steps_per_call   # as interpreter.train runs them
  timing = machine.timed(stepper.step, (stepper.state, stores, labels, stepper.permutation,
                                        np.int32(per_call)), repeats * 2, carry=True)
  seconds = timing.seconds / per_call
  analytic = interpreter_train.flops_per_member_pixel(stepper.arch) * NUM_MEMBERS * 64
  report.line(f'interpreter step (D={layout.dim}, {NUM_MEMBERS} members x 64 px, maps '
              f'{jnp.dtype(dtype).name}, {per_call} steps per call)', seconds,
              f'{NUM_MEMBERS * 64 / seconds:,.0f} member-px/s', analytic,
              timing.bytes_accessed, f' (XLA counts {timing.flops / 1e9:.1f} GFLOP: the '
              "loop's body once)")


def run_generate(report: Report, small: bool, dtype, repeats: int):
  """The compiled generate step, one image per call, as generate_throughput.py times it."""
  if small:
    arch = stylegan1.StyleGAN1Arch(resolution=32, fmap_base=128, fmap_max=32)
    g = stylegan1.StyleGAN1Generator(arch, stylegan1.init_params(arch, jax.random.key(0)),
                                     const_noise=style.draw_const_noise(arch, 0), dtype=dtype)
    g.avg_latent = np.zeros(arch.dlatent_size, np.float32)
    data = {'feature_size': (32, 32), 'crop_rows': (4, 28)}
  else:
    g = generate_throughput._car_generator(dtype=dtype)   # pylint: disable=protected-access
    data = {'feature_size': generate_throughput.FEATURE_SIZE,
            'crop_rows': generate_throughput.CROP_ROWS}
  import ml_collections  # pylint: disable=import-outside-toplevel
  layout = features.layout_for(g, ml_collections.ConfigDict(data))
  arch = interpreter.InterpreterArch(layout.dim, NUM_CLASSES, NUM_MEMBERS)
  params, stats = interpreter.init(arch, jax.random.key(1))
  labeler = interpreter.Labeler(arch, variables={'params': params, 'batch_stats': stats})
  factory = factory_lib.Factory(g, g.sampling(config_lib.base()), labeler, layout,
                                chunk_rows=32)
  step = factory._step(True, 'labels')   # pylint: disable=protected-access
  batch = np.arange(factory.num_devices, dtype=np.uint32)
  timing = machine.timed(step, (factory._generator_variables,   # pylint: disable=protected-access
                                labeler.variables, batch), repeats)
  seconds, flops, moved = timing.seconds, timing.flops, timing.bytes_accessed
  report.line(f'generate step ({layout.output_shape[0]}x{layout.output_shape[1]} px, '
              f'D={layout.dim}, {NUM_MEMBERS} members, generator {jnp.dtype(dtype).name}, '
              f'{len(batch)} image(s) per call)', seconds,
              f'{len(batch) / seconds:.2f} images/s', flops, moved,
              " (XLA counts a lax.map body once: FLOPs and MFU are lower bounds)")


def run_deeplab(report: Report, small: bool, dtype, repeats: int):
  depth, resolution = (50, 64) if small else (101, 512)
  stages = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
  mesh = parallel.make_mesh(scope='global')
  batch = 2 * mesh.size
  arch = deeplab.DeepLabArch(num_classes=NUM_CLASSES, stage_sizes=stages)
  options = train.TrainOptions(batch_size=batch, resolution=resolution,
                               dtype=jnp.dtype(dtype).name)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(parallel.DATA_AXIS))
  state = jax.device_put(train.init_state(arch, options, 0), replicated)
  rng = np.random.default_rng(0)
  images, labels = jax.device_put(
      (rng.integers(0, 256, (batch, resolution, resolution, 3), dtype=np.uint8),
       rng.integers(0, NUM_CLASSES, (batch, resolution, resolution)).astype(np.uint8)), split)
  model = deeplab.DeepLabV3(arch, train.DTYPES[options.dtype])
  step = train.make_train_step(model, options, 0)
  t = machine.timed(step, (state, images, labels), repeats, carry=True)
  report.line(f'DeepLabV3-ResNet-{depth} train step ({resolution} px, batch {batch}, '
              f'{options.dtype})', t.seconds, f'{batch / t.seconds:.2f} images/s', t.flops,
              t.bytes_accessed)
  state = jax.device_put(train.init_state(arch, options, 0), replicated)
  predict = evaluate.make_predict(model)
  variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
  t = machine.timed(predict, (variables, images, labels), repeats)
  report.line(f'DeepLabV3-ResNet-{depth} evaluation ({resolution} px, batch {batch})',
              t.seconds, f'{batch / t.seconds:.2f} images/s', t.flops, t.bytes_accessed)


PARTS = {'interpreter': run_interpreter, 'generate': run_generate, 'deeplab': run_deeplab}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--small', action='store_true', help='tiny sizes (a CPU check)')
  parser.add_argument('--dtype', choices=('bfloat16', 'float32'), default='bfloat16')
  parser.add_argument('--parts', default=','.join(PARTS))
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--budget', type=float, default=420,
                      help='seconds after which no further part starts')
  args = parser.parse_args()
  start = time.perf_counter()
  dtype = jnp.dtype(args.dtype)
  device = jax.devices()[0]
  matmul, bandwidth = matmul_flops(dtype), machine.bandwidth_bytes_per_second()
  sheet = next((v for k, v in PEAKS.items() if k in device.device_kind), None)
  peak_flops, peak_bytes = sheet or (matmul, bandwidth)
  print(f'{jax.device_count()} x {device.device_kind} ({jax.default_backend()}); measured '
        f'{"float32" if jax.default_backend() == "cpu" else args.dtype} matmul '
        f'{matmul / 1e12:.2f} TFLOP/s, a * x + y {bandwidth / 1e9:.0f} GB/s; peaks '
        f'used: {peak_flops / 1e12:.1f} TFLOP/s, {peak_bytes / 1e9:.0f} GB/s '
        f'({"data sheet" if sheet else "measured here"})', flush=True)
  report = Report(peak_flops, peak_bytes)
  for name in args.parts.split(','):
    if time.perf_counter() - start > args.budget:
      print(f'{name}: not started, past --budget {args.budget:.0f} s')
      continue
    PARTS[name](report, args.small, dtype, args.repeats)
  print(f'total {time.perf_counter() - start:.0f} s; peak RSS '
        f'{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB')


if __name__ == '__main__':
  main()
