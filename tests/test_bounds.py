"""tests/bounds.py, the bounds cross-program comparisons assert: each passes what the
README allows and fails on what it does not (hand-made cases)."""

import numpy as np
import pytest

import bounds


def test_images_within_one_level():
  a = np.array([[0, 128, 255]], np.uint8)
  bounds.assert_images_within_one_level(a, np.array([[1, 127, 254]], np.uint8))
  bounds.assert_images_within_one_level(a, np.array([[0., 129., 255.]]))   # whole floats
  with pytest.raises(AssertionError, match='1 values differ by more than one level'):
    bounds.assert_images_within_one_level(a, np.array([[0, 130, 255]], np.uint8))
  with pytest.raises(AssertionError, match='levels 0..255'):
    bounds.assert_images_within_one_level(a, np.array([[0, 128.5, 255]]))
  with pytest.raises(AssertionError):
    bounds.assert_images_within_one_level(a, a[:, :2])


def test_top_two_gap_and_scores():
  np.testing.assert_allclose(bounds.top_two_gap([[3., 1., 2.5], [0., -np.inf, -np.inf]]),
                             [0.5, np.inf])
  assert bounds.top_two_gap([[-np.inf, -np.inf]])[0] == 0
  np.testing.assert_array_equal(bounds.top_two_gap(bounds.binary_scores([-2., 0.5])), [2., .5])
  # Cumulative (0.2, 0.5, 0.5, 1.0): token 2 has no interval; u = 0.45 draws token 1,
  # 0.05 from the end of its interval, so the top two differ by 0.05 + 0.05.
  scores = bounds.inversion_scores([0.2, 0.5, 0.5, 1.0], 0.45)
  assert scores.argmax() == 1
  assert bounds.top_two_gap(scores) == pytest.approx(0.1)
  assert bounds.inversion_scores([0.2, 0.5, 0.5, 1.0], 0.55).argmax() == 3
  assert bounds.top_two_gap(bounds.inversion_scores([0.2, 0.5, 0.5, 1.0], 0.5)) == 0  # a tie


def test_equal_where_decided_passes_and_fails_when_it_should():
  scores = np.array([[0., 1.], [0., 1e-7], [2., 0.], [0., 3.]])   # position 1: a near tie
  reference = np.array([1, 1, 0, 1])
  # A flip at the near tie is allowed; the share decided is 3 of 4.
  assert bounds.assert_equal_where_decided(np.array([1, 0, 0, 1]), reference, scores, 1e-5,
                                           min_share=0.75) == 0.75
  with pytest.raises(AssertionError, match='1 of 3 decided positions differ, the first at'):
    bounds.assert_equal_where_decided(np.array([1, 1, 1, 1]), reference, scores, 1e-5,
                                      min_share=0.75)
  with pytest.raises(AssertionError, match='only 75.00% of 4 positions are decided'):
    bounds.assert_equal_where_decided(reference, reference, scores, 1e-5, min_share=0.99)
  with pytest.raises(AssertionError):   # a margin as large as the gaps decides nothing
    bounds.assert_equal_where_decided(reference, reference, scores, 5.0, min_share=0.5)


def test_members_and_sequences():
  # Two members vote on three pixels: pixel 1 is clear to member 0 only.
  members = np.array([[[0., 1.], [0., 1.], [1., 0.]],
                      [[0., 2.], [0., 1e-9], [3., 0.]]])
  np.testing.assert_array_equal(bounds.decided(members, 1e-6, member_axis=0),
                                [True, False, True])
  # A sequence whose third token was a near tie: it and everything after are not compared.
  sequence = np.array([[[0., 1.], [1., 0.], [0., 1e-9], [0., 1.], [1., 0.]]])
  np.testing.assert_array_equal(bounds.decided(sequence, 1e-6, sequential_axis=1),
                                [[True, True, False, False, False]])
  ours, reference = np.array([[1, 0, 0, 0, 1]]), np.array([[1, 0, 1, 1, 0]])
  bounds.assert_equal_where_decided(ours, reference, sequence, 1e-6, min_share=0.4,
                                    sequential_axis=1)
  with pytest.raises(AssertionError, match='decided positions differ'):
    bounds.assert_equal_where_decided(np.array([[0, 0, 1, 1, 0]]), reference, sequence, 1e-6,
                                      min_share=0.4, sequential_axis=1)
