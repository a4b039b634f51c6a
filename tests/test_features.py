"""Per-pixel features from native maps equal PyTorch's upsample-then-index."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dgan_jax import features


def torch_resized(maps_nhwc, feature_size, crop_rows):
  """What the original builds: every map resized (bilinear, align_corners=False) to
  feature_size, concatenated on channels, rows cropped -> [B, H', W, D]."""
  full = [F.interpolate(torch.from_numpy(np.ascontiguousarray(m.transpose(0, 3, 1, 2))),
                        size=tuple(feature_size), mode='bilinear', align_corners=False)
          for m in maps_nhwc]
  full = torch.cat(full, dim=1)[:, :, crop_rows[0]:crop_rows[1]]
  return full.permute(0, 2, 3, 1).numpy()


def random_maps(shapes, channels, batch, seed):
  rng = np.random.RandomState(seed)
  return [rng.standard_normal((batch, h, w, c)).astype(np.float32)
          for (h, w), c in zip(shapes, channels)]


@pytest.mark.parametrize('in_size,out_size,start,stop', [
    (4, 32, 0, 32), (8, 32, 4, 28), (64, 32, 0, 32), (1024, 512, 0, 512), (512, 512, 64, 448),
    (7, 20, 3, 11)])
def test_bilinear_source_matches_torch_weights(in_size, out_size, start, stop):
  index0, index1, weight1 = features.bilinear_source(in_size, out_size, start, stop)
  # Resizing the identity basis reads off PyTorch's interpolation matrix row by row.
  basis = torch.eye(in_size)[:, None, :, None].repeat(1, 1, 1, 2)  # [in, 1, in, 2]
  matrix = F.interpolate(basis, size=(out_size, 2), mode='bilinear',
                         align_corners=False)[:, 0, :, 0].T.numpy()  # [out, in]
  ours = np.zeros((stop - start, in_size), np.float32)
  np.add.at(ours, (np.arange(stop - start), index0), 1 - weight1)
  np.add.at(ours, (np.arange(stop - start), index1), weight1)
  np.testing.assert_allclose(ours, matrix[start:stop], atol=1e-6)


CASES = {
    # StyleGAN-like pyramid upsampled to its own size, rows cropped (the car's 64:448).
    'car_like': ([(4, 4), (4, 4), (8, 8), (16, 16), (32, 32), (32, 32)], [5, 3, 4, 3, 2, 2],
                 (32, 32), (4, 28)),
    # The face model: the largest maps are 2x the feature size (1024 -> 512): downsampling.
    'face_like': ([(4, 4), (8, 8), (16, 16), (32, 32), (64, 64)], [4, 3, 3, 2, 2],
                  (32, 32), ()),
    # Non-square output, uneven factors.
    'uneven': ([(3, 5), (6, 10), (12, 7)], [2, 3, 4], (17, 23), (2, 15)),
}


@pytest.mark.parametrize('name', list(CASES))
def test_pixel_features_equal_upsample_then_index(name):
  shapes, channels, feature_size, crop_rows = CASES[name]
  layout = features.FeatureLayout.create(shapes, channels, feature_size, crop_rows)
  maps = random_maps(shapes, channels, batch=3, seed=0)
  expected = torch_resized(maps, feature_size, layout.crop_rows)  # [3, H', W, D]
  assert expected.shape == (3,) + layout.output_shape + (layout.dim,)

  stores = features.keep_rows([jnp.asarray(m) for m in maps], layout)
  tables = features.device_tables(layout)
  rng = np.random.RandomState(1)
  count = 500
  image = rng.randint(0, 3, count)
  y = rng.randint(0, layout.output_shape[0], count)
  x = rng.randint(0, layout.output_shape[1], count)
  # Every corner of the grid too (the clamped borders).
  h, w = layout.output_shape
  image = np.concatenate([image, [0, 1, 2, 2]])
  y = np.concatenate([y, [0, 0, h - 1, h - 1]])
  x = np.concatenate([x, [0, w - 1, 0, w - 1]])
  got = jax.jit(features.pixel_features)(stores, tables, image.reshape(-1, 2),
                                         y.reshape(-1, 2), x.reshape(-1, 2))
  np.testing.assert_allclose(np.asarray(got).reshape(-1, layout.dim), expected[image, y, x],
                             atol=2e-6, rtol=1e-5)

  # The full resized map of each layer, for callers that want it.
  offsets = layout.channel_offsets + [layout.dim]
  for l, (store, table) in enumerate(zip(stores, layout.tables())):
    full = features.upsample(store, table)
    np.testing.assert_allclose(np.asarray(full), expected[..., offsets[l]:offsets[l + 1]],
                               atol=2e-6, rtol=1e-5)


def test_kept_rows_are_only_the_rows_the_crop_reads():
  layout = features.FeatureLayout.create([(4, 4), (512, 512)], [1, 1], (512, 512), (64, 448))
  assert layout.kept_rows == [(0, 4), (64, 448)]
  assert layout.kept_shapes == [(4, 4, 1), (384, 512, 1)]
  assert layout.output_shape == (384, 512)
  # The car's 5056 values per pixel, and its float32 bytes per image (about 100 MB kept of
  # the 131 MB of native maps).
  car = features.FeatureLayout.create(
      [(r, r) for r in (4, 8, 16, 32, 64, 128, 256, 512) for _ in range(2)],
      [c for c in (512, 512, 512, 512, 256, 128, 64, 32) for _ in range(2)],
      (512, 512), (64, 448))
  assert car.dim == 5056
  native = sum(2 * r * r * c for r, c in zip((4, 8, 16, 32, 64, 128, 256, 512),
                                              (512, 512, 512, 512, 256, 128, 64, 32))) * 4
  assert native == 131_399_680  # 32,849,920 floats: the "about 130 MB"
  assert 0.7 * native < car.bytes_per_image() < 0.8 * native


def test_bfloat16_stores_stay_close():
  shapes, channels, feature_size, crop_rows = CASES['car_like']
  layout = features.FeatureLayout.create(shapes, channels, feature_size, crop_rows)
  maps = [jnp.asarray(m) for m in random_maps(shapes, channels, 2, seed=2)]
  stores32 = features.keep_rows(maps, layout)
  stores16 = [s.astype(jnp.bfloat16) for s in stores32]
  tables = features.device_tables(layout)
  idx = jnp.arange(40)
  args = (idx % 2, idx % layout.output_shape[0], (3 * idx) % layout.output_shape[1])
  a = features.pixel_features(stores32, tables, *args)
  b = features.pixel_features(stores16, tables, *args)
  assert b.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=3e-2)


