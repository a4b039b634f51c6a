"""The toy domain renderer: determinism, shapes, classes, mask reduction, wheel geometry."""

import collections
import types

import numpy as np
import pytest
from scipy import ndimage

from dgan_jax.toy import render


@pytest.fixture(scope='module')
def cars64():
  """64 images of seed 0 at 32 px."""
  return render.render(0, np.arange(64), 32)


def test_image_depends_only_on_seed_and_index():
  one_image, one_mask = render.render(7, [5])
  images, masks = render.render(7, [3, 4, 5])
  np.testing.assert_array_equal(one_image[0], images[2])
  np.testing.assert_array_equal(one_mask[0], masks[2])
  again_image, again_mask = render.render(7, np.array([5]))
  np.testing.assert_array_equal(one_image, again_image)
  np.testing.assert_array_equal(one_mask, again_mask)
  other_image, other_mask = render.render(8, [5])
  assert np.abs(other_image.astype(int) - one_image).mean() > 5
  assert (other_mask != one_mask).any()
  # Different indices of one seed differ too.
  assert np.abs(images[0].astype(int) - images[1]).mean() > 5


@pytest.mark.parametrize('size', [32, 64])
def test_shapes_and_dtypes(size):
  images, masks = render.render(1, [0, 1, 2], size)
  assert images.shape == (3, size, size, 3) and images.dtype == np.uint8
  assert masks.shape == (3, size, size) and masks.dtype == np.uint8
  assert masks.max() < render.NUM_CLASSES
  assert images.std() > 10   # not a blank canvas


def test_every_class_appears_and_every_car_has_body_tyre_hub(cars64):
  _, masks = cars64
  present = np.array([[(m == c).any() for c in range(render.NUM_CLASSES)] for m in masks])
  assert present.any(axis=0).all(), dict(zip(render.CLASS_NAMES, present.sum(axis=0)))
  for name in ('background', 'body', 'tyre', 'hub'):
    assert present[:, render.CLASS_NAMES.index(name)].all(), name


def test_class_constants():
  assert render.CLASS_NAMES[0] == 'background'
  assert render.NUM_CLASSES == len(render.CLASS_NAMES) == 7
  assert [render.BACKGROUND, render.BODY, render.DOOR, render.WINDOW, render.TYRE, render.HUB,
          render.LIGHT] == [render.CLASS_NAMES.index(n) for n in
                            ('background', 'body', 'door', 'window', 'tyre', 'hub', 'light')]


def test_palette_has_one_distinct_colour_per_class():
  palette = np.asarray(render.PALETTE)
  assert palette.shape == (3 * render.NUM_CLASSES,)
  assert palette.min() >= 0 and palette.max() <= 255
  colours = {tuple(c) for c in palette.reshape(-1, 3)}
  assert len(colours) == render.NUM_CLASSES
  assert tuple(palette[:3]) == (255, 255, 255)   # background white


def _majority(block) -> int:
  """Most frequent value of a block, ties to the smaller one (a slow direct count)."""
  counts = collections.Counter(int(v) for v in block.ravel())
  best = max(counts.values())
  return min(v for v, c in counts.items() if c == best)


def test_mask_is_block_majority_of_supersampled_labels(monkeypatch):
  # Captures the supersampled label canvas: render_one allocates it with np.zeros(uint8)
  # and fills it in place.
  canvases = []

  def zeros(shape, dtype=float, **kwargs):
    array = np.zeros(shape, dtype, **kwargs)
    if np.dtype(dtype) == np.uint8:
      canvases.append(array)
    return array

  proxy = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith('__')})
  proxy.zeros = zeros
  monkeypatch.setattr(render, 'np', proxy)
  size = 16
  _, masks = render.render(4, [0, 1], size)
  monkeypatch.undo()
  assert len(canvases) == 2
  s = render.SUPERSAMPLE
  checked_ties = 0
  for label, mask in zip(canvases, masks):
    assert label.shape == (size * s, size * s)
    assert len(np.unique(label)) >= 4
    expected = np.array([[_majority(label[i * s:(i + 1) * s, j * s:(j + 1) * s])
                          for j in range(size)] for i in range(size)])
    np.testing.assert_array_equal(mask, expected)
    for i in range(size):
      for j in range(size):
        counts = collections.Counter(label[i * s:(i + 1) * s, j * s:(j + 1) * s].ravel())
        top = sorted(counts.values())[-2:]
        checked_ties += len(top) == 2 and top[0] == top[1]
  assert checked_ties > 0   # ties to the smaller id are exercised
  # The mask must equal the unpatched render.
  np.testing.assert_array_equal(masks, render.render(4, [0, 1], size)[1])


def test_same_geometry_at_two_sizes():
  # (seed, i) fixes every random draw but the final pixel noise, and the geometry scales
  # with the size: the 32 px picture is close to the 64 px one reduced 2x2.
  small_images, small_masks = render.render(3, np.arange(16), 32)
  large_images, large_masks = render.render(3, np.arange(16), 64)
  def fractions(masks):
    return np.stack([np.bincount(m.ravel(), minlength=render.NUM_CLASSES) / m.size
                     for m in masks])
  assert np.abs(fractions(small_masks) - fractions(large_masks)).max() < 0.025
  reduced = large_images.astype(np.float64).reshape(16, 32, 2, 32, 2, 3).mean(axis=(2, 4))
  assert np.abs(reduced - small_images).mean() < 4
  # Each 32 px label appears in the corresponding 2x2 block at 64 px (almost always).
  blocks = large_masks.reshape(16, 32, 2, 32, 2).transpose(0, 1, 3, 2, 4).reshape(16, 32, 32, 4)
  assert (blocks == small_masks[..., None]).any(axis=-1).mean() > 0.99


def test_tyres_are_rings_around_hubs():
  _, masks = render.render(0, np.arange(32), 64)
  for k, mask in enumerate(masks):
    hub = mask == render.HUB
    wheel = hub | (mask == render.TYRE)
    # Hub pixels are interior to the wheels: their 3x3 neighbourhoods are hub or tyre.
    interior = ndimage.binary_erosion(wheel, structure=np.ones((3, 3)), border_value=0)
    assert not (hub & ~interior).any(), k
    # Two separate wheels, each with a hub near its centre.
    labels, count = ndimage.label(wheel)
    assert count == 2, k
    for c in (1, 2):
      in_wheel = labels == c
      hub_pixels = np.argwhere(in_wheel & hub)
      assert len(hub_pixels), k
      assert np.abs(hub_pixels.mean(0) - np.argwhere(in_wheel).mean(0)).max() < 1.0, k
      # Hub radius is 0.45 .. 0.65 of the tyre's: area ratio 0.2 .. 0.42.
      assert 0.12 < len(hub_pixels) / in_wheel.sum() < 0.5, k
