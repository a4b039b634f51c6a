"""The pipeline's stages. Each reads the config and what earlier stages wrote to the
workdir, writes its own folder under a temporary name and renames it when complete,
and is skipped when that folder already exists."""

import contextlib
import dataclasses
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image
from tqdm import tqdm

from dgan_jax import factory as factory_lib
from dgan_jax import features as features_lib
from dgan_jax import generate as generate_lib
from dgan_jax import generators
from dgan_jax import interpreter
from dgan_jax import latents
from dgan_jax import parallel
from dgan_jax.bigdatasetgan import stages as bigdatasetgan_stages
from dgan_jax.data import annotations
from dgan_jax.data import images as image_utils
from dgan_jax.data import synthetic
from dgan_jax.downstream import run as downstream_run


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


def _is_biggan(config) -> bool:
  """BigGAN generators take the BigDatasetGAN path (dgan_jax/bigdatasetgan/stages.py)."""
  return generators.kind_from_config(config.generator) in ('biggan', 'biggan_deep')


def sample(config, workdir: str) -> None:
  """DatasetGAN's make_training_data: images to annotate + their latents.

  Writes workdir/annotate/: image_{i}.png, latents.npy [N, 512] (z),
  avg_latent.npy, samples.png (a grid), info.json.
  """
  if _is_biggan(config):
    return bigdatasetgan_stages.sample(config, workdir)
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


def annotate(config, workdir: str) -> None:
  """The annotation step. In real use a person draws workdir/annotate/mask_{i}.png (class
  ids, see dgan_jax/data/annotations.py) between the sample and train_interpreter
  stages, or config.data.annotation_dir points at finished annotations; this stage then
  does nothing. The toy domain (config.toy.enabled) labels the samples with an annotator
  model instead (dgan_jax/toy/stages.py)."""
  if config.toy.enabled:
    from dgan_jax.toy import stages as toy_stages  # pylint: disable=import-outside-toplevel
    toy_stages.annotate(config, workdir)
  else:
    logging.info('annotate: masks are read from %s',
                 config.data.annotation_dir or os.path.join(workdir, 'annotate'))


def report(config, workdir: str) -> None:
  """workdir/report.md and report.html: the evaluation table and image grids."""
  from dgan_jax import report as report_lib  # pylint: disable=import-outside-toplevel
  report_lib.report(config, workdir)


def feature_layout(g, data_config) -> features_lib.FeatureLayout:
  """Where the generator's feature maps land: resized to feature_size, rows cropped."""
  return features_lib.FeatureLayout.create(
      [(r, r) for r in g.arch.resolutions for _ in range(2)], g.feature_channels,
      data_config.feature_size, data_config.crop_rows)


def _annotation_dir(config, workdir: str, shape: tuple[int, int]) -> str:
  """config.data.annotation_dir, else the sample stage's folder; with synthetic_masks and
  no masks there, a brightness-labelled copy (workdir/annotate_synthetic)."""
  annotation_dir = config.data.annotation_dir or os.path.join(workdir, 'annotate')
  if config.data.synthetic_masks:
    fmt = annotations.detect_format(annotation_dir) if os.path.isdir(annotation_dir) else 'plain'
    if not os.path.exists(annotations.mask_path(annotation_dir, 0, fmt)):
      annotation_dir = synthetic.write_annotations(
          annotation_dir, os.path.join(workdir, 'annotate_synthetic'),
          config.data.num_annotated, config.data.num_classes, shape)
      logging.info('train_interpreter: no masks; labelled the samples by brightness in %s',
                   annotation_dir)
  return annotation_dir


def _check_image(annotated: list, regenerated: np.ndarray, masks: np.ndarray,
                 palette: np.ndarray) -> np.ndarray:
  """One row per annotated image: the annotated image | the regenerated one | the mask."""
  tiles = []
  height, width = masks.shape[1:]
  for picture, image, mask in zip(annotated, regenerated, masks):
    if picture is None:
      picture = np.full((height, width, 3), 128, np.uint8)
    elif picture.shape[:2] != (height, width):
      picture = np.asarray(Image.fromarray(picture).resize((width, height), Image.BILINEAR))
    tiles += [picture, image, image_utils.colorize(mask, palette)]
  return image_utils.grid(np.stack(tiles), columns=3)


