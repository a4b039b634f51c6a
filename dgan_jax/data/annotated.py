"""Annotated samples in any folder format, as the labelers and the downstream stages use
them: what regenerates each sample, its mask, the stored image.

  'plain', 'datasetgan'  dgan_jax/data/annotations.py: image_{i}.png, mask_{i}.png and
                         latents.npy (the sample stage's format for unconditional
                         generators), or DatasetGAN's image_mask{i}.npy and a latents file
  'bigdatasetgan'        dgan_jax/bigdatasetgan/layout.py: annotations/<subset>/<wnid>/
                         <stem>.png, latents/..., images/..., the class in the stem (the
                         sample stage's format for class-conditional generators)

A folder with an annotations/ subfolder is in BigDatasetGAN's layout; any other is read
by data/annotations.py.

Generators that encode images (VQGAN: `encodes_images`) need no latents: every mask of
either format is paired with its image, which is centre-cropped to a square and resized
to the generator's resolution (the mask, cropped alike, to the labelled grid).
"""

import dataclasses
import os
from typing import Callable

import numpy as np
from absl import logging

from dgan_jax import io
from dgan_jax import labelers
from dgan_jax.bigdatasetgan import layout as layout_lib
from dgan_jax.data import annotations
from dgan_jax.data import images as image_utils
from dgan_jax.data import synthetic
from dgan_jax.errors import InputError

LAYOUT = 'bigdatasetgan'


@dataclasses.dataclass
class AnnotatedSet:
  """The annotated samples of one folder, in the format's order.

  inputs: the generator inputs that regenerate them (`Sampling.from_annotations`), [N, ...]
  class_ids: [N] int32 for class-conditional samples, else None.
  """
  folder: str
  format: str
  names: list[str]
  inputs: dict[str, np.ndarray]
  class_ids: np.ndarray | None
  latents_path: str
  read_mask: Callable[[int], np.ndarray]        # i -> [H', W] uint8 on the labelled grid
  read_image: Callable[[int], np.ndarray | None]   # i -> the stored image, or None

  def __len__(self) -> int:
    return len(self.names)

  def masks(self, indices) -> np.ndarray:
    """-> [len(indices), H', W] uint8 class ids."""
    return np.stack([self.read_mask(int(i)) for i in indices])

  def image(self, index: int) -> np.ndarray | None:
    return self.read_image(index)


def detect_format(folder: str) -> str:
  if os.path.isdir(os.path.join(folder, 'annotations')):
    return LAYOUT
  return annotations.detect_format(folder)


def sample_format(g) -> str:
  """The format the sample stage writes for generator g."""
  return LAYOUT if g.num_classes else 'plain'


def read(folder: str, g, sampling, data_config, grid: tuple[int, int]) -> AnnotatedSet:
  """The annotated samples of `folder` with masks on the labelled `grid` (H', W)."""
  if not folder or not os.path.isdir(folder):
    raise InputError(f'config.data.annotation_dir: {folder or "(empty)"} is not a directory')
  fmt = detect_format(folder)
  if g.encodes_images:
    return _read_images(folder, fmt, g, sampling, data_config, grid)
  if fmt == LAYOUT:
    return _read_layout(folder, g, sampling, data_config, grid)
  if g.num_classes:
    raise InputError(f'{folder}: a class-conditional generator reads annotations in '
                     "BigDatasetGAN's layout (annotations/<subset>/<wnid>/<stem>.png with "
                     'latents/<subset>/<wnid>/<stem>.npy)')
  out = annotations.load(folder, data_config, sampling.num_ws, grid, g.latent_size)
  ids = np.arange(len(out['masks']))
  masks, pictures = out['masks'], out['images']
  return AnnotatedSet(
      folder, out['format'], [os.path.basename(p) for p in out['mask_paths']],
      sampling.from_annotations(out['latents'], data_config.latent_kind, ids, None), None,
      out['latents_path'], lambda i: masks[i], lambda i: pictures[i])


