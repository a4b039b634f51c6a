"""The colour classifier baseline of the toy domain."""

import numpy as np
import pytest

from dgan_jax.toy import baselines
from dgan_jax.toy import render


def _hand_example():
  """Two 2x2 images and their masks."""
  images = np.array([[[(0, 0, 0), (0, 0, 0)], [(255, 255, 255), (10, 200, 10)]],
                     [[(5, 5, 5), (130, 0, 0)], [(200, 100, 0), (127, 127, 127)]]], np.uint8)
  masks = np.array([[[1, 2], [0, 3]],
                    [[2, 4], [3, 2]]], np.uint8)
  return images, masks


def test_lookup_on_hand_example():
  images, masks = _hand_example()
  table = baselines.colour_lookup(images, masks, bins=2)
  assert table.shape == (2, 2, 2) and table.dtype == np.uint8
  # Cell (r, g, b) with 0 = below 128, 1 = from 128.
  assert table[0, 0, 0] == 2   # classes 1, 2, 2, 2
  assert table[1, 1, 1] == 0   # white
  assert table[0, 1, 0] == 3   # green
  assert table[1, 0, 0] == 3   # classes 4 and 3 once each: the smaller id
  # Empty cells: the most frequent class overall (2: three pixels, 3: two).
  for cell in [(0, 0, 1), (0, 1, 1), (1, 0, 1), (1, 1, 0)]:
    assert table[cell] == 2, cell


def test_lookup_tie_overall_and_bins():
  # bins 16: levels 0..15 -> cell 0, 16..31 -> 1, 255 -> 15.
  images = np.array([[[(15, 0, 0), (16, 0, 0), (255, 255, 255), (255, 255, 240)]]], np.uint8)
  masks = np.array([[[5, 1, 3, 1]]], np.uint8)
  table = baselines.colour_lookup(images, masks, bins=16)
  assert table.shape == (16, 16, 16)
  assert table[0, 0, 0] == 5
  assert table[1, 0, 0] == 1
  assert table[15, 15, 15] == 1   # 3 and 1 once each
  assert table[7, 7, 7] == 1      # empty: class 1 is the most frequent overall
  assert (table == 1).sum() == 16 ** 3 - 1
  # Every class tied overall: empty cells predict the smallest id.
  table = baselines.colour_lookup(images[:, :, :3], np.array([[[4, 2, 6]]]), bins=16)
  assert table[7, 7, 7] == 2


def test_predict_colour():
  images, masks = _hand_example()
  table = baselines.colour_lookup(images, masks, bins=2)
  np.testing.assert_array_equal(baselines.predict_colour(table, images),
                                [[[2, 2], [0, 3]], [[2, 3], [3, 2]]])
  new = np.array([[[(0, 0, 255), (250, 250, 250), (20, 140, 90)]]], np.uint8)
  prediction = baselines.predict_colour(table, new)
  assert prediction.shape == (1, 1, 3)
  np.testing.assert_array_equal(prediction, [[[2, 0, 3]]])


def test_miou_by_hand():
  prediction = np.array([[[0, 1], [1, 1]]])
  truth = np.array([[[0, 0], [1, 2]]])
  mean, per_class = baselines.miou(prediction, truth, 4)
  # class 0: I 1, U 2; class 1: I 1, U 3; class 2: I 0, U 1; class 3 absent.
  np.testing.assert_allclose(per_class[:3], [0.5, 1 / 3, 0.0])
  assert np.isnan(per_class[3])
  assert mean == pytest.approx((0.5 + 1 / 3) / 3)
  # Counts are summed over images before dividing.
  mean, per_class = baselines.miou(np.array([[[0]], [[1]]]), np.array([[[0]], [[0]]]), 2)
  np.testing.assert_allclose(per_class, [0.5, 0.0])


def test_colour_baseline_is_poor_on_rendered_cars():
  """The README's row: the toy run's seed, 400 training renders, 100 test renders:
  12.6% mIoU, per class 82.8 / 0.5 / 0.9 / 0.0 / 0.0 / 0.1 / 3.7 (background everywhere
  would give about 12%)."""
  from dgan_jax.toy import stages as toy_stages  # pylint: disable=import-outside-toplevel
  result = baselines.colour_baseline(toy_stages.COLOUR_SEED, 400, 100, 32)
  assert list(result['class_iou']) == list(render.CLASS_NAMES)
  assert round(100 * result['miou'], 1) == 12.6, result
  assert [round(100 * v, 1) for v in result['class_iou'].values()] == [
      82.8, 0.5, 0.9, 0.0, 0.0, 0.1, 3.7]
  assert result['miou'] == pytest.approx(np.mean(list(result['class_iou'].values())))
  assert 'mIoU' in result['description']
