"""LabelMe (wkentaro/labelme): one JSON file per image,
  {"shapes": [{"label", "points": [[x, y], ...], "shape_type", "mask"?}, ...],
   "imagePath", "imageHeight", "imageWidth", ...}
Shape types: polygon, rectangle (two corners), circle (centre, a point on the circle),
mask (a base64 PNG placed at its first point). Lines, line strips and points have no area
(ignored with a warning). Shapes paint in file order: later shapes cover earlier ones, as
LabelMe draws them.
"""

import base64
import binascii
import io as python_io

import numpy as np
from absl import logging
from PIL import Image

from dgan_jax.annotations import raster
from dgan_jax.annotations import records
from dgan_jax.errors import InputError

FORMAT = 'LabelMe'
NO_AREA = ('line', 'linestrip', 'point', 'points')


def _mask(shape: dict, class_id: int, corner: np.ndarray, where: str) -> raster.Bitmap:
  try:
    with Image.open(python_io.BytesIO(base64.b64decode(shape['mask'], validate=True))) as im:
      bitmap = np.asarray(im.convert('L')) > 0
  except (binascii.Error, OSError, ValueError, TypeError):
    raise InputError(f'{where}: its mask is not a base64 PNG') from None
  left, top = (int(v) for v in np.floor(corner))
  return raster.Bitmap(class_id, bitmap, top, left)


def _region(shape, labels, where: str):
  if not isinstance(shape, dict) or 'label' not in shape or 'points' not in shape:
    raise records.not_format(where, FORMAT, 'each shape needs "label" and "points"')
  kind = shape.get('shape_type') or 'polygon'
  if kind in NO_AREA:
    logging.warning('%s: ignored a %s shape (no area)', where, kind)
    return None
  class_id = labels.id_of(shape['label'], where)
  points = records.points(shape['points'], where)
  if kind == 'polygon':
    return raster.Polygon(class_id, points)
  if len(points) < 2 and kind in ('rectangle', 'circle', 'mask'):
    raise InputError(f'{where}: a {kind} needs two points, has {len(points)}')
  if kind == 'rectangle':
    return raster.rectangle(class_id, *points[0], *points[1])
  if kind == 'circle':
    radius = float(np.hypot(*(points[1] - points[0])))
    return raster.Ellipse(class_id, points[0, 0], points[0, 1], radius, radius)
  if kind == 'mask':
    return _mask(shape, class_id, points[0], where)
  raise InputError(f'{where}: shape_type {kind!r} is not one LabelMe writes')


def read(src: str, labels, tolerance: float) -> list[records.Annotation]:
  """SRC: a LabelMe JSON file or a folder of them."""
  del tolerance
  out = []
  for path in records.files(src, '.json', FORMAT):
    data = records.load_json(path, FORMAT)
    if not isinstance(data, dict) or not isinstance(data.get('shapes'), list) \
        or 'imagePath' not in data:
      raise records.not_format(path, FORMAT, 'a JSON object with "shapes" and "imagePath"')
    size = None
    if data.get('imageHeight') is not None and data.get('imageWidth') is not None:
      size = (int(records.number(data['imageHeight'], path)),
              int(records.number(data['imageWidth'], path)))
    regions = []
    for number, shape in enumerate(data['shapes']):
      region = _region(shape, labels, f'{path}: shape {number}')
      if region is not None:
        regions.append(region)
    out.append(records.Annotation(path, str(data['imagePath']), size, regions))
  return out
