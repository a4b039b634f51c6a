"""Majority vote, JS divergence and image scores against direct numpy computations."""

import numpy as np

from dgan_jax import uncertainty


def test_majority_vote_ties_go_to_smallest_id():
  labels = np.array([[2, 0, 1, 3],
                     [2, 1, 1, 3],
                     [0, 1, 2, 0],
                     [0, 0, 2, 1]])  # [M=4, P=4]
  # pixel 0: 2,2,0,0 tie -> 0; pixel 1: 0,1,1,0 tie -> 0; pixel 2: 1,1,2,2 -> 1;
  # pixel 3: 3,3,0,1 -> 3
  np.testing.assert_array_equal(uncertainty.majority_vote(labels, 4), [0, 0, 1, 3])


def test_js_divergence_matches_direct_computation():
  rng = np.random.RandomState(0)
  logits = rng.standard_normal((5, 3, 7, 4)) * 3
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  probs[0, 0, 0] = [1, 0, 0, 0]  # exercises 0 log 0
  expected = np.zeros((3, 7))
  for i in range(3):
    for j in range(7):
      p = probs[:, i, j]
      mean = p.mean(0)
      h_mean = -sum(x * np.log(x) for x in mean if x > 0)
      mean_h = np.mean([-sum(x * np.log(x) for x in member if x > 0) for member in p])
      expected[i, j] = h_mean - mean_h
  np.testing.assert_allclose(uncertainty.js_divergence(probs), expected, atol=1e-5)
  # Agreeing members: zero; two confident members that disagree: log 2.
  same = np.tile(probs[:1], (5, 1, 1, 1))
  np.testing.assert_allclose(uncertainty.js_divergence(same), 0, atol=1e-6)
  opposed = np.array([[1.0, 0.0], [0.0, 1.0]])[:, None, :]
  np.testing.assert_allclose(uncertainty.js_divergence(opposed), [np.log(2)], atol=1e-6)


def test_image_scores_top_fraction():
  scores = np.arange(40, dtype=np.float32).reshape(1, 4, 10)
  scores = np.concatenate([scores, scores[:, ::-1] * 2])
  # top 10% of 40 pixels = 4 values: 36..39 -> 37.5; doubled -> 75
  np.testing.assert_allclose(uncertainty.image_scores(scores, 0.1), [37.5, 75.0])
  np.testing.assert_allclose(uncertainty.image_scores(scores, 0.25), [34.5, 69.0])
