"""The toy domain (dgan_jax/domains.py): rendered data and the annotator stand-in.

  workdir/toy/test/          config.toy.test_images rendered images with exact masks
                             ({i:05d}.png + {i:05d}.npy: the evaluate stage's test folder)
  workdir/toy/train.npz      config.toy.train_images rendered pairs (images, masks)
  workdir/downstream/supervised/   the segmenter trained on them (downstream/run.py)
  workdir/annotate/mask_{i}.png    its labels of the sample stage's images, written where
                             a person would put theirs
  workdir/toy/colour_baseline.json a per-pixel colour classifier's test mIoU (a baseline
                             record: the report shows it as a row)
  workdir/toy/finetune/      config.toy.finetune_images rendered images with exact masks,
                             in the test folder's format: the fine-tuning runs' labelled
                             "real" set (config.downstream.finetune_dir when it is empty)

Rendered data never overlaps the GAN's training images: each set draws from its own
renderer seed.
"""

import os

import jax
import numpy as np
from absl import logging
from PIL import Image

from dgan_jax import domains
from dgan_jax import io
from dgan_jax import parallel
from dgan_jax.data import annotations
from dgan_jax.data import images as image_utils
from dgan_jax.downstream import data as data_lib
from dgan_jax.downstream import deeplab
from dgan_jax.downstream import evaluate as evaluate_lib
from dgan_jax.downstream import run as run_lib
from dgan_jax.downstream import train as train_lib
from dgan_jax.errors import InputError
from dgan_jax.toy import render

# Renderer seeds of the pipeline's data (the GAN's images use 1_000_003 + its seed).
TEST_SEED = 2_000_003
TRAIN_SEED = 3_000_017
COLOUR_SEED = 4_000_037
FINETUNE_SEED = 5_000_011


def test_dir(config, workdir: str) -> str:
  """The rendered test folder, written on first use."""
  return _rendered_folder(os.path.join(workdir, io.TOY, 'test'), TEST_SEED + config.seed,
                          config.toy.test_images, config.toy.resolution, 'render test set')


def finetune_dir(config, workdir: str) -> str:
  """The rendered labelled folder of the fine-tuning runs, written on first use."""
  return _rendered_folder(os.path.join(workdir, io.TOY, 'finetune'),
                          FINETUNE_SEED + config.seed, config.toy.finetune_images,
                          config.toy.resolution, 'render fine-tuning set')


def _rendered_folder(out: str, seed: int, count: int, resolution: int, what: str) -> str:
  """count renders with their exact masks as {i:05d}.png + {i:05d}.npy in `out`."""
  if os.path.isdir(out):
    return out
  images, masks = render.render(seed, np.arange(count), resolution, progress=what)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with io.atomic_dir(out) as tmp:
    for i, (image, mask) in enumerate(zip(images, masks)):
      Image.fromarray(image).save(os.path.join(tmp, f'{i:05d}.png'))
      np.save(os.path.join(tmp, f'{i:05d}.npy'), mask)
  return out


def supervised_source(config, workdir: str) -> data_lib.ArraySource:
  """config.toy.train_images rendered pairs, rendered once into workdir/toy/train.npz."""
  path = os.path.join(workdir, io.TOY, 'train.npz')
  if os.path.isfile(path):
    with np.load(path) as saved:
      images, masks = saved['images'], saved['masks']
  if not os.path.isfile(path) or len(images) != config.toy.train_images:
    images, masks = render.render(TRAIN_SEED + config.seed,
                                  np.arange(config.toy.train_images), config.toy.resolution,
                                  progress='render training pairs')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    io.save_npz(path, images=images, masks=masks)
  return data_lib.ArraySource(list(images), list(masks))


def label_images(config, run_dir: str, images: np.ndarray) -> np.ndarray:
  """images uint8 [N, h, w, 3] -> masks uint8 [N, h, w] predicted by the last epoch of
  the segmenter in run_dir (at config.downstream.resolution, resized back)."""
  names, _, _ = run_lib.class_setup(config)
  arch = run_lib.arch_from_config(config, len(names))
  mesh = parallel.make_mesh()
  predict = evaluate_lib.make_predict(
      deeplab.DeepLabV3(arch, train_lib.DTYPES[config.downstream.dtype]))
  variables = jax.device_put(
      train_lib.restore_epoch(run_dir, train_lib.epoch_checkpoints(run_dir)[-1], arch),
      jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  resolution = config.downstream.resolution
  resized = np.stack([image_utils.resize_image(image, resolution, resolution) for image in images])
  blank = np.zeros(resized.shape[:3], np.uint8)
  predictions, _, _ = evaluate_lib.predict_all(predict, variables, resized, blank,
                                               config.evaluate.batch_size, mesh)
  height, width = images.shape[1:3]
  return np.stack([data_lib.resize_label(p, height, width) for p in predictions]
                  ).astype(np.uint8)


def annotate(config, workdir: str) -> None:
  """The toy domain's annotation step (see the module docstring). Each part is skipped
  when its output exists, so an interrupted stage resumes."""
  test_dir(config, workdir)
  run_dir = run_lib.train_run(config, workdir, 'supervised')
  annotate_dir = os.path.join(workdir, io.ANNOTATE)
  count = config.data.num_annotated
  missing = [i for i in range(count)
             if not os.path.isfile(annotations.mask_path(annotate_dir, i, 'plain'))]
  if missing:
    pictures = []
    for i in missing:
      path = annotations.image_path(annotate_dir, i, 'plain')
      if not os.path.isfile(path):
        raise InputError(f'{path}: missing; run the sample stage first')
      pictures.append(image_utils.read_rgb(path))
    for i, mask in zip(missing, label_images(config, run_dir, np.stack(pictures))):
      image_utils.save_png(annotations.mask_path(annotate_dir, i, 'plain'), mask)
    logging.info('annotate: the supervised segmenter labelled %d images in %s (an annotator '
                 'model standing in for a person)', len(missing), annotate_dir)
  _colour_baseline(config, workdir)


def _colour_baseline(config, workdir: str) -> None:
  path = os.path.join(workdir, io.TOY, 'colour_baseline.json')
  if os.path.isfile(path) or not config.toy.colour_baseline_images:
    return
  from dgan_jax.toy import baselines  # pylint: disable=import-outside-toplevel
  count = config.toy.colour_baseline_images
  record = baselines.colour_baseline(COLOUR_SEED + config.seed, count, count // 4,
                                     config.toy.resolution)
  io.write_json(path, record)


def supervised_run(config, workdir: str):
  """The downstream run 'supervised' (the ceiling, and the annotator stand-in):
  -> (rendered pairs, steps per epoch (0: one pass), description)."""
  source = supervised_source(config, workdir)
  return source, 0, f'{len(source)} rendered images with exact masks'


class Domain(domains.Domain):
  """The toy domain's hooks (see dgan_jax/domains.py)."""

  def annotate(self, config, workdir: str) -> None:
    annotate(config, workdir)

  def test_dir(self, config, workdir: str) -> str:
    return test_dir(config, workdir)

  def finetune_dir(self, config, workdir: str) -> str:
    return finetune_dir(config, workdir)

  def extra_runs(self) -> dict:
    return {'supervised': supervised_run}

  def report_notes(self, config) -> list[str]:
    return [f'The {config.data.num_annotated} masks were made by an annotator model (the '
            'fully supervised segmenter trained on rendered image-mask pairs), standing in '
            'for a person.']
