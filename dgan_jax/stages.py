"""The pipeline's stages: thin functions that wire the run's generator
(dgan_jax/generators/, chosen by its checkpoint or config.generator.random_init.type),
its labeler (dgan_jax/labelers.py, config.labeler), its domain (dgan_jax/domains.py) and
the workdir (dgan_jax/io.py). Each writes its own folder under a temporary name, renames
it when complete, and is skipped when that folder exists.
"""

import os
import time

import numpy as np
from absl import logging

from dgan_jax import domains
from dgan_jax import factory as factory_lib
from dgan_jax import features
from dgan_jax import generate as generate_lib
from dgan_jax import generators
from dgan_jax import io
from dgan_jax import labelers
from dgan_jax import parallel
from dgan_jax.annotations import export
from dgan_jax.annotations import labels
from dgan_jax.data import annotated
from dgan_jax.data import images as image_utils
from dgan_jax.downstream import run as downstream_run
from dgan_jax.errors import InputError

CHECK_COUNT = 16     # annotated samples shown in check.png
PREVIEW_COUNT = 8    # annotated samples shown in preview.png


def _generator(config):
  g = generators.from_config(config.generator, config.seed)
  return g, g.sampling(config)


def sample(config, workdir: str) -> None:
  """DatasetGAN's make_training_data: images to annotate and what regenerates them, in
  the generator's annotation format (dgan_jax/data/annotated.py): image_{i}.png +
  latents.npy, or BigDatasetGAN's layout for class-conditional generators. Also
  samples.png (a grid), the classes in each labelling tool's format
  (dgan_jax/annotations/export.py) and info.json. Images are cropped to config.data.crop_rows."""
  out = os.path.join(workdir, io.ANNOTATE)
  if os.path.exists(out):
    logging.info('sample: %s exists, skipping', out)
    return
  g, sampling = _generator(config)
  count = sampling.count('annotate', config)
  if count < 1:
    raise InputError('config.sample.num_samples must be at least 1')
  start = time.time()
  images, inputs = g.draw_images(sampling, 'annotate', count, config.sample.batch_size)
  images = image_utils.crop_rows(images, config.data)
  with io.atomic_dir(out) as tmp:
    record = annotated.write_samples(tmp, g, images, inputs, config.sample.grid_columns)
    record['label_files'] = export.export(tmp, labels.LabelSet.from_config(config.data))
    io.write_json(os.path.join(tmp, 'info.json'),
                  {'num_samples': count, 'seed': config.seed, 'generator': g.family,
                   **record, **sampling.record(), 'seconds': round(time.time() - start, 2)})
  logging.info('sample: wrote %d images to %s', count, out)


def annotate(config, workdir: str) -> None:
  """The annotation step. In real use a person draws the masks into workdir/annotate
  (see dgan_jax/data/annotated.py) between the sample and train_interpreter stages, or
  config.data.annotation_dir points at finished annotations; this stage then does
  nothing. A domain may label the samples itself (the toy domain's annotator model)."""
  domains.from_config(config).annotate(config, workdir)


def report(config, workdir: str) -> None:
  """workdir/report.md and report.html: the evaluation tables and image grids."""
  from dgan_jax import report as report_lib  # pylint: disable=import-outside-toplevel
  report_lib.report(config, workdir)


def _check_image(data, regenerated: np.ndarray, palette: np.ndarray
                 ) -> tuple[np.ndarray, float | None]:
  """One row per annotated sample: the stored image | the regenerated one | the mask,
  on the labelled grid; and the regenerated images' PSNR (dB) against the stored ones
  (None when none is stored): VQGAN's reconstruction quality, a GAN's regeneration."""
  tiles, stored, compared = [], [], []
  height, width = regenerated.shape[1:3]
  for i, image in enumerate(regenerated):
    picture = data.image(i)
    if picture is None:
      picture = np.full((height, width, 3), 128, np.uint8)
    else:
      picture = image_utils.resize_image(picture, height, width)
      stored.append(picture)
      compared.append(image)
    tiles += [picture, image, image_utils.colorize(data.masks([i])[0], palette)]
  quality = image_utils.psnr(np.stack(compared), np.stack(stored)) if stored else None
  return image_utils.grid(np.stack(tiles), columns=3), quality


