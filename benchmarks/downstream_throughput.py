"""DeepLabV3 training and inference speed on this machine, ours (JAX, the compiled
data-parallel step of dgan_jax/downstream/train.py) next to the same network in PyTorch
(torchvision's deeplabv3_resnet50 / deeplabv3_resnet101: the original's model) measured in the
same run, and the share of the machine's matmul peak (a jitted 2048x2048 float32 matmul,
also measured here) that the step reaches by XLA's FLOP count.

  train   one optimizer step (Adam, cross-entropy, BatchNorm in training mode)
  eval    a forward pass in evaluation mode + argmax (ours: + the IoU counts)

Each framework runs in its own process so its peak RSS is its own.

  python benchmarks/downstream_throughput.py [--depth 101] [--resolution 512] [--batch 2]
      [--steps 2] [--skip-torch]
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
import machine  # pylint: disable=wrong-import-position  # benchmarks/machine.py

STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
NUM_CLASSES = 20


def run_ours(args) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from dgan_jax import parallel  # pylint: disable=import-outside-toplevel
  from dgan_jax.downstream import deeplab, evaluate, train  # pylint: disable=import-outside-toplevel
  arch = deeplab.DeepLabArch(num_classes=NUM_CLASSES, stage_sizes=STAGES[args.depth])
  options = train.TrainOptions(batch_size=args.batch, resolution=args.resolution)
  mesh = parallel.make_mesh(scope='global')
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = jax.device_put(train.init_state(arch, options, 0), replicated)
  rng = np.random.default_rng(0)
  r = args.resolution
  images = rng.integers(0, 256, (args.batch, r, r, 3), dtype=np.uint8)
  labels = rng.integers(0, NUM_CLASSES, (args.batch, r, r)).astype(np.uint8)
  images, labels = jax.device_put(
      (images, labels), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data')))
  model = deeplab.DeepLabV3(arch)
  step = train.make_train_step(model, options, 0)
  trained = machine.timed(step, (state, images, labels), args.steps, carry=True)
  state = trained.out[0]
  train_flops, train_seconds = trained.flops, trained.seconds

  predict = evaluate.make_predict(model)
  variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
  evaluated = machine.timed(predict, (variables, images, labels), args.steps)
  eval_flops, eval_seconds = evaluated.flops, evaluated.seconds
  peak = machine.matmul_gflops()
  return {
      'devices': mesh.size, 'params': deeplab.count_params(state['params']),
      'compile_seconds': round(trained.compile_seconds, 1),
      'train_xla_temp_gb': round(trained.temp_bytes / 1e9, 2),
      'train_seconds_per_step': round(train_seconds, 2),
      'train_images_per_second': round(args.batch / train_seconds, 3),
      'train_gflop_per_image': round(train_flops / args.batch / 1e9, 1),
      'train_gflops': round(train_flops / train_seconds / 1e9, 1),
      'eval_seconds_per_batch': round(eval_seconds, 2),
      'eval_images_per_second': round(args.batch / eval_seconds, 3),
      'eval_gflop_per_image': round(eval_flops / args.batch / 1e9, 1),
      'eval_gflops': round(eval_flops / eval_seconds / 1e9, 1),
      'peak_matmul_gflops': round(peak, 1),
      'train_share_of_peak': round(train_flops / train_seconds / 1e9 / peak, 3),
      'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def run_torch(args) -> dict:
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.join(REPO, 'tests'))
  import conftest  # pylint: disable=import-outside-toplevel
  conftest.import_torchvision()   # the CUDA wheel beside CPU torch: see there
  from torchvision.models import segmentation  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  build = {50: segmentation.deeplabv3_resnet50, 101: segmentation.deeplabv3_resnet101}
  network = build[args.depth](weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                              aux_loss=False)
  model = lambda x: network(x)['out']
  optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
  rng = np.random.default_rng(0)
  r = args.resolution
  images = torch.from_numpy(rng.standard_normal((args.batch, 3, r, r)).astype(np.float32))
  labels = torch.from_numpy(rng.integers(0, NUM_CLASSES, (args.batch, r, r)))

  def train_step():
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()

  network.train()
  train_step()   # warm-up
  start = time.perf_counter()
  for _ in range(args.steps):
    train_step()
  train_seconds = (time.perf_counter() - start) / args.steps
  network.eval()
  with torch.no_grad():
    model(images).argmax(1)
    start = time.perf_counter()
    for _ in range(args.steps):
      model(images).argmax(1)
  eval_seconds = (time.perf_counter() - start) / args.steps
  return {'threads': torch.get_num_threads(),
          'train_seconds_per_step': round(train_seconds, 2),
          'train_images_per_second': round(args.batch / train_seconds, 3),
          'eval_seconds_per_batch': round(eval_seconds, 2),
          'eval_images_per_second': round(args.batch / eval_seconds, 3),
          'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--depth', type=int, default=101, choices=sorted(STAGES))
  parser.add_argument('--resolution', type=int, default=512)
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--steps', type=int, default=2)
  parser.add_argument('--skip-torch', action='store_true')
  parser.add_argument('--worker', choices=['ours', 'torch'], help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(run_ours(args) if args.worker == 'ours' else run_torch(args)))
    return
  common = [f'--depth={args.depth}', f'--resolution={args.resolution}',
            f'--batch={args.batch}', f'--steps={args.steps}']
  results = {}
  for worker in ['ours'] + ([] if args.skip_torch else ['torch']):
    out = subprocess.run([sys.executable, __file__, f'--worker={worker}', *common],
                         capture_output=True, text=True, check=True)
    results[worker] = json.loads(out.stdout.strip().splitlines()[-1])
    print(worker, json.dumps(results[worker]), flush=True)
  if 'torch' in results:
    ours, torch_ = results['ours'], results['torch']
    speed = lambda key: torch_[key] / ours[key]
    print(f'train step: ours {ours["train_seconds_per_step"]} s, PyTorch '
          f'{torch_["train_seconds_per_step"]} s (x{speed("train_seconds_per_step"):.2f}); '
          f'eval: ours {ours["eval_seconds_per_batch"]} s, PyTorch '
          f'{torch_["eval_seconds_per_batch"]} s (x{speed("eval_seconds_per_batch"):.2f}); '
          f'peak RSS: ours {ours["peak_rss_mb"] / 1024:.2f} GiB, PyTorch '
          f'{torch_["peak_rss_mb"] / 1024:.2f} GiB (ours / PyTorch '
          f'{ours["peak_rss_mb"] / torch_["peak_rss_mb"]:.2f}); issue 16 asks for speed ratios '
          '>= 1.0 and an RSS ratio <= 1.0')


if __name__ == '__main__':
  main()
