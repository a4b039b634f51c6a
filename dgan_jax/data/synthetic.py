"""Stand-in annotations for smoke runs and tests: masks from image brightness.

With no human annotator (configs/test.py, CI), the `train_interpreter` stage can label
the sample stage's images by brightness: class k holds the pixels whose grey level lies
between the k-th and (k+1)-th of num_classes quantiles over all images. The labels are
a function of the generated image, hence learnable from the generator's features.
"""

import os
import shutil

import numpy as np
from PIL import Image

from dgan_jax.data import annotations
from dgan_jax.data import images as image_utils


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
    with Image.open(path) as image:
      picture = np.asarray(image.convert('RGB'))
    images.append(np.stack([annotations.resize_nearest(picture[..., c], *shape)
                            for c in range(3)], axis=-1))
  masks = brightness_masks(np.stack(images), num_classes)
  tmp = out_dir + '.partial'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  for i, mask in enumerate(masks):
    image_utils.save_png(os.path.join(tmp, f'mask_{i}.png'), mask)
    shutil.copyfile(os.path.join(sample_dir, f'image_{i}.png'),
                    os.path.join(tmp, f'image_{i}.png'))
  shutil.copyfile(os.path.join(sample_dir, 'latents.npy'), os.path.join(tmp, 'latents.npy'))
  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  os.rename(tmp, out_dir)
  return out_dir
