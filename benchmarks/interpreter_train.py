"""Interpreter training at the car model's size: peak host memory and pixels per second.

  python benchmarks/interpreter_train.py            # about 2-4 minutes on 2 CPU cores
  python benchmarks/interpreter_train.py --steps 500 --rounds 5 --feature-dtype bfloat16

The car configuration of DatasetGAN with random weights: a 512 px StyleGAN (v1)
(fmap_base 8192, fmap_max 512: 5056 feature values per pixel), 16 annotated images whose
features are resized to 512x512 and cropped to rows 64:448 (384x512), 20 classes (masks:
brightness bands of the regenerated images), 10 members, 64 pixels per member per step.

Prints, on the default JAX backend:
  * feature preparation seconds per annotated image (native maps only; the first,
    compiling image excluded),
  * training pixels/s of interpreter.train's compiled step for the 10-member ensemble
    (every member's pixels counted) and per member, and of one member trained alone (as
    the original trains them one by one),
  * this machine's float32 matmul rate (jitted 2048x2048 @ 2048x2048), measured before
    and after each window of training steps in this run (the machine may be shared: each
    round is compared with its own matmul rate), and the training step's useful FLOP
    rate as a fraction of it. Useful FLOPs per member-pixel: 2*D*H1 for the first layer's
    forward and as much for its weight gradient (its input gradient is never needed),
    3 * 2 * (H1*H2 + H2*C) for the two small layers;
  * the original's training loop in the same run, re-implemented in PyTorch (skipped
    without torch): its pixel_classifier, Linear(D,128)-ReLU-BatchNorm1d(128)-
    Linear(128,32)-ReLU-BatchNorm1d(32)-Linear(32,C), trained by Adam (lr 1e-3) on
    cross-entropy, one member at a time, on batches of 64 rows that a shuffling DataLoader
    draws from a float32 [pixels, D] matrix in host memory, as its prepare_data lays the
    features out (a random pool of --original-pool pixels here: the original holds all
    3.1M, 63 GB);
  * peak resident host memory (ru_maxrss) of the whole run;
  * with --ablations, where the ensemble step's time goes: the same step with Adam
    replaced by plain SGD (one elementwise pass over the weights), and with the pixel
    gather replaced by a broadcast, against the step itself, in alternating windows; and
    the floor that memory bandwidth sets on Adam: the bytes it must read and write over the
    first layer (gradient, two moments, weights) over the bandwidth of a * x + y on arrays
    of the same size, measured here;
  * with --shared-pixels, the ensemble with config.interpreter.shared_pixels (one pixel
    batch for all members, gathered once) against the default and the original.
Targets (issues 3 and 16): <= 4 s per image, <= 4 GB peak RSS, per-member throughput >= 2x
the original's measured in the same run, training FLOP rate >= 0.5x the matmul rate.
"""

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

import machine  # pylint: disable=wrong-import-position

from dgan_jax import features  # pylint: disable=wrong-import-position
from dgan_jax import interpreter  # pylint: disable=wrong-import-position
from dgan_jax import latents  # pylint: disable=wrong-import-position
from dgan_jax import parallel  # pylint: disable=wrong-import-position
from dgan_jax.data import synthetic  # pylint: disable=wrong-import-position
from dgan_jax.generators import style  # pylint: disable=wrong-import-position
from dgan_jax.generators import stylegan1  # pylint: disable=wrong-import-position

