"""DDPM speed and memory at ddpm-segmentation's size, against guided-diffusion in PyTorch in
the same run: the lsun_bedroom.pt architecture (configs/ddpm_segmentation.MODEL_FLAGS:
256 px, 256 channels, 552.8 M parameters) with random weights.

  python benchmarks/ddpm_speed.py                 # about 3-4 minutes on 2 CPU cores
  python benchmarks/ddpm_speed.py --repeats 3 --warmup 1

The weights: guided_diffusion's create_model_and_diffusion (its own random initialisation,
float32: use_fp16 has no CPU kernels), converted to ours by the converter's name map
(convert_weights/ddpm.to_params), so both run the same network. Prints, with this
machine's matmul rate beside them:
  (a) feature extraction, ddpm-segmentation's: an image [1, 256, 256, 3] noised with one
      shared noise to steps 50, 150, 250, the UNet run, output blocks 5, 6, 7, 8, 12 kept.
      Ours: the generator's _features (one compiled pass over the 3 noised copies);
      theirs: FeatureExtractorDDPM's loop (q_sample, model, forward hooks), one pass per
      step under torch.no_grad;
  (b) one ancestral sampling step at t = 999 on a batch of 1: ours (the UNet, then
      Diffusion.p_sample with clip_denoised, compiled) against GaussianDiffusion.p_sample;
  (c) the interpreter's host memory for 40 bedroom-size images in a fresh process: the
      train_interpreter stage's streamed path (features.extract_stores keeps each image's
      native maps; interpreter.train resizes them bilinearly per pixel batch), with
      stand-in maps of the UNet's shapes (the UNet is not run: 40 images x 3 passes would
      take about 70 minutes here; the values do not change the memory), 10 members,
      29 classes, --ram-steps steps; against ddpm-segmentation's feature matrix
      (40 x 256 x 256 x 8448 float32, held whole in host memory).
Each line gives seconds, peak memory (the resident-memory high-water mark during the call,
above the resident memory before it, so memory a library frees and reuses is not seen
again: PyTorch's allocator reuses the pages of its earlier passes; XLA's own figure for
ours too), images or steps per
second, and ours / theirs. Timing: ours is compiled ahead of time (compile seconds shown);
--warmup calls of each side run untimed first (default 0: the PyTorch network has no
compilation, and a 256 px pass takes 14-35 s on 2 shared cores); --repeats timed calls follow.
"""

import argparse
import functools
import os
import resource
import shlex
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

import machine  # pylint: disable=wrong-import-position

from configs import ddpm_segmentation  # pylint: disable=wrong-import-position
from convert_weights import ddpm as convert_ddpm  # pylint: disable=wrong-import-position
from dgan_jax import features  # pylint: disable=wrong-import-position
from dgan_jax import interpreter  # pylint: disable=wrong-import-position
from dgan_jax.generators import checkpoint  # pylint: disable=wrong-import-position
from dgan_jax.generators import ddpm  # pylint: disable=wrong-import-position

STEPS, BLOCKS = ddpm_segmentation.STEPS, ddpm_segmentation.BLOCKS
NUM_IMAGES, NUM_CLASSES = 40, 29   # Bedroom-28's training_number and number_class
PAGE = os.sysconf('SC_PAGE_SIZE')


def rss_bytes() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * PAGE


class PeakRSS:
  """The resident-memory high-water mark while the block runs (sampled every 20 ms), as
  `peak` (absolute) and `extra` (above the resident memory on entry)."""

  def __enter__(self):
    self.start = self.peak = rss_bytes()
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._watch, daemon=True)
    self._thread.start()
    return self

  def _watch(self):
    while not self._done.wait(0.02):
      self.peak = max(self.peak, rss_bytes())

  def __exit__(self, *exc):
    self._done.set()
    self._thread.join()
    self.peak = max(self.peak, rss_bytes())
    self.extra = self.peak - self.start


def timed_calls(call, warmup: int, repeats: int):
  """-> (seconds per call, PeakRSS over the timed calls, the last output)."""
  for _ in range(warmup):
    jax.block_until_ready(call())
  with PeakRSS() as memory:
    start = time.perf_counter()
    for _ in range(repeats):
      out = jax.block_until_ready(call())
    seconds = (time.perf_counter() - start) / repeats
  return seconds, memory, out


def gb(n: float) -> str:
  return f'{n / 1e9:.2f} GB'


