"""The mIoU against hand-computed examples; the fold protocol on a hand-made score table."""

import numpy as np
import pytest

from dgan_jax.downstream import metrics
from dgan_jax.errors import InputError

X = metrics.IGNORE_LABEL


def test_iou_by_hand_with_absent_and_ignored_classes():
  # 4 classes; class 3 is neither predicted nor in the ground truth; two pixels ignored.
  label = np.asarray([[0, 0, 1, 1],
                      [0, 2, 2, X],
                      [0, 0, 2, X]])
  prediction = np.asarray([[0, 1, 1, 1],
                           [0, 2, 1, 2],
                           [2, 0, 2, 0]])
  intersection, union = metrics.iou_counts(prediction, label, 4)
  # Counting the 10 pixels whose label is a class (the two X pixels count for nothing):
  #   class 0: label {(0,0),(0,1),(1,0),(2,0),(2,1)}, prediction {(0,0),(1,0),(2,1)}
  #            -> I 3, U 5
  #   class 1: label {(0,2),(0,3)}, prediction {(0,1),(0,2),(0,3),(1,2)} -> I 2, U 4
  #   class 2: label {(1,1),(1,2),(2,2)}, prediction {(1,1),(2,0),(2,2)} -> I 2, U 4
  np.testing.assert_array_equal(intersection, [3, 2, 2, 0])
  np.testing.assert_array_equal(union, [5, 4, 4, 0])
  iou = metrics.class_iou(intersection, union)
  np.testing.assert_allclose(iou[:3], [3 / 5, 2 / 4, 2 / 4])
  assert np.isnan(iou[3])
  assert metrics.mean_iou(intersection, union) == pytest.approx((0.6 + 0.5 + 0.5) / 3)
  # DatasetGAN's script: the absent class counts as 0.
  assert metrics.mean_iou(intersection, union, absent='zero') == pytest.approx(1.6 / 4)


def test_a_class_only_predicted_counts_as_zero():
  label = np.zeros((2, 2), int)
  prediction = np.asarray([[0, 1], [0, 0]])
  intersection, union = metrics.iou_counts(prediction, label, 3)
  np.testing.assert_array_equal(intersection, [3, 0, 0])
  np.testing.assert_array_equal(union, [4, 1, 0])
  assert metrics.mean_iou(intersection, union) == pytest.approx((3 / 4 + 0) / 2)


def test_counts_are_summed_over_images_before_dividing():
  # Image A: class 1 is 1 pixel, missed. Image B: class 1 is 3 pixels, all found.
  labels = np.asarray([[[1, 0], [0, 0]], [[1, 1], [1, 0]]])
  predictions = np.asarray([[[0, 0], [0, 0]], [[1, 1], [1, 0]]])
  intersection, union = metrics.iou_counts(predictions, labels, 2)
  assert intersection.shape == (2, 2)  # per image
  np.testing.assert_array_equal(intersection, [[3, 0], [1, 3]])
  np.testing.assert_array_equal(union, [[4, 1], [1, 3]])
  total_i, total_u = intersection.sum(0), union.sum(0)
  # Class 1 over the set: 3 / 4, not the mean of the per-image 0 and 1.
  np.testing.assert_allclose(metrics.class_iou(total_i, total_u), [4 / 5, 3 / 4])
  assert metrics.mean_iou(total_i, total_u) == pytest.approx((0.8 + 0.75) / 2)


def test_nothing_present_has_no_miou():
  assert np.isnan(metrics.mean_iou(np.zeros(3), np.zeros(3)))


def test_fold_splits_follow_the_sorted_order():
  splits = metrics.fold_splits(11, 5)
  assert [v.tolist() for v, _ in splits] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
  for validation, test in splits:
    assert sorted(validation.tolist() + test.tolist()) == list(range(11))
    assert 10 in test  # the remainder is never a validation fold
  with pytest.raises(InputError, match='at least 5 test images'):
    metrics.fold_splits(4, 5)


def _table(scores):
  """One class, 10 pixels per image: image n at epoch e has IoU scores[e][n]; the set's
  IoU is then the mean of its images' scores."""
  scores = np.asarray(scores)
  intersections = np.rint(scores * 10).astype(int)[..., None]
  unions = np.full_like(intersections, 10)
  return intersections, unions


def test_cross_validation_on_a_hand_made_table():
  # 3 epochs x 10 images -> 5 folds of 2 images.
  scores = [
      # fold:  0         1         2         3         4
      [0.9, 0.9, 0.1, 0.1, 0.5, 0.5, 0.2, 0.2, 0.3, 0.3],   # epoch 0
      [0.1, 0.1, 0.8, 0.8, 0.5, 0.5, 0.6, 0.6, 0.3, 0.3],   # epoch 1
      [0.2, 0.2, 0.2, 0.2, 0.4, 0.4, 0.7, 0.7, 0.3, 0.3],   # epoch 2
  ]
  intersections, unions = _table(scores)
  result = metrics.cross_validate(intersections, unions, 5)
  # Fold 0 picks epoch 0, fold 1 epoch 1, fold 2 ties epochs 0 and 1 (0.5) -> the
  # earliest, fold 3 epoch 2, fold 4 ties all three -> epoch 0.
  assert [f['selected_epoch'] for f in result['folds']] == [0, 1, 0, 2, 0]
  # Each chosen epoch scored on the 8 other images (mean of their scores):
  expected = [
      (0.1 + 0.1 + 0.5 + 0.5 + 0.2 + 0.2 + 0.3 + 0.3) / 8,   # epoch 0 without fold 0
      (0.1 + 0.1 + 0.5 + 0.5 + 0.6 + 0.6 + 0.3 + 0.3) / 8,   # epoch 1 without fold 1
      (0.9 + 0.9 + 0.1 + 0.1 + 0.2 + 0.2 + 0.3 + 0.3) / 8,   # epoch 0 without fold 2
      (0.2 + 0.2 + 0.2 + 0.2 + 0.4 + 0.4 + 0.3 + 0.3) / 8,   # epoch 2 without fold 3
      (0.9 + 0.9 + 0.1 + 0.1 + 0.5 + 0.5 + 0.2 + 0.2) / 8,   # epoch 0 without fold 4
  ]
  np.testing.assert_allclose([f['test_miou'] for f in result['folds']], expected)
  assert result['mean'] == pytest.approx(np.mean(expected))
  assert result['std'] == pytest.approx(np.sqrt(np.mean((np.asarray(expected)
                                                         - np.mean(expected)) ** 2)))
  np.testing.assert_allclose(result['folds'][1]['validation_miou'], [0.1, 0.8, 0.2])
  assert result['folds'][3]['test'] == [0, 1, 2, 3, 4, 5, 8, 9]


def test_selection_uses_the_class_mean_not_pixel_accuracy():
  # Two classes; epoch 0 gets the big class right only, epoch 1 finds both halfway.
  # Per image (validation fold = images 0, 1): counts [I0, I1] / [U0, U1].
  i = np.asarray([[[9, 0]] * 5, [[5, 1]] * 5])
  u = np.asarray([[[10, 1]] * 5, [[10, 2]] * 5])
  result = metrics.cross_validate(i, u, 5)
  # epoch 0: (0.9 + 0) / 2 = 0.45; epoch 1: (0.5 + 0.5) / 2 = 0.5
  assert all(f['selected_epoch'] == 1 for f in result['folds'])
  assert result['mean'] == pytest.approx(0.5) and result['std'] == pytest.approx(0)
