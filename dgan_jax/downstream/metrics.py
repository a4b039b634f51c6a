"""The project's one mIoU, and DatasetGAN's 5-fold cross-validation protocol.

Per-class IoU over a set of images: intersection and union pixel counts of each class
are summed over all images first, then IoU_c = I_c / U_c (not a mean of per-image IoUs).
Pixels whose ground truth is IGNORE_LABEL (or any id >= num_classes) count for no class,
whatever is predicted there.

mIoU is the mean of IoU_c over the classes present in the prediction or in the ground
truth of the evaluated set (U_c > 0). A class absent from both has no IoU (NaN in the
per-class table, `null` in JSON) and is left out of the mean: predicting nothing of a
class that is not there is neither a success nor a failure. DatasetGAN's evaluation
script divides by U_c + 1e-8 instead, which counts such a class as IoU 0; `mean_iou`
computes that convention too (absent='zero') so both can be reported, but every
decision here (checkpoint selection, the reported mean and std) uses the first.

Cross-validation (DatasetGAN's test_deeplab_cross_validation.py): the test images, in
their sorted order, are cut into num_folds folds of floor(N / num_folds) consecutive
images (the N mod num_folds last images are never a validation fold). For fold k, every
epoch's checkpoint is scored on fold k; the best (ties: the earliest epoch) is then
scored on all the other images; the result is the mean and the standard deviation
(numpy's default, ddof 0) of those num_folds scores.
"""

import jax
import jax.numpy as jnp
import numpy as np

from dgan_jax.errors import InputError

IGNORE_LABEL = 255


def iou_counts(prediction, label, num_classes: int):
  """Per-image intersection and union pixel counts of every class.

  Args:
    prediction: [..., H, W] integer class ids.
    label: [..., H, W] integer ground-truth ids; ids outside 0..num_classes-1 (such as
      IGNORE_LABEL) mark pixels that are not counted.
    num_classes: C.

  Returns:
    (intersection, union): int32 [..., C] each.
  """
  prediction = jnp.asarray(prediction).astype(jnp.int32)
  label = jnp.asarray(label).astype(jnp.int32)
  batch_shape = prediction.shape[:-2]
  prediction = prediction.reshape((-1,) + prediction.shape[-2:])
  label = label.reshape((-1,) + label.shape[-2:])
  overflow = num_classes  # bincount slot for pixels that count for no class

  def one(p, l):
    valid = (l >= 0) & (l < num_classes)
    p = jnp.where(valid & (p >= 0) & (p < num_classes), p, overflow).ravel()
    l = jnp.where(valid, l, overflow).ravel()
    hit = jnp.bincount(jnp.where(p == l, l, overflow), length=num_classes + 1)
    predicted = jnp.bincount(p, length=num_classes + 1)
    actual = jnp.bincount(l, length=num_classes + 1)
    return hit[:num_classes], (predicted + actual - hit)[:num_classes]

  intersection, union = jax.vmap(one)(prediction, label)
  return (intersection.reshape(batch_shape + (num_classes,)),
          union.reshape(batch_shape + (num_classes,)))


def class_iou(intersection, union) -> np.ndarray:
  """Summed counts [C] -> IoU per class [C] float64, NaN where union is 0."""
  intersection = np.asarray(intersection, np.float64)
  union = np.asarray(union, np.float64)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(union > 0, intersection / np.where(union > 0, union, 1), np.nan)


def mean_iou(intersection, union, absent: str = 'skip') -> float:
  """Summed counts [C] -> mIoU. absent='skip': classes with union 0 are left out (NaN
  when every class is); absent='zero': they count as 0 (DatasetGAN's script)."""
  iou = class_iou(intersection, union)
  if absent == 'zero':
    return float(np.mean(np.nan_to_num(iou, nan=0.0)))
  if absent != 'skip':
    raise ValueError(f"absent must be 'skip' or 'zero', got {absent!r}")
  present = ~np.isnan(iou)
  return float(np.mean(iou[present])) if present.any() else float('nan')


def fold_splits(num_images: int, num_folds: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
  """-> per fold (validation indices, test indices) into the sorted test images."""
  size = num_images // num_folds
  if num_folds < 2 or size < 1:
    raise InputError(f'cross-validation needs at least {max(num_folds, 2)} test images for '
                     f'{num_folds} folds, got {num_images}')
  everything = np.arange(num_images)
  splits = []
  for k in range(num_folds):
    validation = everything[k * size:(k + 1) * size]
    splits.append((validation, np.setdiff1d(everything, validation)))
  return splits


def cross_validate(intersections, unions, num_folds: int = 5) -> dict:
  """The protocol above on per-image counts of every epoch's checkpoint.

  Args:
    intersections, unions: [E, N, C] counts of epoch e's predictions on test image n.
    num_folds: 5 in the paper.

  Returns:
    {'mean', 'std', 'folds': [{'fold', 'validation', 'test' (image indices),
    'selected_epoch', 'validation_miou' (per epoch), 'test_miou',
    'test_miou_absent_as_zero', 'test_class_iou' [C]}]}.
  """
  intersections = np.asarray(intersections, np.int64)
  unions = np.asarray(unions, np.int64)
  num_epochs, num_images, _ = intersections.shape
  folds = []
  for k, (validation, test) in enumerate(fold_splits(num_images, num_folds)):
    scores = np.asarray([mean_iou(intersections[e, validation].sum(0),
                                  unions[e, validation].sum(0)) for e in range(num_epochs)])
    best = int(np.argmax(np.where(np.isnan(scores), -np.inf, scores)))  # first maximum
    test_i, test_u = intersections[best, test].sum(0), unions[best, test].sum(0)
    folds.append({'fold': k, 'validation': validation.tolist(), 'test': test.tolist(),
                  'selected_epoch': best, 'validation_miou': scores.tolist(),
                  'test_miou': mean_iou(test_i, test_u),
                  'test_miou_absent_as_zero': mean_iou(test_i, test_u, absent='zero'),
                  'test_class_iou': class_iou(test_i, test_u).tolist()})
  results = np.asarray([f['test_miou'] for f in folds])
  return {'mean': float(np.mean(results)), 'std': float(np.std(results)), 'folds': folds}
