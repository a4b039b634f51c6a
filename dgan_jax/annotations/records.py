"""What every format reader returns: one record per annotated image."""

import dataclasses
import os

import numpy as np

from dgan_jax import io
from dgan_jax.annotations import raster
from dgan_jax.errors import InputError


@dataclasses.dataclass
class Annotation:
  """One image's labels as a tool exported them.

  source: the file they came from (named in every message).
  image_name: the tool's reference to the image (a path, URL or file name).
  size: (height, width) the tool recorded for the image, or None.
  regions: shapes in z-order (raster.Region), or None when `mask` is given.
  mask: [h, w] class ids, for formats that store painted pixels.
  """
  source: str
  image_name: str
  size: tuple[int, int] | None
  regions: list | None = None
  mask: np.ndarray | None = None

  def render(self, height: int, width: int, num_classes: int) -> np.ndarray:
    """-> [height, width] class ids."""
    if self.mask is not None:
      return self.mask
    return raster.render(self.regions, height, width, num_classes)


def load_json(path: str, format_name: str):
  """A JSON file; InputError naming it when it is missing or not JSON."""
  if not os.path.isfile(path):
    raise InputError(f'{path}: no such file ({format_name} export)')
  return io.read_json(path)


def single_json(src: str, format_name: str):
  """SRC, a JSON file (or a folder holding just one) -> (its path, its content)."""
  found = files(src, '.json', format_name)
  if len(found) > 1:
    raise InputError(f'{src}: {len(found)} JSON files here; give the {format_name} file '
                     'itself')
  return found[0], load_json(found[0], format_name)


def not_format(path: str, format_name: str, expected: str) -> InputError:
  return InputError(f'{path}: not a {format_name} export ({expected})')


def files(src: str, extension: str, format_name: str) -> list[str]:
  """SRC itself when it is a file, else its files ending in `extension` (sorted, in
  subfolders too); InputError when there are none."""
  if os.path.isfile(src):
    return [src]
  if not os.path.isdir(src):
    raise InputError(f'{src}: no such file or folder ({format_name} export)')
  found = sorted(os.path.join(root, name) for root, _, names in os.walk(src)
                 for name in names if name.lower().endswith(extension))
  if not found:
    raise InputError(f'{src}: no {extension} files in this folder ({format_name} export)')
  return found


def number(value, where: str) -> float:
  try:
    result = float(value)
  except (TypeError, ValueError):
    raise InputError(f'{where}: {value!r} is not a number') from None
  if not np.isfinite(result):
    raise InputError(f'{where}: {value!r} is not a finite number')
  return result


def points(values, where: str) -> np.ndarray:
  """[[x, y], ...] or a flat [x0, y0, x1, ...] -> [n, 2] float64."""
  try:
    array = np.asarray(values, np.float64)
  except (TypeError, ValueError):
    raise InputError(f'{where}: points must be numbers, got {str(values)[:60]}') from None
  if array.size % 2 or (array.ndim == 2 and array.shape[1] != 2) or array.ndim > 2:
    raise InputError(f'{where}: points must be (x, y) pairs, got shape {array.shape}')
  if not np.all(np.isfinite(array)):
    raise InputError(f'{where}: points must be finite numbers')
  return array.reshape(-1, 2)


def check_colors(path: str, off: np.ndarray, rgb: np.ndarray, tolerance: float) -> None:
  """InputError when pixels are farther than `tolerance` from every known colour."""
  if off.any():
    row, col = (int(v) for v in np.argwhere(off)[0])
    raise InputError(f'{path}: {int(off.sum())} pixels are not a label colour (within '
                     f'tolerance {tolerance:g}); the first is (x={col}, y={row}) with '
                     f'RGB {tuple(int(v) for v in rgb[row, col])}')
