"""`python -m dgan_jax.segment` against the evaluate stage's prediction step, the same
DeepLab run and epoch, in the same process: images per second, the ratio, XLA's memory
figures and the process's peak RSS.

  evaluate   `evaluate.predict_all` with `evaluate.make_predictor`'s compiled step over N
             images already at the network's resolution (what the evaluate stage runs on
             its test set), config.evaluate.batch_size a batch
  segment    `segment.segment` on a folder of N PNGs of other sizes: read, resize to the
             network, the same compiled step, masks resized back, mask and overlay PNGs,
             index.html (end to end, what a user waits for)
  network    the segmenter's predict alone on the resized batch (segment minus the files)

By default a run of the config's network (configs/toy.py: toy size) is trained for a few
steps on random images in a temporary workdir (speed does not depend on what it learned);
--workdir=W --run=R times that workdir's run at evaluate's epoch instead (read only).

  python benchmarks/segment_speed.py                       # toy network, CPU (under 2 min)
  python benchmarks/segment_speed.py --config=configs/test.py --images=96
  python benchmarks/segment_speed.py --config=configs/toy.py --workdir=workdirs/toy
"""

import argparse
import dataclasses
import importlib.util
import os
import resource
import shutil
import sys
import tempfile
import time

import jax
import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import machine  # pylint: disable=wrong-import-position  # benchmarks/machine.py

from dgan_jax import parallel  # pylint: disable=wrong-import-position
from dgan_jax import segment as segment_lib  # pylint: disable=wrong-import-position
from dgan_jax.data import images as image_utils  # pylint: disable=wrong-import-position
from dgan_jax.downstream import data as data_lib  # pylint: disable=wrong-import-position
from dgan_jax.downstream import deeplab  # pylint: disable=wrong-import-position
from dgan_jax.downstream import evaluate as evaluate_lib  # pylint: disable=wrong-import-position
from dgan_jax.downstream import metrics  # pylint: disable=wrong-import-position
from dgan_jax.downstream import run as run_lib  # pylint: disable=wrong-import-position
from dgan_jax.downstream import train as train_lib  # pylint: disable=wrong-import-position


def load_config(path: str):
  spec = importlib.util.spec_from_file_location('benchmark_config', os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_quick_run(config, workdir: str, run: str, steps: int) -> int:
  """A run of the config's network trained `steps` steps (one epoch) on random images ->
  its epoch."""
  names, _, palette = run_lib.class_setup(config, workdir)
  arch = run_lib.arch_from_config(config, len(names))
  d = config.downstream
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2 * d.batch_size, d.resolution, d.resolution, 3), np.uint8)
  labels = rng.integers(0, len(names), images.shape[:3]).astype(np.uint8)
  options = run_lib.train_options(config, steps, run)
  options = dataclasses.replace(options, epochs=1)
  train_lib.train(arch, data_lib.ArraySource(list(images), list(labels)), options, config.seed,
                  os.path.join(workdir, 'downstream', run), palette=palette, progress=False,
                  description='segment_speed')
  return 0


