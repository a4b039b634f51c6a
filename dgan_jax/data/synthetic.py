"""Stand-in annotations for smoke runs and tests: masks from image brightness.

With no human annotator (configs/test.py, CI), the `train_interpreter` stage can label
the sample stage's images by brightness: class k holds the pixels whose grey level lies
between the k-th and (k+1)-th of num_classes quantiles over all images. The labels are
a function of the generated image, hence learnable from the generator's features.
"""

import os
import shutil

import numpy as np

from dgan_jax import io
from dgan_jax.bigdatasetgan import layout
from dgan_jax.data import annotations
from dgan_jax.data import images as image_utils
from dgan_jax.errors import InputError


def brightness_masks(images: np.ndarray, num_classes: int) -> np.ndarray:
  """images [N, H, W, 3] uint8 -> [N, H, W] uint8 class ids in 0..num_classes-1."""
  grey = images.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
  thresholds = np.quantile(grey, np.arange(1, num_classes) / num_classes)
  return np.searchsorted(thresholds, grey, side='right').astype(np.uint8)


def write_annotations(sample_dir: str, out_dir: str, count: int, num_classes: int,
                      shape: tuple[int, int]) -> str:
  """Writes a plain-format annotation folder (mask_{i}.png, image_{i}.png, latents.npy)
  for the first `count` images of the sample stage's folder. shape: (H', W) of the
  labelled grid. Returns out_dir."""
  images = []
  for i in range(count):
    path = os.path.join(sample_dir, f'image_{i}.png')
    picture = image_utils.read_rgb(path)
    images.append(np.stack([annotations.resize_nearest(picture[..., c], *shape)
                            for c in range(3)], axis=-1))
  masks = brightness_masks(np.stack(images), num_classes)
  with io.atomic_dir(out_dir) as tmp:
    for i, mask in enumerate(masks):
      image_utils.save_png(os.path.join(tmp, f'mask_{i}.png'), mask)
      shutil.copyfile(os.path.join(sample_dir, f'image_{i}.png'),
                      os.path.join(tmp, f'image_{i}.png'))
    shutil.copyfile(os.path.join(sample_dir, 'latents.npy'), os.path.join(tmp, 'latents.npy'))
  return out_dir


def write_layout_annotations(sample_root: str, out_root: str, subset: str) -> str:
  """A copy of the sample stage's BigDatasetGAN layout (images/, latents/) with
  brightness masks in annotations/ (nonzero: the brighter half of all pixels)."""
  image_paths = sorted(
      os.path.join(dirpath, name)
      for dirpath, _, names in os.walk(os.path.join(sample_root, 'images', subset))
      for name in names if name.endswith('.png'))
  if not image_paths:
    raise InputError(f'{sample_root}/images/{subset}: no samples to label (run the sample '
                     'stage first)')
  pictures = [image_utils.read_rgb(path) for path in image_paths]
  masks = brightness_masks(np.stack(pictures), 2)
  with io.atomic_dir(out_root) as tmp:
    for path, mask in zip(image_paths, masks):
      folder = os.path.basename(os.path.dirname(path))
      stem = os.path.splitext(os.path.basename(path))[0]
      source = layout.paths(sample_root, subset, folder, stem)
      target = layout.paths(tmp, subset, folder, stem)
      for key in target:
        os.makedirs(os.path.dirname(target[key]), exist_ok=True)
      image_utils.save_png(target['annotation'], mask * 255)
      shutil.copyfile(source['image'], target['image'])
      shutil.copyfile(source['latent'], target['latent'])
  return out_root


def write_layout_test_set(folder: str, g, images: np.ndarray, inputs: dict) -> None:
  """Stand-in test images of a class-conditional generator in BigDatasetGAN's layout
  (images/, latents/, annotations/ with brightness masks), the class in each name."""
  subset = layout.subset_name(g)
  masks = brightness_masks(images, 2)
  for i, (image, mask, class_id, z) in enumerate(zip(images, masks, inputs['class_id'],
                                                     inputs['z'])):
    stem = layout.write_sample(folder, subset, int(class_id), i, g.num_classes, image, z)
    path = layout.paths(folder, subset, layout.class_folder(int(class_id), g.num_classes),
                        stem)['annotation']
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image_utils.save_png(path, mask * 255)
