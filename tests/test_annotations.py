"""Annotation folders: both formats, nearest resizing, clean-up, and errors naming files."""

import ml_collections
import numpy as np
import pytest
from PIL import Image

from dgan_jax.data import annotations
from dgan_jax.data import synthetic
from dgan_jax.errors import InputError


def data_config(**overrides):
  config = ml_collections.ConfigDict({'num_classes': 4, 'num_annotated': 2, 'latents': '',
                                      'latent_kind': 'z', 'min_segment_pixels': 30})
  config.update(overrides)
  return config


def blocky_mask(height, width, seed):
  """Class blocks of 8x8 px, every class well above 30 px."""
  rng = np.random.RandomState(seed)
  return np.kron(rng.randint(0, 4, (height // 8, width // 8)), np.ones((8, 8), np.int64))


def test_resize_nearest_follows_opencv():
  mask = np.arange(16).reshape(4, 4)
  # cv2.resize(mask, (2, 2), interpolation=cv2.INTER_NEAREST) picks rows/columns 0 and 2.
  np.testing.assert_array_equal(annotations.resize_nearest(mask, 2, 2), [[0, 2], [8, 10]])
  # Enlarging repeats: 2 -> 5 reads source 0, 0, 0, 1, 1 (floor(i * 2 / 5)).
  np.testing.assert_array_equal(annotations.resize_nearest(np.array([[1, 2]]), 1, 5),
                                [[1, 1, 1, 2, 2]])


def test_segments_under_30_pixels_become_background():
  mask = np.zeros((10, 10), np.int64)
  mask.flat[:29] = 1          # 29 px of class 1: an annotation slip
  mask.flat[40:70] = 2        # 30 px of class 2: kept
  cleaned = annotations.remove_small_segments(mask)
  assert (cleaned == 1).sum() == 0 and (cleaned == 2).sum() == 30


def test_datasetgan_folder(tmp_path):
  masks = [blocky_mask(64, 64, i) for i in range(3)]
  for i, mask in enumerate(masks):
    np.save(tmp_path / f'image_mask{i}.npy', mask.astype(np.uint8))
    Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(tmp_path / f'image_{i}.jpg')
  latents = np.random.RandomState(0).standard_normal((3, 512)).astype(np.float32)
  np.save(tmp_path / 'latent_stylegan1.npy', latents)
  config = data_config(latents=str(tmp_path / 'latent_stylegan1.npy'))
  out = annotations.load(str(tmp_path), config, num_ws=12, shape=(32, 32))
  assert out['format'] == 'datasetgan'
  assert out['masks'].shape == (2, 32, 32) and out['masks'].dtype == np.uint8
  np.testing.assert_array_equal(out['masks'][1], masks[1][::2, ::2])
  np.testing.assert_array_equal(out['latents'], latents[:2])
  assert out['images'][0].shape == (64, 64, 3)
  # W latents of shape [N, 512] are broadcast over the generator's layers.
  out = annotations.load(str(tmp_path), data_config(latents=config.latents, latent_kind='w'),
                         num_ws=12, shape=(32, 32))
  assert out['latents'].shape == (2, 12, 512)


def test_plain_folder_png_and_npy_masks(tmp_path):
  Image.fromarray(blocky_mask(24, 32, 0).astype(np.uint8), mode='L').save(tmp_path / 'mask_0.png')
  np.save(tmp_path / 'mask_1.npy', blocky_mask(24, 32, 1))
  np.save(tmp_path / 'latents.npy', np.zeros((4, 512), np.float32))
  out = annotations.load(str(tmp_path), data_config(), num_ws=8, shape=(24, 32))
  assert out['format'] == 'plain' and out['latents_path'].endswith('latents.npy')
  np.testing.assert_array_equal(out['masks'][0], blocky_mask(24, 32, 0))
  np.testing.assert_array_equal(out['masks'][1], blocky_mask(24, 32, 1))
  assert out['images'] == [None, None]


def write_plain(folder, masks, num_latents=2):
  for i, mask in enumerate(masks):
    np.save(folder / f'mask_{i}.npy', mask)
  np.save(folder / 'latents.npy', np.zeros((num_latents, 512), np.float32))


@pytest.mark.parametrize('problem,message', [
    ('missing_mask', r'mask_1.png: mask missing; annotated ids 0..1'),
    ('class_id', r'mask_1.npy: class id 7 but config.data.num_classes is 4'),
    ('rgb_npy', r'mask_1.npy: a mask must be \[height, width\] class ids, got shape'),
    ('aspect', r'mask_1.npy: mask is 32x32 but the labelled grid is 24x32'),
    ('missing_latent', r'latents.npy: holds 1 latents but config.data.num_annotated is 2'),
    ('latent_shape', r'latents.npy: latents must be \[N, 512\] \(z\), got shape'),
    ('rgb_png', r'mask_1.png: mask PNG must be single-channel'),
    ('float_ids', r'mask_1.npy: mask values must be integer class ids'),
])
def test_errors_name_the_file(tmp_path, problem, message):
  good = blocky_mask(24, 32, 0)
  second = {'class_id': np.where(good == 3, 7, good), 'rgb_npy': np.stack([good] * 3, -1),
            'aspect': blocky_mask(32, 32, 1), 'float_ids': good + 0.5}.get(problem, good)
  write_plain(tmp_path, [good, second], num_latents=1 if problem == 'missing_latent' else 2)
  if problem == 'missing_mask':
    (tmp_path / 'mask_1.npy').unlink()
  if problem == 'latent_shape':
    np.save(tmp_path / 'latents.npy', np.zeros((2, 256), np.float32))
  if problem == 'rgb_png':
    (tmp_path / 'mask_1.npy').unlink()
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(tmp_path / 'mask_1.png')
  with pytest.raises(InputError, match=message):
    annotations.load(str(tmp_path), data_config(), num_ws=8, shape=(24, 32))


def test_synthetic_brightness_masks(tmp_path):
  grey = np.linspace(0, 255, 24 * 32).reshape(24, 32).astype(np.uint8)
  image = np.stack([grey] * 3, -1)
  Image.fromarray(image).save(tmp_path / 'image_0.png')
  np.save(tmp_path / 'latents.npy', np.zeros((1, 512), np.float32))
  out = synthetic.write_annotations(str(tmp_path), str(tmp_path / 'synth'), 1, 3, (24, 32))
  mask = annotations.read_mask(out + '/mask_0.png')
  # A linear ramp splits into three equal bands, darkest first.
  assert [(mask == k).sum() for k in range(3)] == [256, 256, 256]
  assert mask[0, 0] == 0 and mask[-1, -1] == 2