NUM_CLASSES = 20


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def matmul_gflops(repeats: int = 3) -> float:
  """Best of `repeats` timings of 5 jitted float32 2048x2048 matmuls."""
  a = jax.random.normal(jax.random.key(0), (2048, 2048), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(5):
      out = f(a, a)
    out.block_until_ready()
    best = min(best, (time.perf_counter() - start) / 5)
  return 2 * 2048 ** 3 / best / 1e9


def flops_per_member_pixel(arch: interpreter.InterpreterArch) -> float:
  h1, h2 = arch.hidden
  return 2 * 2 * arch.feature_dim * h1 + 3 * 2 * (h1 * h2 + h2 * arch.num_classes)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--images', type=int, default=16)
  parser.add_argument('--members', type=int, default=10)
  parser.add_argument('--steps', type=int, default=200, help='training steps per window')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--feature-dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--original-pool', type=int, default=100_000,
                      help="pixels in the original's host feature matrix (4 bytes x D each)")
  parser.add_argument('--ablations', action='store_true',
                      help="also time the step without Adam and without the gather")
  parser.add_argument('--shared-pixels', action='store_true',
                      help='also time the ensemble with config.interpreter.shared_pixels')
  args = parser.parse_args()
  print(f'backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), '
        f'{jax.device_count()} device(s)')

  arch = stylegan1.StyleGAN1Arch(resolution=512, fmap_base=8192, fmap_max=512)
  g = stylegan1.StyleGAN1Generator(arch, stylegan1.init_params(arch, jax.random.key(0)),
                                   const_noise=style.draw_const_noise(arch, 0))
  g.avg_latent = jnp.mean(g.map(np.random.RandomState(0).standard_normal((256, 512))), axis=0)
  layout = features.FeatureLayout.create([(r, r) for r in arch.resolutions for _ in range(2)],
                                         arch.feature_channels, (512, 512), (64, 448))
  z = np.asarray(latents.sample_z(0, np.arange(args.images)))
  dtype = jnp.dtype(args.feature_dtype)
  print(f'car layout: D = {layout.dim}, grid {layout.output_shape}, '
        f'{layout.bytes_per_image(dtype) / 1e6:.1f} MB of native maps kept per image '
        f'({args.feature_dtype})')

  def synthesize(i):
    return g.synthesize(g.truncate(g.map(z[i:i + 1]), 0.7, 8), noise='const')

  start = time.perf_counter()
  stores, images, seconds_per_image = features.extract_stores(synthesize, args.images, layout,
                                                              dtype, progress=False)
  print(f'feature preparation: {seconds_per_image:.2f} s per image '
        f'({time.perf_counter() - start:.1f} s for {args.images} incl. compilation); '
        f'target <= 4 s')
  g = None   # its weights are not needed past here
  labels = jnp.asarray(synthetic.brightness_masks(images, NUM_CLASSES))
  data = interpreter.TrainData(stores, labels, layout)
  print(f'peak RSS after features: {peak_rss_gb():.2f} GB')

  interpreter._keep_freed_memory()  # pylint: disable=protected-access  (as train() does)
  rounds = []
  steppers = {m: Stepper(data, layout, m) for m in (args.members, 1)}
  steppers['one per call'] = Stepper(data, layout, args.members, steps_per_call=1)
  ours_peak_rss = peak_rss_gb()   # before the original's feature matrix exists
  original = OriginalLoop(layout.dim, NUM_CLASSES, args.original_pool)
  for _ in range(args.rounds):
    before = matmul_gflops()
    rates = {m: stepper.pixels_per_second(args.steps) for m, stepper in steppers.items()}
    rates['original'] = original.pixels_per_second(args.steps)
    rounds.append((max(before, matmul_gflops()), rates[args.members], rates[1],
                   rates['original'], rates['one per call']))
  flops = flops_per_member_pixel(steppers[args.members].arch)
  per_call = steppers[args.members].steps_per_call
  print(f'{args.rounds} rounds of (matmul, {args.steps} steps each of: the ensemble, one '
        "member, the original's loop, the ensemble at one step per call; matmul); the "
        'machine may be shared, so each round compares with its own matmul and its own '
        f'original. Ours run {per_call} steps per call (interpreter.steps_per_call):')
  for i, (matmul, total, alone, theirs, single) in enumerate(rounds):
    print(f'  round {i}: matmul {matmul:.0f} GFLOP/s | ensemble {total:,.0f} member-px/s = '
          f'{total * flops / 1e9 / matmul:.2f} x matmul | one member {alone:,.0f} px/s | '
          f'original {theirs:,.0f} px/s | ratios {total / theirs:.2f}x, {alone / theirs:.2f}x'
          f' | ensemble at one step per call {single:,.0f} member-px/s '
          f'({per_call} per call: {total / single:.2f}x faster)')
  matmul, total, alone, theirs, _ = max(rounds, key=lambda r: r[1] / r[3])
  print(f'best round, matmul {matmul:.0f} GFLOP/s (float32 2048^3, jitted):')
  print(f"  the original's loop (PyTorch {original.version}, {original.threads} threads, "
        f'pool {args.original_pool:,} px): {theirs:,.0f} pixels/s, '
        f'{theirs * flops / 1e9 / matmul:.2f} x matmul')
  print(f'  ensemble of {args.members}, batch 64 per member: {total:,.0f} member-pixels/s total,'
        f' {total / args.members:,.0f} per member; {total * flops / 1e9:.0f} GFLOP/s = '
        f'{total * flops / 1e9 / matmul:.2f} x matmul; {total / theirs:.2f} x the original '
        '(target >= 2x; 0.5x matmul)')
  print(f'  one member alone, batch 64: {alone:,.0f} pixels/s; {alone * flops / 1e9:.0f} GFLOP/s'
        f' = {alone * flops / 1e9 / matmul:.2f} x matmul; {alone / theirs:.2f} x the original')
  print(f'peak RSS: {ours_peak_rss:.2f} GB before the original\'s loop was built (target <= 4 GB;'
        f' the original holds about 95 GB here), {peak_rss_gb():.2f} GB for the whole run')
  if args.ablations:
    ablations(data, layout, steppers[args.members], args.members, args.steps, args.rounds)
  if args.shared_pixels:
    shared_pixels(data, layout, steppers[args.members], original, args.members, args.steps,
                  args.rounds, flops)