def reference_model(torch, script_util):
  """guided_diffusion's model and diffusion for MODEL_FLAGS (parsed by its argparser), in
  float32, evaluation mode."""
  parser = argparse.ArgumentParser()
  defaults = script_util.model_and_diffusion_defaults()
  script_util.add_dict_to_argparser(parser, defaults)
  args = script_util.args_to_dict(
      parser.parse_args(shlex.split(ddpm_segmentation.MODEL_FLAGS)), defaults.keys())
  args['use_fp16'] = False
  torch.manual_seed(0)
  model, diffusion = script_util.create_model_and_diffusion(**args)
  return model.eval(), diffusion


def reference_features(torch, model, diffusion, x, noise):
  """ddpm-segmentation's FeatureExtractorDDPM (share_noise, input_activations false): per
  step the noised image through the model, output_blocks[b]'s outputs kept by hooks."""
  kept = []
  hooks = [model.output_blocks[b].register_forward_hook(
      lambda module, inputs, out: kept.append(out)) for b in BLOCKS]
  try:
    with torch.no_grad():
      for t in STEPS:
        step = torch.tensor([t])
        model(diffusion.q_sample(x, step, noise=noise), diffusion._scale_timesteps(step))  # pylint: disable=protected-access
  finally:
    for h in hooks:
      h.remove()
  return kept


