"""The README's bounds for results of two differently compiled programs (another batch
size, the CLI against the library, XLA against PyTorch): their floats round differently,
on another CPU differently again, so such results are compared within a stated bound,
never bitwise.

- Images (uint8): within one level of 255.
- Discrete decisions (labels, tokens, code indices): equal wherever the scores that decide
  them are further from a tie than the float error can move them, and nearly every
  position must be so decided. If every score of two programs is within e of the other's,
  an argmax whose best and second-best scores differ by more than 2 e is the same in both.
"""

import numpy as np


def assert_images_within_one_level(ours, reference) -> None:
  """ours, reference: images of integer levels 0..255 (uint8, or floats holding whole
  numbers) of one shape -> passes when no value differs by more than one level."""
  ours, reference = np.asarray(ours), np.asarray(reference)
  assert ours.shape == reference.shape, (ours.shape, reference.shape)
  for name, image in (('ours', ours), ('reference', reference)):
    assert np.array_equal(image, np.round(image)) and image.min() >= 0 and image.max() <= 255, (
        f'{name}: not an image of levels 0..255')
  difference = np.abs(ours.astype(np.int64) - reference.astype(np.int64))
  assert difference.max() <= 1, (f'{int((difference > 1).sum())} values differ by more than '
                                 f'one level (at most {int(difference.max())})')


def top_two_gap(scores, axis: int = -1) -> np.ndarray:
  """scores [..., K] (K >= 2; -inf allowed) -> [...]: best minus second best."""
  ordered = np.sort(np.asarray(scores, np.float64), axis=axis)
  best, second = np.take(ordered, -1, axis), np.take(ordered, -2, axis)
  with np.errstate(invalid='ignore'):
    gap = best - second                  # -inf - -inf: no decision at all
  return np.where(np.isnan(gap), 0.0, gap)


def binary_scores(logits) -> np.ndarray:
  """Sigmoid logits [...] (label 1 where logit > 0) -> scores [..., 2] (0, logit)."""
  logits = np.asarray(logits, np.float64)
  return np.stack([np.zeros_like(logits), logits], -1)


def inversion_scores(cumulative, u) -> np.ndarray:
  """Drawing by inverting a distribution: cumulative [..., V] (its running sum, last 1),
  u [...] in [0, 1) -> scores [..., V] whose argmax is the token drawn (the first whose
  cumulative probability exceeds u): each token's signed distance of u from its interval
  [cumulative[v - 1], cumulative[v]), positive inside it. The top two differ by about
  twice u's distance from the nearest interval end."""
  cumulative = np.asarray(cumulative, np.float64)
  u = np.asarray(u, np.float64)[..., None]
  lower = np.concatenate([np.zeros_like(cumulative[..., :1]), cumulative[..., :-1]], -1)
  return np.minimum(u - lower, cumulative - u)


def decided(scores, margin: float, member_axis: int | None = None,
            sequential_axis: int | None = None) -> np.ndarray:
  """Where the float error cannot change the decision: scores [..., K] (the decision is
  their argmax) -> bool [...], True where the top two differ by more than `margin`.

  member_axis: the scores hold several voters (ensemble members) on that axis, which is
    removed: a position counts when every member's own decision is clear.
  sequential_axis (of the result): autoregressive decisions, each made given the earlier
    ones: a position counts only when it and every earlier one on that axis are clear."""
  clear = top_two_gap(scores) > margin
  if member_axis is not None:
    clear = clear.all(axis=member_axis)
  if sequential_axis is not None:
    clear = np.logical_and.accumulate(clear, axis=sequential_axis)
  return clear


def assert_equal_where_decided(ours, reference, scores, margin: float,
                               min_share: float = 0.99, member_axis: int | None = None,
                               sequential_axis: int | None = None) -> float:
  """Discrete results of two programs (labels, tokens, code indices) [...], and the scores
  [..., K] that decide them (from either program or a third: all agree to the float
  error): every position whose scores' top two differ by more than `margin` (twice the
  float error) must be equal, and at least `min_share` of the positions must be such.
  `member_axis`, `sequential_axis`: see `decided`. -> the share decided."""
  ours, reference = np.asarray(ours), np.asarray(reference)
  assert ours.shape == reference.shape, (ours.shape, reference.shape)
  mask = decided(scores, margin, member_axis, sequential_axis)
  assert mask.shape == ours.shape, (mask.shape, ours.shape)
  share = float(mask.mean())
  assert share >= min_share, (f'only {share:.2%} of {mask.size} positions are decided by '
                              f'more than {margin:.3g}; at least {min_share:.2%} must be')
  wrong = mask & (ours != reference)
  assert not wrong.any(), (f'{int(wrong.sum())} of {int(mask.sum())} decided positions differ, '
                           f'the first at {tuple(int(i) for i in np.argwhere(wrong)[0])}')
  return share