def shared_pixels(data, layout, full: 'Stepper', original: 'OriginalLoop', members: int,
                  steps: int, rounds: int, flops: float) -> None:
  """The ensemble with config.interpreter.shared_pixels against the default and the
  original, in alternating windows."""
  shared = Stepper(data, layout, members, shared_pixels=True)
  print('config.interpreter.shared_pixels (every member on one pixel batch per step):')
  for i in range(rounds):
    matmul = matmul_gflops()
    rate = {name: stepper.pixels_per_second(steps)
            for name, stepper in (('default', full), ('shared', shared))}
    theirs = original.pixels_per_second(steps)
    print(f'  round {i}: matmul {matmul:.0f} GFLOP/s | shared {rate["shared"]:,.0f} member-px/s'
          f' = {rate["shared"] * flops / 1e9 / matmul:.2f} x matmul, '
          f'{rate["shared"] / theirs:.2f}x the original ({theirs:,.0f} px/s) | default '
          f'{rate["default"]:,.0f} ({rate["default"] / theirs:.2f}x) | shared / default '
          f'{rate["shared"] / rate["default"]:.2f}x')


def ablations(data, layout, full: 'Stepper', members: int, steps: int, rounds: int) -> None:
  """The step against itself without Adam (SGD) and without the gather, alternating."""
  import optax  # pylint: disable=import-outside-toplevel
  originals = interpreter._optimizer, features.pixel_features  # pylint: disable=protected-access

  def broadcast(stores, tables, image, y, x):   # the gather's shape, one row read
    del tables, y, x
    return jnp.broadcast_to(stores[-1][0, 0, 0, :1], image.shape + (layout.dim,)) + 0.0

  try:
    interpreter._optimizer = optax.sgd   # pylint: disable=protected-access
    no_adam = Stepper(data, layout, members)
    interpreter._optimizer = originals[0]   # pylint: disable=protected-access
    features.pixel_features = broadcast
    no_gather = Stepper(data, layout, members)
  finally:
    interpreter._optimizer, features.pixel_features = originals  # pylint: disable=protected-access
  best = {'the step': 0.0, 'Adam -> SGD': 0.0, 'gather -> broadcast': 0.0}
  for _ in range(rounds):
    for name, stepper in zip(best, (full, no_adam, no_gather)):
      best[name] = max(best[name], stepper.pixels_per_second(steps))
  milliseconds = {k: members * 64 / v * 1e3 for k, v in best.items()}
  print('where the ensemble step goes (best of the rounds, ms per step):')
  for name, ms in milliseconds.items():
    saved = milliseconds['the step'] - ms
    print(f'  {name}: {ms:.2f} ms' + (f' ({saved:.2f} ms less)' if saved else ''))
  weights = int(np.prod(full.state['params']['linear0']['weight'].shape))
  bandwidth = machine.bandwidth_bytes_per_second(weights)
  floor = 7 * 4 * weights / bandwidth * 1e3
  print(f"  Adam's floor: gradient, moments and weights of the first layer read and moments "
        f'and weights written, 7 x {4 * weights / 1e6:.1f} MB = {7 * 4 * weights / 1e6:.0f} MB '
        f'per step at {bandwidth / 1e9:.1f} GB/s (a * x + y, same size) = {floor:.2f} ms; SGD '
        f'needs '
        f'3 x {4 * weights / 1e6:.1f} MB = {3 * 4 * weights / bandwidth * 1e3:.2f} ms')