def test_extract_stores_keeps_native_rows_and_grids_the_image():
  shapes, channels, feature_size, crop_rows = CASES['car_like']
  layout = features.FeatureLayout.create(shapes, channels, feature_size, crop_rows)
  per_image = [random_maps(shapes, channels, 1, seed=10 + i) for i in range(3)]
  rgb = [np.random.RandomState(20 + i).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
         for i in range(3)]
  stores, images, seconds = features.extract_stores(
      lambda i: (jnp.asarray(rgb[i]), [jnp.asarray(m) for m in per_image[i]]), 3, layout,
      progress=False)
  assert seconds > 0
  for l, store in enumerate(stores):
    first, stop = layout.kept_rows[l]
    np.testing.assert_array_equal(np.asarray(store),
                                  np.concatenate([m[l][:, first:stop] for m in per_image]))
  # 32 px image on a 32 px grid: cropped rows, DatasetGAN's uint8 conversion.
  expected = np.clip(np.floor(np.concatenate(rgb)[:, 4:28] * 127.5 + 128), 0, 255)
  np.testing.assert_array_equal(images, expected.astype(np.uint8))


def test_bfloat16_stores_are_read_through_their_bits():
  """extract_stores in bfloat16 keeps the maps rounded to bfloat16; on one CPU device the
  training step reads their uint16 bits (`as_bits`, the same memory) to the same values."""
  shapes, channels, feature_size, crop_rows = CASES['car_like']
  layout = features.FeatureLayout.create(shapes, channels, feature_size, crop_rows)
  per_image = [random_maps(shapes, channels, 1, seed=30 + i) for i in range(3)]
  stores, _, _ = features.extract_stores(
      lambda i: (jnp.zeros((1, 32, 32, 3)), [jnp.asarray(m) for m in per_image[i]]), 3,
      layout, jnp.bfloat16, progress=False)
  rounded = [np.concatenate([m[l] for m in per_image]).astype(jnp.bfloat16)
             for l in range(len(shapes))]
  for store, want in zip(stores, features.keep_rows(rounded, layout)):
    assert store.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(store, np.float32), np.asarray(want, np.float32))
  bits = [features.as_bits(s) for s in stores]
  if jax.default_backend() == 'cpu':
    assert all(b.dtype == np.uint16 and b.unsafe_buffer_pointer() == s.unsafe_buffer_pointer()
               for b, s in zip(bits, stores))
  tables = features.device_tables(layout)
  idx = jnp.arange(200)
  args = (idx % 3, idx % layout.output_shape[0], (7 * idx) % layout.output_shape[1])
  from_bits = jax.jit(lambda s, *a: features.pixel_features(
      s, tables, *a, store_dtypes=[jnp.bfloat16] * len(s)))(bits, *args)
  direct = jax.jit(features.pixel_features)(stores, tables, *args)
  np.testing.assert_array_equal(np.asarray(from_bits), np.asarray(direct))
