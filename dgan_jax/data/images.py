"""Image conversion, colored masks and PNG grids."""

import numpy as np
from PIL import Image

from dgan_jax import io
from dgan_jax.errors import InputError


def read_rgb(path: str) -> np.ndarray:
  """An image file -> uint8 [h, w, 3]; InputError naming the file when unreadable."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert('RGB'))
  except (OSError, SyntaxError) as e:
    raise InputError(f'{path}: not a readable image ({e})') from None


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [h, w, 3] -> [height, width, 3], PIL bicubic."""
  if image.shape[:2] == (height, width):
    return image
  return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


def psnr(images: np.ndarray, references: np.ndarray) -> float:
  """Peak signal-to-noise ratio in dB of uint8 images against references (same shape),
  over all their pixels: 10 log10(255^2 / MSE); inf when they are equal."""
  mse = np.mean(np.square(np.asarray(images, np.float64) - np.asarray(references, np.float64)))
  return float(10 * np.log10(255.0 ** 2 / mse)) if mse > 0 else float('inf')


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Generator output in [-1, 1] (float, any shape) -> uint8, as DatasetGAN does:
  x * 127.5 + 128, truncated to an integer, clipped to [0, 255]."""
  return np.clip(np.floor(np.asarray(images, np.float32) * 127.5 + 128.0), 0, 255).astype(np.uint8)


def palette_array(num_classes: int, palette=()) -> np.ndarray:
  """[num_classes, 3] uint8: the given flat RGB list, or a fixed, well-spread palette
  (background white) when none is given."""
  if palette:
    return np.asarray(palette, np.uint8).reshape(num_classes, 3)
  colors = [(255, 255, 255)]
  for i in range(1, num_classes):
    hue = (i * 0.618033988749895) % 1.0
    colors.append(tuple(int(255 * c) for c in _hsv_to_rgb(hue, 0.75, 0.9 - 0.3 * (i % 2))))
  return np.asarray(colors, np.uint8)


def _hsv_to_rgb(h, s, v):
  i = int(h * 6) % 6
  f = h * 6 - int(h * 6)
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def colorize(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
  """mask [..., H, W] integer class ids -> [..., H, W, 3] uint8."""
  return palette[np.asarray(mask)]


def grid(images: np.ndarray, columns: int, pad: int = 2, pad_value: int = 0) -> np.ndarray:
  """images [N, H, W, 3] uint8 -> one [rows*(H+pad)+pad, columns*(W+pad)+pad, 3] image."""
  n, h, w, c = images.shape
  columns = max(1, min(columns, n))
  rows = -(-n // columns)
  out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), pad_value, np.uint8)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    out[y:y + h, x:x + w] = image
  return out


def enlarge(image: np.ndarray, min_height: int = 96) -> np.ndarray:
  """[H, W, ...] -> repeated by the smallest integer factor making it min_height tall
  (nearest neighbour, so small test-size previews stay readable)."""
  factor = max(1, -(-min_height // image.shape[0]))
  return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def save_png(path: str, image: np.ndarray) -> None:
  """Writes atomically (temporary name, then rename)."""
  with io.atomic_file(path, 'wb') as f:
    Image.fromarray(np.asarray(image, np.uint8)).save(f, format='PNG')


def crop_rows(images: np.ndarray, data_config) -> np.ndarray:
  """[B, H, W, ...] -> rows config.data.crop_rows (given at feature_size, scaled to H)."""
  if not data_config.crop_rows:
    return images
  scale = images.shape[1] / (data_config.feature_size or (images.shape[1],))[0]
  start, stop = (int(round(r * scale)) for r in data_config.crop_rows)
  return images[:, start:stop]