class Stepper:
  """interpreter.train's compiled steps and state, timed over windows of steps, in calls
  of steps_per_call steps (default: TrainOptions')."""

  def __init__(self, data, layout, members, shared_pixels: bool = False,
               steps_per_call: int | None = None):
    self.arch = interpreter.InterpreterArch(layout.dim, NUM_CLASSES, members)
    options = interpreter.TrainOptions(num_steps=1, shared_pixels=shared_pixels)
    self.steps_per_call = steps_per_call or options.steps_per_call
    mesh = parallel.make_mesh()
    steps_per_epoch = data.num_pixels // options.batch_size
    self.step = interpreter._make_train_step(  # pylint: disable=protected-access
        self.arch, options, layout, mesh, 'members', steps_per_epoch, freeze_stopped=False)
    self.state = jax.device_put(interpreter.init_state(self.arch, options, seed=0))
    self.permutation = jax.device_put(interpreter.pixel_permutations(
        0, 0, members, data.num_pixels, options.batch_size))
    self.data = data
    self.pixels_per_second(2 * self.steps_per_call)  # compile

  def pixels_per_second(self, steps: int) -> float:
    """Over `steps` rounded up to whole calls."""
    calls = -(-steps // self.steps_per_call)
    count = np.int32(self.steps_per_call)
    start = time.perf_counter()
    for _ in range(calls):
      self.state, metrics = self.step(self.state, self.data.stores, self.data.labels,
                                      self.permutation, count)
    jax.block_until_ready(metrics)
    return (calls * self.steps_per_call * self.arch.num_members * 64
            / (time.perf_counter() - start))


class OriginalLoop:
  """The original's interpreter training loop (see the module docstring) in PyTorch."""

  def __init__(self, dim: int, num_classes: int, pool: int, seed: int = 0):
    import torch  # pylint: disable=import-outside-toplevel
    from torch import nn  # pylint: disable=import-outside-toplevel
    torch.manual_seed(seed)
    self.torch, self.version, self.threads = torch, torch.__version__, torch.get_num_threads()
    features = torch.randn(pool, dim)   # float32, row-major: one pixel's D values per row
    labels = torch.randint(0, num_classes, (pool,))
    self.loader = torch.utils.data.DataLoader(_Rows(features, labels), batch_size=64,
                                              shuffle=True, drop_last=True)
    self.batches = iter(())
    self.model = nn.Sequential(
        nn.Linear(dim, 128), nn.ReLU(), nn.BatchNorm1d(128),
        nn.Linear(128, 32), nn.ReLU(), nn.BatchNorm1d(32),
        nn.Linear(32, num_classes))
    self.model.train()
    self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
    self.loss = nn.CrossEntropyLoss()
    self.pixels_per_second(2)

  def _next_batch(self):
    try:
      return next(self.batches)
    except StopIteration:
      self.batches = iter(self.loader)
      return next(self.batches)

  def pixels_per_second(self, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      x, y = self._next_batch()
      self.optimizer.zero_grad()
      logits = self.model(x)
      loss = self.loss(logits, y.long())
      (self.torch.softmax(logits, 1).argmax(1) == y).float().mean()  # its logged accuracy
      loss.backward()
      self.optimizer.step()
    return steps * 64 / (time.perf_counter() - start)


class _Rows:
  """A map-style dataset of (feature row, label): what the DataLoader indexes per pixel."""

  def __init__(self, features, labels):
    self.features, self.labels = features, labels

  def __getitem__(self, index):
    return self.features[index], self.labels[index]

  def __len__(self):
    return len(self.features)


if __name__ == '__main__':
  main()
