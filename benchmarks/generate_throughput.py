"""Labeling throughput of the generate step for the car-sized configuration, next to the
original's per-image loop, measured in the same run.

Car-sized: StyleGAN (v1) 512 px (fmap_base 8192, fmap_max 512: 16 maps, 5056 channels),
and StyleGAN2 config-f 512 px (channel_base 32768, channel_max 512: 15 maps, 5504
channels; the LSUN car model's size), random weights; features resized to 512x512 and cropped to rows 64:448 (384x512 =
196,608 pixels); 10 members, 20 classes.

  ours      the compiled factory step, one row per generator, (dgan_jax.factory.Factory): the first layer folded
            into the native maps, chunked rows, majority vote and JS inside.
  original  the original's per-image procedure, re-implemented in PyTorch on this CPU:
            each map upsampled (bilinear, align_corners=False) to 512x512, concatenated
            to [5056, 512, 512], cropped, then each member's MLP on all 196,608 pixels,
            softmax, the JS divergence across members and the per-pixel mode.

  --against REF  also this benchmark's own step as the commit REF had it (its dgan_jax
            and this script from `git archive REF`), in the same run: the ratio shows
            whether a change slowed the step.

Each runs in its own process so its peak RSS is its own.

  python benchmarks/generate_throughput.py [--images 3] [--skip-original] [--against REF]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

NUM_MEMBERS, NUM_CLASSES = 10, 20
FEATURE_SIZE, CROP_ROWS = (512, 512), (64, 448)


def _car_generator(family: str = 'stylegan1', dtype='float32'):
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from dgan_jax.generators import style  # pylint: disable=import-outside-toplevel
  from dgan_jax.generators import stylegan1  # pylint: disable=import-outside-toplevel
  from dgan_jax.generators import stylegan2  # pylint: disable=import-outside-toplevel
  if family == 'stylegan2':
    module, arch = stylegan2, stylegan2.StyleGAN2Arch(resolution=512)   # config-f
  else:
    module, arch = stylegan1, stylegan1.StyleGAN1Arch(resolution=512, fmap_base=8192,
                                                      fmap_max=512)
  g = module.Generator(arch, module.init_params(arch, jax.random.key(0)),
                       const_noise=style.draw_const_noise(arch, 0), dtype=dtype)
  g.avg_latent = np.zeros(512, np.float32)
  return g


def run_ours(num_images: int, family: str = 'stylegan1') -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from dgan_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from dgan_jax import factory as factory_lib  # pylint: disable=import-outside-toplevel
  from dgan_jax import features as features_lib  # pylint: disable=import-outside-toplevel
  from dgan_jax import interpreter  # pylint: disable=import-outside-toplevel
  g = _car_generator(family)
  data = ml_collections.ConfigDict({'feature_size': FEATURE_SIZE, 'crop_rows': CROP_ROWS})
  layout = features_lib.layout_for(g, data)
  arch = interpreter.InterpreterArch(layout.dim, NUM_CLASSES, NUM_MEMBERS)
  params, stats = interpreter.init(arch, jax.random.key(1))
  labeler = interpreter.Labeler(arch, variables={'params': params, 'batch_stats': stats})
  config = config_lib.base()
  factory = factory_lib.Factory(g, g.sampling(config), labeler, layout,
                                chunk_rows=config.generate.chunk_rows)
  memory = factory.memory_analysis(batch_size=1)
  start = time.time()
  factory(np.arange(1))
  compile_seconds = time.time() - start
  times = []
  for i in range(num_images):
    start = time.time()
    out = factory(np.arange(i + 1, i + 2))
    times.append(time.time() - start)
  assert out['label'].shape == (1, 384, 512)
  return {'seconds_per_image': float(np.median(times)), 'first_call_seconds': compile_seconds,
          'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
          'step_temp_gb': memory['temp_bytes'] / 2**30,
          'step_total_gb': memory['total_bytes'] / 2**30, 'feature_maps': len(layout.channels),
          'feature_channels': layout.dim}


def run_original(num_images: int) -> dict:
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  g = _car_generator()
  channels = g.feature_channels
  hidden = (128, 32)
  torch.manual_seed(0)
  members = []
  for _ in range(NUM_MEMBERS):
    members.append(torch.nn.Sequential(
        torch.nn.Linear(sum(channels), hidden[0]), torch.nn.ReLU(),
        torch.nn.BatchNorm1d(hidden[0]), torch.nn.Linear(hidden[0], hidden[1]),
        torch.nn.ReLU(), torch.nn.BatchNorm1d(hidden[1]),
        torch.nn.Linear(hidden[1], NUM_CLASSES)).eval())
  times = []
  for i in range(num_images):
    z = np.random.RandomState(i).standard_normal((1, 512)).astype(np.float32)
    _, maps = g.synthesize(g.truncate(g.map(z)))      # the generator is not what is timed
    maps = [torch.from_numpy(np.asarray(m)).permute(0, 3, 1, 2) for m in maps]
    start = time.time()
    with torch.no_grad():
      upsampled = torch.cat([F.interpolate(m, size=FEATURE_SIZE, mode='bilinear',
                                           align_corners=False) for m in maps], dim=1)
      upsampled = upsampled[:, :, CROP_ROWS[0]:CROP_ROWS[1]]
      pixels = upsampled[0].reshape(sum(channels), -1).t()          # [196608, 5056]
      probs, labels = [], []
      for member in members:
        logits = torch.cat([member(chunk) for chunk in pixels.split(65536)])
        probs.append(torch.softmax(logits, dim=1))
        labels.append(logits.argmax(dim=1))
      probs = torch.stack(probs)
      mean = probs.mean(0)
      entropy = lambda p: -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
      js = entropy(mean) - entropy(probs).mean(0)
      label = torch.mode(torch.stack(labels), dim=0).values
      k = js.numel() // 10
      score = js.topk(k).values.mean()
    times.append(time.time() - start)
    del upsampled, pixels
  assert label.shape == (384 * 512,) and torch.isfinite(score)
  return {'seconds_per_image': float(np.median(times)),
          'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _in_subprocess(mode: str, num_images: int, script: str = __file__,
                   family: str = 'stylegan1') -> dict:
  family_args = ['--family', family] if family != 'stylegan1' else []
  result = subprocess.run([sys.executable, script, '--mode', mode, '--images',
                           str(num_images), *family_args], capture_output=True, text=True, check=False,
                          cwd=os.path.dirname(os.path.dirname(script)))
  if result.returncode != 0:
    raise RuntimeError(f'{mode} ({script}) failed:\n{result.stderr[-3000:]}')
  return json.loads(result.stdout.strip().splitlines()[-1])


def _at_commit(ref: str, num_images: int) -> dict:
  """This benchmark's own step as commit `ref` had it, run from `git archive ref`."""
  import tempfile  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as tree:
    archive = subprocess.run(['git', '-C', REPO, 'archive', ref, 'dgan_jax', 'benchmarks'],
                             capture_output=True, check=True).stdout
    subprocess.run(['tar', '-x', '-C', tree], input=archive, check=True)
    return _in_subprocess('ours', num_images,
                          os.path.join(tree, 'benchmarks', 'generate_throughput.py'))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--mode', choices=['ours', 'original', 'both'], default='both')
  parser.add_argument('--images', type=int, default=3)
  parser.add_argument('--skip-original', action='store_true')
  parser.add_argument('--against', help='a git commit whose step to time in the same run')
  parser.add_argument('--family', choices=['stylegan1', 'stylegan2'], default='stylegan1',
                      help='(with --mode ours) the generator of that row')
  args = parser.parse_args()
  if args.mode != 'both':
    result = run_ours(args.images, args.family) if args.mode == 'ours' else run_original(
        args.images)
    print(json.dumps(result))
    return
  import jax  # pylint: disable=import-outside-toplevel
  import machine  # pylint: disable=import-outside-toplevel  # benchmarks/machine.py
  print(f'car-sized generate step, {NUM_MEMBERS} members, {NUM_CLASSES} classes, '
        f'384x512 pixels, {jax.devices()[0].platform} x{jax.device_count()}, '
        f'median of {args.images} images; matmul {machine.matmul_gflops():.0f} GFLOP/s')
  for family in ('stylegan1', 'stylegan2'):
    row = _in_subprocess('ours', args.images, family=family)
    print(f"  dgan_jax step, {family} ({row['feature_maps']} maps, {row['feature_channels']} "
          f"channels): {row['seconds_per_image']:.2f} s/image "
          f"({1 / row['seconds_per_image']:.2f} images/s; generator + labels + JS), "
          f"first call incl. compile {row['first_call_seconds']:.1f} s, "
          f"peak RSS {row['peak_rss_gb']:.2f} GB (whole process)")
    print(f"    compiled step memory per image (XLA): {row['step_temp_gb']:.2f} GB "
          f"temporaries, {row['step_total_gb']:.2f} GB with arguments and outputs")
    if family == 'stylegan1':
      ours = row
  if args.against:
    before = _at_commit(args.against, args.images)
    print(f"  the step at {args.against}: {before['seconds_per_image']:.2f} s/image, "
          f"peak RSS {before['peak_rss_gb']:.2f} GB, XLA temporaries "
          f"{before['step_temp_gb']:.2f} GB; now / then: "
          f"{ours['seconds_per_image'] / before['seconds_per_image']:.3f}x time")
  if args.skip_original:
    return
  original = _in_subprocess('original', args.images)
  print(f"  original loop: {original['seconds_per_image']:.2f} s/image "
        f"(labels + JS only, generator excluded), peak RSS {original['peak_rss_gb']:.2f} GB")
  print(f"  speed-up: {original['seconds_per_image'] / ours['seconds_per_image']:.1f}x "
        f"(ours includes the generator, the original's time does not)")


if __name__ == '__main__':
  main()
