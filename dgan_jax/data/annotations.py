"""Annotated images: masks + latents, in DatasetGAN's folder format or the plain one.

DatasetGAN format (its `annotation/training_data/<x>_processed` folders):
  image_mask{i}.npy   [h, w] integer class ids of annotated image i
  image_{i}.jpg       the annotated image (shown beside the regenerated one)
  latents: a separate [N, 512] .npy (config.data.latents, `latent_stylegan1.npy`)

Plain format (new domains; the `sample` stage's workdir/annotate/ plus the user's masks):
  mask_{i}.png        single-channel PNG (mode L, P or I) whose values are class ids,
  or mask_{i}.npy     [h, w] integer class ids
  image_{i}.png       the image the `sample` stage wrote
  latents.npy         [N, 512] z (or W) the `sample` stage wrote; config.data.latents
                      overrides it

The first config.data.num_annotated ids (0 .. n-1) are used, as the original does. Masks
are resized to the labelled grid (feature_size after crop_rows) with nearest neighbour,
OpenCV's INTER_NEAREST rule (source index floor(i * in / out)), then every class with
fewer than MIN_SEGMENT_PIXELS pixels in an image is set to background (0), as the
original cleans up annotation slips (config.data.min_segment_pixels; small images
need a smaller value).
"""

import os

import numpy as np
from PIL import Image

from dgan_jax.data import images as image_utils
from dgan_jax.errors import InputError

MIN_SEGMENT_PIXELS = 30
ASPECT_TOLERANCE = 0.02


def detect_format(annotation_dir: str) -> str:
  """'datasetgan' when image_mask0.npy is there, else 'plain'."""
  if os.path.isfile(os.path.join(annotation_dir, 'image_mask0.npy')):
    return 'datasetgan'
  return 'plain'


def mask_path(annotation_dir: str, index: int, fmt: str) -> str:
  """The mask file of annotated image `index` (for plain: the .png, else the .npy)."""
  if fmt == 'datasetgan':
    return os.path.join(annotation_dir, f'image_mask{index}.npy')
  png = os.path.join(annotation_dir, f'mask_{index}.png')
  npy = os.path.join(annotation_dir, f'mask_{index}.npy')
  return npy if os.path.isfile(npy) and not os.path.isfile(png) else png


def image_path(annotation_dir: str, index: int, fmt: str) -> str:
  return os.path.join(annotation_dir, f'image_{index}.jpg' if fmt == 'datasetgan'
                      else f'image_{index}.png')