def _read_layout(folder, g, sampling, data_config, grid) -> AnnotatedSet:
  if data_config.num_classes != 2:
    raise InputError(f'{folder}: BigDatasetGAN masks are foreground/background; '
                     f'config.data.num_classes must be 2, not {data_config.num_classes}')
  if grid[0] != grid[1]:
    raise InputError(f'{folder}: BigDatasetGAN masks are square; config.data.crop_rows and '
                     f'feature_size must keep the labelled grid square, not {grid}')
  subset = layout_lib.subset_name(g)
  data = layout_lib.read(folder, subset, g.latent_size, g.num_classes)
  inputs = sampling.from_annotations(data.latents, 'z', np.arange(len(data)), data.class_ids)
  return AnnotatedSet(folder, LAYOUT, data.names, inputs, data.class_ids,
                      os.path.join(folder, 'latents', subset),
                      lambda i: layout_lib.read_mask(data.mask_paths[i], grid[0]), data.image)


def _read_images(folder, fmt, g, sampling, data_config, grid) -> AnnotatedSet:
  if data_config.crop_rows:
    raise InputError(f'config.data.crop_rows: a {g.family} generator encodes whole square '
                     'images; leave crop_rows empty')
  if grid[0] != grid[1]:
    raise InputError(f'config.data.feature_size: a {g.family} generator labels a square '
                     f'grid, not {grid}')
  if fmt == LAYOUT:
    if data_config.num_classes != 2:
      raise InputError(f'{folder}: BigDatasetGAN masks are foreground/background; '
                       f'config.data.num_classes must be 2, not {data_config.num_classes}')
    pictures, masks, class_ids, names = layout_lib.read_pairs(folder)
  else:
    pictures, masks, class_ids = read_pairs(folder, data_config.num_annotated,
                                            data_config.num_classes,
                                            data_config.min_segment_pixels)
    names = [os.path.basename(annotations.image_path(folder, i, fmt))
             for i in range(len(pictures))]
  squares = [_centre_square(p) for p in pictures]
  images = np.stack([image_utils.resize_image(p[rows, cols], g.resolution, g.resolution)
                     for p, (rows, cols) in zip(pictures, squares)])
  grid_masks = [annotations.resize_nearest(m[rows, cols], *grid)
                for m, (rows, cols) in zip(masks, squares)]
  return AnnotatedSet(folder, fmt, names, sampling.from_images(images, class_ids), class_ids,
                      folder, lambda i: grid_masks[i], lambda i: images[i])


def _centre_square(picture: np.ndarray) -> tuple[slice, slice]:
  """The rows and columns of an [h, w, ...] array's centred square of side min(h, w)."""
  h, w = picture.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  return slice(top, top + side), slice(left, left + side)


def write_samples(folder: str, g, images: np.ndarray, inputs: dict,
                  grid_columns: int) -> dict:
  """The sample stage's output in g's format (`sample_format`): the images to annotate
  with what regenerates them, a grid (samples.png). Returns info.json's format fields."""
  z = np.asarray(inputs['z'], np.float32)
  if sample_format(g) == LAYOUT:
    subset = layout_lib.subset_name(g)
    class_ids = np.asarray(inputs['class_id'])
    counts = {}
    for picture, class_id, latent in zip(images, class_ids, z):
      number = counts.setdefault(int(class_id), 0)
      counts[int(class_id)] += 1
      layout_lib.write_sample(folder, subset, int(class_id), number, g.num_classes, picture,
                              latent)
    for class_id in counts:
      os.makedirs(os.path.join(folder, 'annotations', subset,
                               layout_lib.class_folder(class_id, g.num_classes)))
    grid_columns = max(counts.values())   # one row per class
    record = {'format': LAYOUT, 'subset': subset,
              'masks': f'annotations/{subset}/<wnid>/<stem>.png, nonzero = foreground'}
  else:
    for i, picture in enumerate(images):
      image_utils.save_png(os.path.join(folder, f'image_{i}.png'), picture)
    np.save(os.path.join(folder, 'latents.npy'), z)
    record = {'format': 'plain', 'latent_kind': 'z',
              'masks': 'mask_{i}.png (class ids), beside image_{i}.png'}
  for name, array in g.files_for_annotators().items():
    np.save(os.path.join(folder, name), np.asarray(array, np.float32))
  image_utils.save_png(os.path.join(folder, 'samples.png'),
                       image_utils.grid(images, grid_columns))
  return record