def write_photos(folder: str, count: int, resolution: int) -> None:
  """`count` PNGs of five sizes around the network's (so every one is resized)."""
  os.makedirs(folder)
  rng = np.random.default_rng(1)
  sizes = [(int(resolution * a), int(resolution * b))
           for a, b in ((1.5, 1.0), (1.0, 1.5), (2.0, 2.0), (0.75, 1.25), (1.2, 0.8))]
  for i in range(count):
    h, w = sizes[i % len(sizes)]
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((w, h), Image.BILINEAR).save(
        os.path.join(folder, f'photo{i:04d}.png'))


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default='configs/toy.py')
  parser.add_argument('--workdir', default='', help='a trained workdir (default: train a '
                      'run for a few steps in a temporary one)')
  parser.add_argument('--run', default='synthetic')
  parser.add_argument('--images', type=int, default=200)
  parser.add_argument('--train-steps', type=int, default=2)
  parser.add_argument('--repeats', type=int, default=2)
  args = parser.parse_args()

  config = load_config(args.config)
  scratch = tempfile.mkdtemp(prefix='segment_speed_')
  try:
    measure(args, config, scratch)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def measure(args, config, scratch: str) -> None:
  start = time.perf_counter()
  if args.workdir:
    workdir, epoch = os.path.abspath(args.workdir), None
  else:
    workdir = os.path.join(scratch, 'work')
    epoch = train_quick_run(config, workdir, args.run, args.train_steps)
  train_seconds = time.perf_counter() - start
  arch, run_dir, epoch, names, _ = run_lib.trained_run(config, workdir, args.run, epoch)
  batch_size = config.evaluate.batch_size
  r = config.downstream.resolution
  print(f'run {run_dir} epoch {epoch}: {arch.to_json()}, {len(names)} classes, '
        f'{r} px, batch {batch_size}, {jax.device_count()} {jax.default_backend()} device(s)'
        f'{"" if args.workdir else f"; trained {args.train_steps} steps in {train_seconds:.1f} s"}')

  # The evaluate stage's step: its compiled predictor over images at the network's size.
  segmenter = segment_lib.deeplab_segmenter(config, workdir, args.run, epoch)
  mesh = parallel.make_mesh()
  model = deeplab.DeepLabV3(arch, train_lib.DTYPES[config.downstream.dtype])
  predictor = evaluate_lib.make_predictor(model)
  variables = jax.device_put(train_lib.restore_epoch(run_dir, epoch, arch),
                             jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  photos = os.path.join(scratch, 'photos')
  write_photos(photos, args.images, r)
  resized = np.stack([image_utils.resize_image(np.asarray(Image.open(os.path.join(photos, n))
                                                          .convert('RGB')), r, r)
                      for n in sorted(os.listdir(photos))])
  blank = np.full(resized.shape[:3], metrics.IGNORE_LABEL, np.uint8)
  step = machine.timed(predictor, (variables, resized[:batch_size], blank[:batch_size]), 1)
  evaluate_lib.predict_all(predictor, variables, resized, blank, batch_size, mesh)  # warm
  best = float('inf')
  for _ in range(args.repeats):
    t = time.perf_counter()
    evaluated = evaluate_lib.predict_all(predictor, variables, resized, blank, batch_size, mesh)
    best = min(best, time.perf_counter() - t)
  eval_seconds, eval_rss = best, peak_rss_mb()

  # The segmenter's own predict on the same batch (the network part of segment).
  segmenter.predict(resized[:batch_size])   # compiles segment's copy of the step
  best = float('inf')
  for _ in range(args.repeats):
    t = time.perf_counter()
    network_labels, _ = segmenter.predict(resized)
    best = min(best, time.perf_counter() - t)
  network_seconds = best
  assert np.array_equal(np.asarray(network_labels), np.asarray(evaluated[0])), (
      'segment and evaluate disagree')

  # segment end to end on the folder (warm: its step is compiled above).
  best = float('inf')
  for k in range(args.repeats):
    t = time.perf_counter()
    record = segment_lib.segment(segmenter, photos, os.path.join(scratch, f'out{k}'),
                                 progress=False)
    best = min(best, time.perf_counter() - t)
  segment_seconds, segment_rss = best, peak_rss_mb()
  assert record['num_images'] == args.images and not record['skipped']

  n = args.images
  rate = lambda seconds: n / seconds
  print(f'compiled prediction step (batch {batch_size}): compile {step.compile_seconds:.1f} s, '
        f'{step.seconds:.3f} s a batch, XLA memory {step.memory_bytes / 2**20:.1f} MiB '
        f'(temporaries {step.temp_bytes / 2**20:.1f} MiB), '
        f'{step.flops / batch_size / 1e9:.3f} GFLOP an image')
  print(f'evaluate step  {n} images in {eval_seconds:.2f} s: {rate(eval_seconds):.1f} images/s '
        f'(peak RSS {eval_rss:.0f} MiB)')
  print(f'segment net    {n} images in {network_seconds:.2f} s: {rate(network_seconds):.1f} '
        f'images/s ({eval_seconds / network_seconds:.2f} x evaluate)')
  print(f'segment        {n} images in {segment_seconds:.2f} s: {rate(segment_seconds):.1f} '
        f'images/s end to end, {eval_seconds / segment_seconds:.2f} x evaluate\'s rate '
        f'(files: {segment_seconds - network_seconds:.2f} s, '
        f'{(segment_seconds - network_seconds) / segment_seconds:.0%}; peak RSS '
        f'{segment_rss:.0f} MiB)')
  print(f'machine: matmul {machine.matmul_gflops():.0f} GFLOP/s; total '
        f'{time.perf_counter() - start:.0f} s')


if __name__ == '__main__':
  main()