def resize_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
  """[h, w] -> [height, width], OpenCV INTER_NEAREST: out[i, j] = in[i*h//height, j*w//width]."""
  h, w = mask.shape
  rows = np.minimum((np.arange(height) * h) // height, h - 1)
  cols = np.minimum((np.arange(width) * w) // width, w - 1)
  return mask[rows[:, None], cols[None, :]]


def remove_small_segments(mask: np.ndarray, min_pixels: int = MIN_SEGMENT_PIXELS) -> np.ndarray:
  """Classes (other than 0) covering fewer than min_pixels pixels -> 0."""
  counts = np.bincount(mask.ravel())
  small = np.nonzero((counts > 0) & (counts < min_pixels))[0]
  small = small[small > 0]
  if small.size:
    mask = np.where(np.isin(mask, small), 0, mask)
  return mask


def read_mask(path: str) -> np.ndarray:
  """A mask file -> [h, w] int64 class ids; InputError naming the file otherwise."""
  if not os.path.isfile(path):
    raise InputError(f'{path}: mask missing')
  if path.endswith('.npy'):
    try:
      mask = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
      raise InputError(f'{path}: not a readable .npy array ({e})') from None
  else:
    try:
      with Image.open(path) as image:
        if image.mode not in ('L', 'P', 'I', 'I;16'):
          raise InputError(f'{path}: mask PNG must be single-channel class ids (mode L, P '
                           f'or I), got mode {image.mode}')
        mask = np.asarray(image)
    except (OSError, SyntaxError) as e:
      raise InputError(f'{path}: not a readable image ({e})') from None
  mask = np.squeeze(mask)
  if mask.ndim != 2:
    raise InputError(f'{path}: a mask must be [height, width] class ids, got shape '
                     f'{tuple(np.shape(mask))}')
  if np.issubdtype(mask.dtype, np.floating):
    if not np.all(np.isfinite(mask)) or np.any(mask != np.round(mask)):
      raise InputError(f'{path}: mask values must be integer class ids')
  elif not np.issubdtype(mask.dtype, np.integer) and mask.dtype != bool:
    raise InputError(f'{path}: mask dtype {mask.dtype} is not integer class ids')
  mask = mask.astype(np.int64)
  if mask.min() < 0:
    raise InputError(f'{path}: negative class id {int(mask.min())}')
  return mask


def prepare_mask(path: str, shape: tuple[int, int], num_classes: int,
                 min_segment_pixels: int = MIN_SEGMENT_PIXELS) -> np.ndarray:
  """Reads, checks, resizes and cleans one mask -> [H', W] uint8/int32 class ids."""
  mask = read_mask(path)
  if mask.max() >= num_classes:
    raise InputError(f'{path}: class id {int(mask.max())} but config.data.num_classes is '
                     f'{num_classes} (ids 0..{num_classes - 1})')
  height, width = shape
  if abs(mask.shape[0] / mask.shape[1] - height / width) > ASPECT_TOLERANCE * height / width:
    raise InputError(f'{path}: mask is {mask.shape[0]}x{mask.shape[1]} but the labelled grid '
                     f'is {height}x{width} (feature_size after crop_rows); expected that '
                     'size or one of the same aspect ratio')
  mask = remove_small_segments(resize_nearest(mask, height, width), min_segment_pixels)
  return mask.astype(np.uint8 if num_classes <= 256 else np.int32)


def read_latents(path: str, count: int, latent_kind: str, num_ws: int,
                 latent_size: int = 512) -> np.ndarray:
  """The first `count` latents: z [count, 512], or W [count, num_ws, 512] (a [N, 512] W
  file is broadcast over layers)."""
  if not path or not os.path.isfile(path):
    raise InputError(f'{path or "config.data.latents"}: latents file missing (the sample '
                     "stage's latents.npy, or DatasetGAN's latent_stylegan1.npy)")
  try:
    latents = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise InputError(f'{path}: not a readable .npy array ({e})') from None
  if latent_kind not in ('z', 'w'):
    raise InputError(f"config.data.latent_kind must be 'z' or 'w', got {latent_kind!r}")
  valid = [(None, latent_size)] + ([(None, num_ws, latent_size)] if latent_kind == 'w' else [])
  if not any(latents.ndim == len(v) and latents.shape[1:] == v[1:] for v in valid):
    expected = ' or '.join('[N, ' + ', '.join(str(d) for d in v[1:]) + ']' for v in valid)
    raise InputError(f'{path}: latents must be {expected} ({latent_kind}), got shape '
                     f'{latents.shape}')
  if latents.shape[0] < count:
    raise InputError(f'{path}: holds {latents.shape[0]} latents but config.data.num_annotated '
                     f'is {count}: latent {latents.shape[0]} is missing')
  latents = np.asarray(latents[:count], np.float32)
  if not np.all(np.isfinite(latents)):
    raise InputError(f'{path}: latents contain NaN or infinity')
  if latent_kind == 'w' and latents.ndim == 2:
    latents = np.broadcast_to(latents[:, None, :], (count, num_ws, latent_size)).copy()
  return latents


def default_latents_path(annotation_dir: str, fmt: str, configured: str) -> str:
  if configured:
    return configured
  if fmt == 'plain':
    return os.path.join(annotation_dir, 'latents.npy')
  return ''


def load(annotation_dir: str, data_config, num_ws: int, shape: tuple[int, int],
         latent_size: int = 512) -> dict:
  """Reads the first data_config.num_annotated annotations.

  shape: (H', W) of the labelled grid (features.FeatureLayout.output_shape).
  Returns {'format', 'masks' [N, H', W], 'latents' ([N, 512] z or [N, num_ws, 512] W),
  'latents_path', 'images' (list of [h, w, 3] uint8 or None when the file is absent),
  'mask_paths'}.
  """
  if not annotation_dir or not os.path.isdir(annotation_dir):
    raise InputError(f'config.data.annotation_dir: {annotation_dir or "(empty)"} is not a '
                     'directory')
  count = data_config.num_annotated
  if count < 1:
    raise InputError('config.data.num_annotated must be at least 1')
  fmt = detect_format(annotation_dir)
  latents_path = default_latents_path(annotation_dir, fmt, data_config.latents)
  if not latents_path:
    raise InputError('config.data.latents: DatasetGAN annotation folders keep no latents; '
                     'set it to latent_stylegan1.npy')
  latents = read_latents(latents_path, count, data_config.latent_kind, num_ws, latent_size)
  masks, images, paths = [], [], []
  for i in range(count):
    path = mask_path(annotation_dir, i, fmt)
    if not os.path.isfile(path):
      hint = ('image_mask{i}.npy' if fmt == 'datasetgan' else 'mask_{i}.png or mask_{i}.npy')
      raise InputError(f'{path}: mask missing; annotated ids 0..{count - 1} each need one '
                       f'({hint}; config.data.num_annotated is {count})')
    masks.append(prepare_mask(path, shape, data_config.num_classes,
                              data_config.min_segment_pixels))
    paths.append(path)
    picture = image_path(annotation_dir, i, fmt)
    if os.path.isfile(picture):
      images.append(image_utils.read_rgb(picture))
    else:
      images.append(None)
  return {'format': fmt, 'masks': np.stack(masks), 'latents': latents,
          'latents_path': latents_path, 'images': images, 'mask_paths': paths}
