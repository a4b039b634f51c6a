"""Prints how closely the converted Flax BigGANs reproduce their PyTorch references:
max |ours - reference| / (reference max - min), per array.

  * BigGAN-PyTorch: the golden files `biggan_*.npz` (weights rebuilt from their seed);
  * BigGAN-deep: tiny random models of the pytorch-pretrained-biggan package, run here.

  python benchmarks/biggan_parity.py
"""

import glob
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, 'tests')]

from conftest import SHARED_GOLDEN, DATA_DIR, as_golden_grid, relative_error  # noqa: E402
from convert_weights import biggan as convert_biggan  # noqa: E402
from dgan_jax.generators import biggan, biggan_deep, checkpoint  # noqa: E402
from test_biggan import rebuild_biggan_state_dict  # noqa: E402


def golden_files():
  paths = sorted(glob.glob(os.path.join(SHARED_GOLDEN, 'biggan_*.npz'))) or sorted(
      glob.glob(os.path.join(DATA_DIR, 'biggan_*.npz')))
  for path in paths:
    golden = np.load(path)
    seed = int(os.path.basename(path).split('seed')[1].split('.')[0])
    arch, flat = convert_biggan.from_biggan_state_dict(rebuild_biggan_state_dict(golden, seed))
    g = biggan.BigGANGenerator(arch, checkpoint.unflatten(flat))
    start = time.time()
    image, features = g.synthesize(golden['z'], golden['y'])
    seconds = time.time() - start
    errors = {'class embedding': relative_error(g.class_embedding(golden['y']),
                                                golden['class_embedding']),
              'image': relative_error(np.asarray(image).transpose(0, 3, 1, 2), golden['image']),
              'features (worst)': max(relative_error(as_golden_grid(f), golden[f'feature{i}'])
                                      for i, f in enumerate(features))}
    print(f'{os.path.basename(path)} ({len(features)} feature maps, '
          f'{sum(arch.feature_channels)} channels; first call incl. compile {seconds:.1f} s)')
    for name, value in errors.items():
      print(f'  {name:18s} {value:.2e}')


def deep_models():
  try:
    import test_convert_biggan as deep_tests  # pylint: disable=import-outside-toplevel
  except BaseException as e:  # pytest.importorskip raises Skipped without torch
    print(f'BigGAN-deep: skipped ({type(e).__name__}: {e})')
    return
  for label, layers, position, truncations in (
      ('alternating blocks, attention before block 4', deep_tests.ALTERNATING_LAYERS, 4,
       (0.43, 1.0)),
      ('irregular blocks, attention before block 2', deep_tests.IRREGULAR_LAYERS, 2, (0.6,))):
    model, config = deep_tests.tiny_deep_model(layers, position)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    arch, flat = convert_biggan.from_deep_state_dict(state, config=config.to_dict())
    g = biggan_deep.BigGANDeepGenerator(arch, checkpoint.unflatten(flat))
    z = np.random.RandomState(1).normal(0, 1, (3, arch.z_dim)).astype(np.float32)
    ids = np.array([1, 4, 9])
    print(f'BigGAN-deep {arch.resolution} px, {label} ({len(arch.modules)} feature maps)')
    for truncation in truncations:
      expected_image, expected_features = deep_tests.run_package(model, z, ids, truncation)
      image, features = g.synthesize(z, ids, truncation=truncation)
      worst = max(relative_error(np.asarray(f).transpose(0, 3, 1, 2), e)
                  for f, e in zip(features, expected_features))
      print(f'  truncation {truncation}: image '
            f'{relative_error(np.asarray(image).transpose(0, 3, 1, 2), expected_image):.2e}, '
            f'features (worst) {worst:.2e}')


if __name__ == '__main__':
  golden_files()
  deep_models()
