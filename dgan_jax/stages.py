"""The pipeline's stages. Each reads the config and what earlier stages wrote to the
workdir, writes its own folder under a temporary name and renames it when complete,
and is skipped when that folder already exists."""

import contextlib
import json
import os
import shutil
import time

import numpy as np
from absl import logging
from tqdm import tqdm

from dgan_jax import factory as factory_lib
from dgan_jax import features as features_lib
from dgan_jax import generate as generate_lib
from dgan_jax import generators
from dgan_jax import interpreter
from dgan_jax import latents
from dgan_jax import parallel
from dgan_jax.data import images as image_utils


@contextlib.contextmanager
def atomic_dir(path: str):
  """Yields a temporary sibling directory that becomes `path` on success."""
  tmp = path + '.partial'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if os.path.exists(path):
    shutil.rmtree(path)
  os.rename(tmp, path)


def crop(images: np.ndarray, data_config) -> np.ndarray:
  """[B, H, W, ...] -> the config's crop_rows (given at feature_size, scaled to H)."""
  if not data_config.crop_rows:
    return images
  scale = images.shape[1] / (data_config.feature_size or (images.shape[1],))[0]
  start, stop = (int(round(r * scale)) for r in data_config.crop_rows)
  return images[:, start:stop]


def generate_images(g, config, z: np.ndarray) -> np.ndarray:
  """z [B, 512] -> uint8 images [B, H', W, 3] (truncated, config noise, cropped)."""
  w = g.truncate(g.map(z), config.generator.truncation_psi, config.generator.truncation_cutoff)
  image, _ = g.synthesize(w, noise=config.generator.noise, return_features=False)
  return crop(image_utils.to_uint8(np.asarray(image)), config.data)


def sample(config, workdir: str) -> None:
  """DatasetGAN's make_training_data: images to annotate + their latents.

  Writes workdir/annotate/: image_{i}.png, latents.npy [N, 512] (z),
  avg_latent.npy, samples.png (a grid), info.json.
  """
  out = os.path.join(workdir, 'annotate')
  if os.path.exists(out):
    logging.info('sample: %s exists, skipping', out)
    return
  g = generators.from_config(config.generator, config.seed)
  n, batch = config.sample.num_samples, config.sample.batch_size
  z_all = np.asarray(latents.sample_z(config.seed, np.arange(n), g.arch.latent_size))
  start = time.time()
  with atomic_dir(out) as tmp:
    written = []
    for begin in tqdm(range(0, n, batch), desc='sample', unit='batch'):
      batch_images = generate_images(g, config, z_all[begin:begin + batch])
      for i, image in enumerate(batch_images, start=begin):
        image_utils.save_png(os.path.join(tmp, f'image_{i}.png'), image)
      written.append(batch_images)
    np.save(os.path.join(tmp, 'latents.npy'), z_all.astype(np.float32))
    if g.avg_latent is not None:
      np.save(os.path.join(tmp, 'avg_latent.npy'), np.asarray(g.avg_latent, np.float32))
    image_utils.save_png(os.path.join(tmp, 'samples.png'),
                         image_utils.grid(np.concatenate(written), config.sample.grid_columns))
    with open(os.path.join(tmp, 'info.json'), 'w') as f:
      json.dump({'num_samples': n, 'seed': config.seed, 'latent_kind': 'z',
                 'truncation_psi': config.generator.truncation_psi,
                 'truncation_cutoff': config.generator.truncation_cutoff,
                 'noise': config.generator.noise, 'seconds': round(time.time() - start, 2)},
                f, indent=2)
  logging.info('sample: wrote %d images to %s', n, out)


def feature_layout(g, data_config) -> features_lib.FeatureLayout:
  """Where the generator's feature maps land: resized to feature_size, rows cropped."""
  return features_lib.FeatureLayout.create(
      [(r, r) for r in g.arch.resolutions for _ in range(2)], g.feature_channels,
      data_config.feature_size, data_config.crop_rows)


def generate(config, workdir: str) -> None:
  """Labels config.generate.num_samples new samples with the trained interpreter and keeps
  the most certain as a TFDS dataset in workdir/dataset/ (see dgan_jax/generate.py)."""
  record_path = os.path.join(workdir, 'dataset', 'generation.json')
  if os.path.exists(record_path):
    with open(record_path) as f:
      if json.load(f)['num_samples'] == config.generate.num_samples:
        logging.info('generate: %s is complete, skipping', record_path)
        return
  process_index, process_count = parallel.initialize(config.distributed)
  g = generators.from_config(config.generator, config.seed)
  interpreter_dir = os.path.join(workdir, 'interpreter')
  _, params, batch_stats, _ = interpreter.load(interpreter_dir)
  step = factory_lib.Factory(
      g, params, batch_stats, feature_layout(g, config.data), seed=config.seed,
      truncation_psi=config.generator.truncation_psi,
      truncation_cutoff=config.generator.truncation_cutoff, noise=config.generator.noise,
      top_fraction=config.generate.top_fraction, chunk_rows=config.generate.chunk_rows)
  generate_lib.run(config, step, workdir, process_index, process_count)


STAGE_FUNCTIONS = {'sample': sample, 'generate': generate}