def interpreter_ram(steps: int, dtype: str) -> None:
  """Part (c), run in its own process (its peak RSS is its own)."""
  arch = convert_ddpm.arch_from_flags(convert_ddpm.parse_flags(ddpm_segmentation.MODEL_FLAGS))
  g = object.__new__(ddpm.DDPMGenerator)   # the specs need the arch only, not 552 M weights
  g.arch = arch
  g.select_features(STEPS, BLOCKS)
  specs = g.feature_specs
  layout = features.FeatureLayout.create([s.shape for s in specs],
                                         [s.channels for s in specs], (256, 256))
  start_rss = rss_bytes()
  maps_fn = jax.jit(lambda key: [jax.random.normal(jax.random.fold_in(key, j),
                                                   (1, s.height, s.width, s.channels))
                                 for j, s in enumerate(specs)])

  def synthesize(i):
    return jnp.zeros((1, 256, 256, 3)), maps_fn(jax.random.key(i))

  start = time.perf_counter()
  stores, _, _ = features.extract_stores(synthesize, NUM_IMAGES, layout, jnp.dtype(dtype),
                                         progress=False)
  stored_seconds = time.perf_counter() - start
  stored_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  labels = jnp.asarray(np.random.RandomState(0).randint(0, NUM_CLASSES,
                                                        (NUM_IMAGES, 256, 256)), jnp.uint8)
  data = interpreter.TrainData(stores, labels, layout)
  options = interpreter.TrainOptions(num_steps=steps, log_every=steps)
  start = time.perf_counter()
  result = interpreter.train(data, interpreter.InterpreterArch(layout.dim, NUM_CLASSES, 10),
                             options, seed=0, progress=False)
  train_seconds = time.perf_counter() - start
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  theirs = NUM_IMAGES * 256 * 256 * layout.dim * 4
  stored = layout.bytes_per_image(jnp.dtype(dtype))
  print(f'(c) interpreter, {NUM_IMAGES} bedroom-size images (D = {layout.dim}), feature_dtype '
        f'{dtype}: stored native maps {gb(stored * NUM_IMAGES)} ({gb(stored)} per image, '
        f'written in {stored_seconds:.1f} s), '
        f'{steps} training steps in {train_seconds:.1f} s '
        f'({result["pixels_per_second"]:,.0f} member-pixels/s); process peak RSS {gb(stored_peak)} '
        f'once the maps are stored, {gb(peak)} after training '
        f'(at start {gb(start_rss)}); ddpm-segmentation\'s feature matrix {gb(theirs)}: '
        f'ours is {peak / theirs:.3f}x (target <= 4 GB)')


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--repeats', type=int, default=1)
  parser.add_argument('--warmup', type=int, default=0)
  parser.add_argument('--ram-steps', type=int, default=20)
  parser.add_argument('--part', choices=('all', 'speed', 'ram'), default='all')
  parser.add_argument('--feature-dtype', choices=('float32', 'bfloat16'), default='float32',
                      help='--part=ram: config.interpreter.feature_dtype')
  args = parser.parse_args()
  if args.part == 'ram':
    interpreter_ram(args.ram_steps, args.feature_dtype)
    return
  import torch  # pylint: disable=import-outside-toplevel
  from guided_diffusion import script_util  # pylint: disable=import-outside-toplevel

  print(f'{jax.device_count()} {jax.default_backend()} device(s), {os.cpu_count()} cores, '
        f'torch {torch.__version__} with {torch.get_num_threads()} threads; matmul '
        f'{machine.matmul_gflops():.0f} GFLOP/s')
  if args.part == 'all':
    sys.stdout.flush()
    for dtype in ('float32', 'bfloat16'):
      subprocess.run([sys.executable, os.path.abspath(__file__), '--part=ram',
                      f'--ram-steps={args.ram_steps}', f'--feature-dtype={dtype}'], check=True)

  start = time.perf_counter()
  model, diffusion = reference_model(torch, script_util)
  arch = convert_ddpm.arch_from_flags(convert_ddpm.parse_flags(ddpm_segmentation.MODEL_FLAGS))
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  convert_ddpm.check_state(state, arch, 'guided_diffusion')
  g = ddpm.DDPMGenerator(arch, checkpoint.unflatten(convert_ddpm.to_params(state)))
  del state
  count = sum(p.numel() for p in model.parameters())
  print(f'lsun_bedroom architecture: {arch.image_size} px, {count / 1e6:.1f} M parameters, '
        f'random weights (guided_diffusion\'s initialisation, converted) in '
        f'{time.perf_counter() - start:.1f} s')

  rng = np.random.RandomState(0)
  image = rng.uniform(-1, 1, (1, 256, 256, 3)).astype(np.float32)
  noise = rng.standard_normal((1, 256, 256, 3)).astype(np.float32)
  step_noise = rng.standard_normal((1, 256, 256, 3)).astype(np.float32)
  x_nchw, noise_nchw = (torch.from_numpy(a.transpose(0, 3, 1, 2).copy()) for a in (image, noise))

  # (a) feature extraction.
  feature_fn = jax.jit(functools.partial(g._features, steps=STEPS, blocks=BLOCKS))  # pylint: disable=protected-access
  inputs = (g.params, jnp.asarray(image), jnp.asarray(noise))
  start = time.perf_counter()
  compiled = feature_fn.lower(*inputs).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  ours_s, ours_mem, ours_maps = timed_calls(lambda: compiled(*inputs), args.warmup,
                                            args.repeats)
  theirs_s, theirs_mem, their_maps = timed_calls(
      lambda: reference_features(torch, model, diffusion, x_nchw, noise_nchw), args.warmup,
      args.repeats)
  error = max(float(np.abs(np.asarray(o) - t.numpy().transpose(0, 2, 3, 1)).max()
                    / np.ptp(t.numpy())) for o, t in zip(ours_maps, their_maps))
  print(f'(a) features (3 steps, blocks {",".join(map(str, BLOCKS))}, 1 image): ours '
        f'{ours_s:.1f} s ({1 / ours_s:.3f} images/s; compile {compile_s:.1f} s; peak +'
        f'{gb(ours_mem.extra)}, XLA temporaries {gb(memory.temp_size_in_bytes)}), '
        f'guided-diffusion {theirs_s:.1f} s ({1 / theirs_s:.3f} images/s; peak +'
        f'{gb(theirs_mem.extra)}): ours is {theirs_s / ours_s:.2f}x theirs; maps agree within '
        f'{error:.1e} of range')
  del ours_maps, their_maps

  # (b) one ancestral step at t = 999.
  process = g.diffusion('')

  def one_step(params, x, step_noise):
    t = jnp.full((1,), process.num_steps - 1, jnp.int32)
    out, _ = g._unet(params, x, process.model_timesteps(t))  # pylint: disable=protected-access
    return process.p_sample(out, x, t, step_noise, clip_denoised=True)

  step_inputs = (g.params, jnp.asarray(noise), jnp.asarray(step_noise))
  start = time.perf_counter()
  step = jax.jit(one_step).lower(*step_inputs).compile()
  compile_s = time.perf_counter() - start
  ours_s, ours_mem, _ = timed_calls(lambda: step(*step_inputs), args.warmup, args.repeats)

  def their_step():
    with torch.no_grad():
      return diffusion.p_sample(model, noise_nchw, torch.tensor([999]), clip_denoised=True)

  theirs_s, theirs_mem, _ = timed_calls(their_step, args.warmup, args.repeats)
  print(f'(b) one sampling step (batch 1): ours {ours_s:.1f} s ({1 / ours_s:.3f} steps/s; '
        f'compile {compile_s:.1f} s; peak +{gb(ours_mem.extra)}), guided-diffusion '
        f'{theirs_s:.1f} s ({1 / theirs_s:.3f} steps/s; peak +{gb(theirs_mem.extra)}): ours '
        f'is {theirs_s / ours_s:.2f}x theirs; a 1000-step DatasetDDPM sample: ours '
        f'{1000 * ours_s / 3600:.1f} h, theirs {1000 * theirs_s / 3600:.1f} h on this CPU')
  print(f'peak RSS of this process {gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}')


if __name__ == '__main__':
  main()
