"""Label Studio's JSON export: a list of tasks
  {"data": {"image": URL}, "annotations": [{"result": [...], "was_cancelled"?}, ...]}
whose results carry original_width/original_height and a value:
  brushlabels:     {"format": "rle", "rle": [...], "brushlabels": [name]}, the RGBA mask
                   [h, w, 4] packed by Label Studio's bit-level RLE (decoded with
                   label-studio-converter); a pixel is painted where alpha >= 128;
  polygonlabels:   {"points": [[x%, y%], ...], "polygonlabels": [name]};
  rectanglelabels: {"x", "y", "width", "height" (percent), "rotation" (degrees, clockwise
                   about the top-left corner), "rectanglelabels": [name]}.
Results paint in order; of several annotations of one task the last one not cancelled is
used.
"""

import numpy as np
from absl import logging

from dgan_jax.annotations import raster
from dgan_jax.annotations import records
from dgan_jax.errors import InputError

FORMAT = 'Label Studio JSON'
ALPHA_THRESHOLD = 128


def decode_brush(rle, height: int, width: int, where: str) -> np.ndarray:
  """Label Studio brush RLE -> [height, width] bool (alpha >= ALPHA_THRESHOLD)."""
  try:
    from label_studio_converter import brush  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise InputError(f'{where}: brush masks need label-studio-converter '
                     '(pip install label-studio-converter)') from None
  try:
    values = brush.decode_rle(rle)
  except (ValueError, IndexError, TypeError):
    raise InputError(f'{where}: its brush rle does not decode') from None
  if values.size != height * width * 4:
    raise InputError(f'{where}: brush rle holds {values.size} values, not {height} x '
                     f'{width} x 4 (RGBA)')
  return values.reshape(height, width, 4)[..., 3] >= ALPHA_THRESHOLD


def _rectangle(value: dict, class_id: int, height: int, width: int, where: str):
  x, y, w, h = (records.number(value.get(k), where) for k in ('x', 'y', 'width', 'height'))
  corners = np.array([[0, 0], [w, 0], [w, h], [0, h]]) / 100 * [width, height]
  angle = np.deg2rad(float(value.get('rotation', 0)))
  turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  return raster.Polygon(class_id, corners @ turn.T + [x / 100 * width, y / 100 * height])


def _region(result: dict, labels, where: str):
  kind = str(result.get('type', '')).lower()
  value = result.get('value') or {}
  if kind not in ('brushlabels', 'polygonlabels', 'rectanglelabels'):
    logging.warning('%s: ignored a %s result (not a region)', where, kind or 'untyped')
    return None
  names = value.get(kind) or []
  if len(names) != 1:
    raise InputError(f'{where}: a {kind} result needs one label, has {names}')
  class_id = labels.id_of(names[0], where)
  try:
    height, width = int(result['original_height']), int(result['original_width'])
  except (KeyError, TypeError, ValueError):
    raise records.not_format(where, FORMAT, 'results carry original_width and '
                             'original_height') from None
  if kind == 'brushlabels':
    if value.get('format', 'rle') != 'rle' or 'rle' not in value:
      raise InputError(f'{where}: brush format {value.get("format")!r} is not rle')
    return raster.Bitmap(class_id, decode_brush(value['rle'], height, width, where))
  if kind == 'polygonlabels':
    return raster.Polygon(class_id, records.points(value.get('points'), where) / 100
                          * [width, height])
  return _rectangle(value, class_id, height, width, where)


def read(src: str, labels, tolerance: float) -> list[records.Annotation]:
  """SRC: the exported JSON file."""
  del tolerance
  path, tasks = records.single_json(src, FORMAT)
  if not isinstance(tasks, list) or not all(
      isinstance(t, dict) and isinstance(t.get('data'), dict) for t in tasks):
    raise records.not_format(path, FORMAT, 'a list of tasks with "data"')
  out = []
  for task in tasks:
    where = f'{path}: task {task.get("id", "?")}'
    image = task['data'].get('image')
    if not isinstance(image, str):
      raise records.not_format(where, FORMAT, 'data.image is the image URL')
    done = [a for a in task.get('annotations') or [] if not a.get('was_cancelled')]
    if len(done) > 1:
      logging.warning('%s: %d annotations; using the last', where, len(done))
    results = done[-1].get('result') or [] if done else []
    regions, size = [], None
    for number, result in enumerate(results):
      region = _region(result, labels, f'{where}: result {result.get("id", number)}')
      if region is not None:
        regions.append(region)
        size = (int(result['original_height']), int(result['original_width']))
    out.append(records.Annotation(path, image, size, regions))
  return out