def _heat(values: np.ndarray, num_classes: int) -> np.ndarray:
  """[H, W] pixel JS divergence in [0, ln C] -> grey uint8 [H, W, 3], white = ln C."""
  grey = np.clip(values / np.log(num_classes), 0, 1) * 255
  return np.repeat(grey[..., None], 3, axis=-1).astype(np.uint8)


def _preview(factory, data, palette: np.ndarray, num_classes: int):
  """image | mask | prediction | disagreement rows for the first annotated samples, and
  the share of their pixels where prediction and mask agree."""
  ids = np.arange(min(PREVIEW_COUNT, len(data)))
  out = factory.label_inputs({k: v[ids] for k, v in data.inputs.items()})
  masks = data.masks(ids)
  tiles = []
  for image, mask, label, pixel_js in zip(out['image'], masks, out['label'],
                                          out['pixel_uncertainty']):
    tiles += [image, image_utils.colorize(mask, palette), image_utils.colorize(label, palette),
              _heat(pixel_js, num_classes)]
  grid = image_utils.grid(np.stack([image_utils.enlarge(t) for t in tiles]), columns=4)
  return grid, float(np.mean(out['label'] == masks))


def train_interpreter(config, workdir: str) -> None:
  """DatasetGAN's train_interpreter (BigDatasetGAN's train.py): the run's labeler on the
  annotated samples.

  Reads the annotation folder (config.data.annotation_dir, else workdir/annotate; with
  config.data.synthetic_masks and no masks there, a brightness-labelled copy), writes
  check.png (stored | regenerated | mask, before training starts), trains (resuming from
  the orbax checkpoints in the partial folder) and writes the labeler's folder
  (workdir/interpreter for the MLP ensemble, workdir/head for the conv head): the
  labeler, preview.png (image | mask | prediction | disagreement), history.npz, info.json.
  """
  labeler_class = labelers.from_config(config)
  out = labelers.workdir_folder(config, workdir)
  if os.path.exists(os.path.join(out, labeler_class.meta_file)):
    logging.info('train_interpreter: %s exists, skipping', out)
    return
  partial = out + io.PARTIAL
  checkpoints = os.path.join(partial, 'checkpoints')
  if os.path.exists(os.path.join(partial, labeler_class.meta_file)):  # stopped moving in
    io.remove([checkpoints])
    io.replace_dir(partial, out)
    return
  g, sampling = _generator(config)
  layout = features.layout_for(g, config.data)
  labeler = labeler_class.create(config, g, layout)
  folder = annotated.training_folder(config, workdir, g, layout.output_shape)
  data = annotated.read(folder, g, sampling, config.data, layout.output_shape)
  factory = factory_lib.Factory(g, sampling, labeler, layout, config.generate.top_fraction,
                                config.generate.chunk_rows, config.generate.batch_size)
  palette = image_utils.palette_array(config.data.num_classes, config.data.palette)

  os.makedirs(partial, exist_ok=True)
  check_ids = np.arange(min(CHECK_COUNT, len(data)))
  check_path = os.path.join(partial, 'check.png')
  check, reconstruction_psnr = _check_image(
      data, factory.images({k: v[check_ids] for k, v in data.inputs.items()}), palette)
  image_utils.save_png(check_path, check)
  logging.info('train_interpreter: %d annotated samples from %s (%s format); compare them '
               'with their regenerated images in %s', len(data), folder, data.format,
               check_path)
  run = {'labeler': labeler.record(), 'seed': config.seed, 'layout': layout.to_json(),
         'generator': sampling.record(),
         'weights': generators.identity(config.generator, config.seed),
         'annotation_dir': os.path.abspath(folder),
         'latents': os.path.abspath(data.latents_path), 'samples': data.names,
         'annotations': io.array_digest(data.masks(np.arange(len(data))),
                                        *[data.inputs[k] for k in sorted(data.inputs)])}
  io.start_over_if_changed(os.path.join(partial, 'run.json'), run, [checkpoints],
                           'train_interpreter')

  start = time.time()
  trained = labeler.train(g, sampling, data, layout, config.seed, checkpoints)
  history = trained.pop('history')
  preview, agreement = _preview(factory, data, palette, config.data.num_classes)
  image_utils.save_png(os.path.join(partial, 'preview.png'), preview)
  info = {'num_annotated': len(data), 'format': data.format,
          'annotation_dir': run['annotation_dir'], 'layout': run['layout'],
          'last_loss': [float(x) for x in history['loss'][-1]] if len(history['step']) else [],
          'last_accuracy': ([float(x) for x in history['accuracy'][-1]]
                            if len(history['step']) else []),
          'preview_pixel_agreement': agreement,
          # dB over check.png's images; 'inf' when they are regenerated exactly
          'reconstruction_psnr': (reconstruction_psnr if reconstruction_psnr is None else
                                  round(reconstruction_psnr, 2)
                                  if np.isfinite(reconstruction_psnr) else 'inf'),
          **trained,
          'train_seconds': round(float(history['seconds'][-1]) if len(history['seconds'])
                                 else time.time() - start, 2)}
  if data.class_ids is not None:
    info['classes'] = sorted(set(data.class_ids.tolist()))
  io.save_npz(os.path.join(partial, 'history.npz'), **history)
  io.write_json(os.path.join(partial, 'info.json'), info)
  labeler.save(partial, {'layout': run['layout'], 'class_names': list(config.data.class_names),
                         'steps': info['steps'], 'generator': config.generator.to_dict()})
  io.remove([checkpoints])
  io.replace_dir(partial, out)
  logging.info('train_interpreter: %s, %d members, %d steps, wrote %s', labeler.name,
               labeler.num_members, info['steps'], out)


