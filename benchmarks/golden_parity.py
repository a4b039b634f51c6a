"""Prints how closely the converted Flax StyleGAN (v1) reproduces the reference PyTorch
port on every golden file: max |ours - reference| / (reference max - min), per array.

  python benchmarks/golden_parity.py
"""

import glob
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, 'tests')]

from conftest import (SHARED_GOLDEN, DATA_DIR, as_golden_grid,  # noqa: E402
                      rebuild_stylegan1_state_dict, relative_error)
from convert_weights import stylegan1 as convert_stylegan1  # noqa: E402
from dgan_jax.generators import checkpoint, stylegan1  # noqa: E402


def main():
  paths = sorted(glob.glob(os.path.join(SHARED_GOLDEN, 'stylegan1_*.npz'))) or sorted(
      glob.glob(os.path.join(DATA_DIR, 'stylegan1_*.npz')))
  for path in paths:
    golden = np.load(path)
    seed = int(os.path.basename(path).split('seed')[1].split('.')[0])
    arch, flat, _ = convert_stylegan1.from_torch_state_dict(
        rebuild_stylegan1_state_dict(golden, seed))
    g = stylegan1.StyleGAN1Generator(arch, checkpoint.unflatten(flat),
                                     avg_latent=golden['avg_latent'])
    noise = [golden[f'noise{j}'] for j in range(g.num_ws)]
    start = time.time()
    image, features = g.synthesize(golden['w_truncated'], noise)
    seconds = time.time() - start
    w = g.map(golden['z'])
    errors = {'w': relative_error(w, golden['w']),
              'w_truncated': relative_error(g.truncate(w), golden['w_truncated']),
              'image': relative_error(np.asarray(image).transpose(0, 3, 1, 2), golden['image']),
              'features (worst)': max(relative_error(as_golden_grid(f), golden[f'feature{i}'])
                                      for i, f in enumerate(features))}
    print(f'{os.path.basename(path)} ({len(features)} feature maps, '
          f'{sum(arch.feature_channels)} channels; first call incl. compile {seconds:.1f} s)')
    for name, value in errors.items():
      print(f'  {name:18s} {value:.2e}')


if __name__ == '__main__':
  main()