def train_interpreter(config, workdir: str) -> None:
  """DatasetGAN's train_interpreter: the pixel-classifier ensemble on the annotations.

  Reads the annotation folder (config.data.annotation_dir, else workdir/annotate with the
  user's mask_{i}.png), regenerates each annotated image from its latent, keeps its
  native feature maps and trains every member at once (dgan_jax/interpreter.py).
  Writes workdir/interpreter/: interpreter.json + params.npz (the ensemble,
  `interpreter.load`), check.png (annotated | regenerated | mask, written before
  training starts, in interpreter.partial/ until the stage completes), history.npz and
  info.json. An interrupted run resumes from the orbax checkpoints in
  interpreter.partial/checkpoints. BigGAN generators: the segmentation head instead.
  """
  if _is_biggan(config):
    return bigdatasetgan_stages.train_head(config, workdir)
  out = os.path.join(workdir, 'interpreter')
  if os.path.exists(os.path.join(out, 'interpreter.json')):
    logging.info('train_interpreter: %s exists, skipping', out)
    return
  partial = out + '.partial'
  if os.path.exists(os.path.join(partial, 'interpreter.json')):  # stopped while moving in
    shutil.rmtree(os.path.join(partial, 'checkpoints'), ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    os.rename(partial, out)
    return
  g = generators.from_config(config.generator, config.seed)
  layout = feature_layout(g, config.data)
  annotation_dir = _annotation_dir(config, workdir, layout.output_shape)
  annotated = annotations.load(annotation_dir, config.data, g.num_ws, layout.output_shape,
                               g.arch.latent_size)
  count = len(annotated['masks'])

  psi, cutoff = config.generator.truncation_psi, config.generator.truncation_cutoff
  kind = config.data.latent_kind

  def synthesize(i):
    latent = annotated['latents'][i:i + 1]
    w = g.truncate(g.map(latent), psi, cutoff) if kind == 'z' else latent
    noise = config.generator.noise
    if noise == 'per_sample':
      noise = jax.vmap(lambda k: latents.sample_key(config.seed, latents.NOISE_STREAM, k))(
          jnp.asarray([i]))
    return g.synthesize(w, noise=noise)

  os.makedirs(partial, exist_ok=True)
  feature_dtype = jnp.dtype(config.interpreter.feature_dtype)
  stores, regenerated, seconds_per_image = features_lib.extract_stores(
      synthesize, count, layout, feature_dtype)
  palette = image_utils.palette_array(config.data.num_classes, config.data.palette)
  check_path = os.path.join(partial, 'check.png')
  image_utils.save_png(check_path, _check_image(annotated['images'], regenerated,
                                                annotated['masks'], palette))
  logging.info('train_interpreter: %d annotated images from %s (%s format); compare them '
               'with their regenerated images in %s', count, annotation_dir,
               annotated['format'], check_path)

  arch = interpreter.InterpreterArch(feature_dim=layout.dim,
                                     num_classes=config.data.num_classes,
                                     num_members=config.interpreter.num_members)
  options = interpreter.TrainOptions.from_config(config.interpreter)
  run = {'arch': arch.to_json(), 'options': dataclasses.asdict(options), 'seed': config.seed,
         'layout': dataclasses.asdict(layout), 'feature_dtype': feature_dtype.name,
         'annotation_dir': os.path.abspath(annotation_dir),
         'latents': os.path.abspath(annotated['latents_path']), 'num_annotated': count}
  run = json.loads(json.dumps(run))
  run_path = os.path.join(partial, 'run.json')
  checkpoints = os.path.join(partial, 'checkpoints')
  if os.path.exists(run_path):
    with open(run_path) as f:
      if json.load(f) != run:
        logging.warning('train_interpreter: the config changed since %s was written; '
                        'starting over', run_path)
        shutil.rmtree(checkpoints, ignore_errors=True)
  with open(run_path, 'w') as f:
    json.dump(run, f, indent=2)

  data = interpreter.TrainData(stores, jnp.asarray(annotated['masks']), layout)
  start = time.time()
  state = interpreter.train(data, arch, options, config.seed, checkpoint_dir=checkpoints)
  history = state['history']
  info = {'layout': run['layout'], 'num_annotated': count, 'format': annotated['format'],
          'annotation_dir': run['annotation_dir'], 'steps': int(state['step']),
          'stopped_by_rule': [bool(not a) for a in state['active']],
          'best_loss': [float(x) if np.isfinite(x) else None for x in state['best_loss']],
          'last_loss': [float(x) for x in history['loss'][-1]] if len(history['step']) else [],
          'last_accuracy': ([float(x) for x in history['accuracy'][-1]]
                            if len(history['step']) else []),
          'pixels_per_second': round(float(state['pixels_per_second']), 1),
          'feature_seconds_per_image': round(seconds_per_image, 3),
          'feature_megabytes': round(layout.bytes_per_image(feature_dtype) * count / 2**20, 1),
          'train_seconds': round(time.time() - start, 2)}
  np.savez(os.path.join(partial, 'history.npz'), **history)
  with open(os.path.join(partial, 'info.json'), 'w') as f:
    json.dump(info, f, indent=2)
  interpreter.save(partial, arch, state['params'], state['batch_stats'],
                   {'layout': run['layout'], 'class_names': list(config.data.class_names),
                    'steps': info['steps']})
  shutil.rmtree(checkpoints, ignore_errors=True)
  if os.path.exists(out):
    shutil.rmtree(out)
  os.rename(partial, out)
  logging.info('train_interpreter: %d members, %d steps, wrote %s', arch.num_members,
               info['steps'], out)


def generate(config, workdir: str) -> None:
  """Labels config.generate.num_samples new samples with the trained interpreter and keeps
  the most certain as a TFDS dataset in workdir/dataset/ (see dgan_jax/generate.py).
  BigGAN generators: per-class samples labelled by the segmentation head."""
  if _is_biggan(config):
    return bigdatasetgan_stages.generate(config, workdir)
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


STAGE_FUNCTIONS = {'sample': sample, 'annotate': annotate,
                   'train_interpreter': train_interpreter, 'generate': generate,
                   'train_downstream': downstream_run.train_downstream,  # downstream/run.py
                   'evaluate': downstream_run.evaluate, 'report': report}