def has_masks(folder: str) -> bool:
  if detect_format(folder) == LAYOUT:
    mask_dir = os.path.join(folder, 'annotations')
    return any(name.endswith('.png') for _, _, names in os.walk(mask_dir) for name in names)
  return os.path.exists(annotations.mask_path(folder, 0, annotations.detect_format(folder)))


def training_folder(config, workdir: str, g, grid: tuple[int, int]) -> str:
  """The folder the labeler trains on: config.data.annotation_dir, else the sample
  stage's workdir/annotate; with config.data.synthetic_masks and no masks there, a copy
  labelled by brightness (workdir/annotate_synthetic; smoke runs)."""
  folder = config.data.annotation_dir or os.path.join(workdir, io.ANNOTATE)
  if config.data.synthetic_masks and os.path.isdir(folder) and not has_masks(folder):
    out = os.path.join(workdir, io.ANNOTATE_SYNTHETIC)
    if detect_format(folder) == LAYOUT:
      synthetic.write_layout_annotations(folder, out, layout_lib.subset_name(g))
    else:
      synthetic.write_annotations(folder, out, config.data.num_annotated,
                                  config.data.num_classes, grid)
    logging.info('train_interpreter: no masks; labelled the samples by brightness in %s', out)
    return out
  return folder


def read_pairs(folder: str, count: int, num_classes: int,
               min_segment_pixels: int = annotations.MIN_SEGMENT_PIXELS,
               limit: int | None = None):
  """The annotated images and their masks at the image size, for the few-shot baseline
  and the report: -> (images: list of uint8 [h, w, 3], masks: list of uint8 [h, w],
  class ids [N] int32 or None). Plain/DatasetGAN folders: ids 0..count-1, masks checked
  against num_classes and cleaned of small segments; the layout: every mask (1 =
  foreground). `limit`: at most that many."""
  if not folder or not os.path.isdir(folder):
    raise InputError(f'config.data.annotation_dir: {folder or "(empty)"} is not a '
                     'directory (the few-shot baseline trains on its annotated images)')
  if detect_format(folder) == LAYOUT:
    images, masks, class_ids, _ = layout_lib.read_pairs(folder, limit)
    return images, masks, class_ids
  fmt = annotations.detect_format(folder)
  images, masks = [], []
  for i in range(count if limit is None else min(count, limit)):
    picture = annotations.image_path(folder, i, fmt)
    if not os.path.isfile(picture):
      raise InputError(f'{picture}: missing; the few-shot baseline needs the annotated '
                       f'images 0..{count - 1} next to their masks')
    image = image_utils.read_rgb(picture)
    images.append(image)
    masks.append(annotations.prepare_mask(annotations.mask_path(folder, i, fmt),
                                          image.shape[:2], num_classes, min_segment_pixels))
  return images, masks, None


def used_folder(config, workdir: str) -> str:
  """The annotated images the labeler learned from: config.data.annotation_dir, or the
  folder the train_interpreter stage recorded in its info.json (the stand-in masks of
  smoke runs live elsewhere), or workdir/annotate."""
  if config.data.annotation_dir:
    return config.data.annotation_dir
  record = io.read_json(os.path.join(workdir, labelers.from_config(config).folder,
                                     'info.json'))
  return (record or {}).get('annotation_dir') or os.path.join(workdir, io.ANNOTATE)
