"""Prints how closely the converted generators reproduce the reference code on every
golden file: max |ours - reference| / (reference max - min), per array. StyleGAN (v1):
DatasetGAN's PyTorch port. StyleGAN2: stylegan2-ada-pytorch's outputs through the two
pickle formats (written from the golden state dicts, converted by `convert_weights
stylegan2`), and rosinality's through its .pt.

  python benchmarks/golden_parity.py
"""

import glob
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, 'tests')]

from conftest import (SHARED_GOLDEN, DATA_DIR, as_golden_grid,  # noqa: E402
                      rebuild_stylegan1_state_dict, relative_error, stand_in_modules)
import stylegan2_formats  # noqa: E402
from convert_weights import stylegan1 as convert_stylegan1  # noqa: E402
from convert_weights import stylegan2 as convert_stylegan2  # noqa: E402
from dgan_jax import generators  # noqa: E402
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



def stylegan2_rows():
  """(golden file, format) -> errors, each through the converter from a written file."""
  import torch  # pylint: disable=import-outside-toplevel
  sys.modules.update(stand_in_modules())
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name in ('stylegan2ada_r32_seed0', 'stylegan2ada_r64_seed1', 'rosinality_r32_seed0'):
      if not os.path.exists(os.path.join(SHARED_GOLDEN, f'{name}.npz')):
        continue
      meta, sd, golden = stylegan2_formats.load_golden(name)
      formats = {}
      if name.startswith('rosinality'):
        formats['rosinality .pt'] = src = os.path.join(tmp, f'{name}.pt')
        torch.save({'g_ema': {k: torch.from_numpy(v) for k, v in sd.items()},
                    'latent_avg': torch.from_numpy(golden['latent_avg'])}, src)
        feature_names = ['conv1'] + [f'convs.{k}' for k in range(6)]
      else:
        formats['ADA pickle'] = os.path.join(tmp, f'{name}_ada.pkl')
        stylegan2_formats.write_ada_pickle(formats['ADA pickle'], meta, sd)
        formats['TF pickle'] = os.path.join(tmp, f'{name}_tf.pkl')
        stylegan2_formats.write_tf_pickle(formats['TF pickle'], meta, sd)
        feature_names = None
      for fmt, src in formats.items():
        dst = os.path.join(tmp, f'{name}_{fmt[:3]}')
        convert_stylegan2.convert(src, dst)
        g = generators.load(dst)
        cutoff = g.num_ws if name.startswith('rosinality') else 8
        w = g.map(golden['z'])
        w_ref = golden['w'] if golden['w'].ndim == 2 else golden['w'][:, 0]
        image, maps = g.synthesize(golden['w_truncated'])
        names = feature_names or g.feature_names
        rows.append((name, fmt, len(maps), {
            'w': relative_error(w[:, 0], w_ref),
            'w_truncated': relative_error(g.truncate(w, 0.7, cutoff), golden['w_truncated']),
            'image': relative_error(np.asarray(image).transpose(0, 3, 1, 2), golden['image']),
            'features (worst)': max(
                relative_error(np.asarray(m).transpose(0, 3, 1, 2), golden[f'feature/{n}'])
                for n, m in zip(names, maps))}))
  return rows


if __name__ == '__main__':
  main()
  for name, fmt, count, errors in stylegan2_rows():
    print(f'{name} via the {fmt} ({count} feature maps)')
    for key, value in errors.items():
      print(f'  {key:18s} {value:.2e}')