def generate(config, workdir: str) -> None:
  """Labels the generate stage's samples with the trained labeler and keeps the most
  certain as a TFDS dataset in workdir/dataset/ (see dgan_jax/generate.py). Skipped when
  the dataset is complete for the same plan (seed, sampling settings, labeler weights)."""
  parallel.initialize(config.distributed)   # before anything touches a device
  labeler_class = labelers.from_config(config)
  labeler_dir = labelers.workdir_folder(config, workdir)
  labeler = labeler_class.load(labeler_dir)
  if labeler.num_members == 1 and config.generate.drop_fraction > 0:
    raise InputError(f'config.generate.drop_fraction > 0 needs an ensemble to score samples; '
                     f'the {labeler.name} labeler in {labeler_dir} has one member: train '
                     'more (and retrain) or set config.generate.drop_fraction=0')
  g, sampling = _generator(config)
  layout = features.layout_for(g, config.data)
  factory = factory_lib.Factory(g, sampling, labeler, layout, config.generate.top_fraction,
                                config.generate.chunk_rows, config.generate.batch_size)
  plan = {'seed': config.seed, 'generator': g.family, 'sampling': sampling.record(),
          'weights': generators.identity(config.generator, config.seed),
          'layout': layout.to_json(), 'top_fraction': config.generate.top_fraction,
          'labeler': io.file_digest(os.path.join(labeler_dir, 'params.npz'))}
  generate_lib.run(config, factory, workdir, plan, sampling.count('generate', config))


STAGE_FUNCTIONS = {'sample': sample, 'annotate': annotate,
                   'train_interpreter': train_interpreter, 'generate': generate,
                   'train_downstream': downstream_run.train_downstream,  # downstream/run.py
                   'evaluate': downstream_run.evaluate, 'report': report}
