"""Baselines on the toy domain: a per-pixel colour classifier.

The classifier quantizes RGB into bins^3 cells and predicts, in each cell, the most
frequent class among the training pixels that fall in it. Its low mIoU on rendered cars
shows that the parts are not separable by colour alone.
"""

import numpy as np

from dgan_jax.downstream import metrics
from dgan_jax.toy import render


def _cells(images, bins: int) -> np.ndarray:
  """images [..., 3] uint8 -> flat cell index [...] in 0 .. bins^3 - 1."""
  q = np.asarray(images).astype(np.int64) * bins // 256
  return (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]


def colour_lookup(train_images, train_masks, bins: int = 16,
                  num_classes: int | None = None) -> np.ndarray:
  """Fits the colour classifier.

  Args:
    train_images: [N, H, W, 3] uint8.
    train_masks: [N, H, W] integer class ids.
    bins: quantization levels per channel.
    num_classes: C; default max id + 1.

  Returns:
    table [bins, bins, bins] uint8: the class each colour cell predicts (ties to the
    smaller id; cells without training pixels predict the most frequent class overall).
  """
  cells = _cells(train_images, bins).ravel()
  labels = np.asarray(train_masks).astype(np.int64).ravel()
  if cells.shape != labels.shape:
    raise ValueError(f'images {np.shape(train_images)} and masks {np.shape(train_masks)} '
                     'do not match')
  if num_classes is None:
    num_classes = int(labels.max()) + 1
  counts = np.bincount(cells * num_classes + labels, minlength=bins ** 3 * num_classes)
  counts = counts.reshape(bins ** 3, num_classes)
  table = np.argmax(counts, axis=1)   # first maximum: ties to the smaller id
  table[counts.sum(axis=1) == 0] = np.argmax(counts.sum(axis=0))
  return table.reshape(bins, bins, bins).astype(np.uint8)


def predict_colour(table: np.ndarray, images) -> np.ndarray:
  """table [bins, bins, bins], images [..., H, W, 3] uint8 -> masks [..., H, W] uint8."""
  return table.reshape(-1)[_cells(images, table.shape[0])]


def miou(pred, gt, num_classes: int) -> tuple[float, np.ndarray]:
  """pred, gt [N, H, W] -> (mIoU, IoU per class [C], NaN for classes absent from both).

  The project's metric (dgan_jax.downstream.metrics): counts summed over all images.
  """
  intersection, union = metrics.iou_counts(pred, gt, num_classes)
  intersection = np.asarray(intersection).reshape(-1, num_classes).sum(axis=0)
  union = np.asarray(union).reshape(-1, num_classes).sum(axis=0)
  return metrics.mean_iou(intersection, union), metrics.class_iou(intersection, union)


def colour_baseline(seed: int, num_train: int, num_test: int, size: int = 32,
                    bins: int = 16) -> dict:
  """Fits the colour classifier on render(seed) images 0..num_train-1 and scores it on
  render(seed + 1) images 0..num_test-1.

  Returns:
    {'miou', 'class_iou': {class name: IoU}, 'trained_on', 'num_train_images',
    'description'}.
  """
  train_images, train_masks = render.render(seed, np.arange(num_train), size)
  test_images, test_masks = render.render(seed + 1, np.arange(num_test), size)
  table = colour_lookup(train_images, train_masks, bins, render.NUM_CLASSES)
  mean, per_class = miou(predict_colour(table, test_images), test_masks, render.NUM_CLASSES)
  return {
      'miou': mean,
      'class_iou': {name: (None if np.isnan(v) else float(v))
                    for name, v in zip(render.CLASS_NAMES, per_class)},
      'trained_on': f'the pixels of {num_train} rendered images, RGB in {bins}^3 cells',
      'num_train_images': num_train,
      'description': (
          f'Per-pixel colour classifier: RGB quantized into {bins}^3 cells, each predicting '
          f'the most frequent class of its {num_train} training images\' pixels '
          f'(render seed {seed}); scored on {num_test} other images (seed {seed + 1}) at '
          f'{size} px. mIoU {mean:.3f}: the parts are not separable by colour.'),
  }
