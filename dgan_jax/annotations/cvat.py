"""CVAT's two segmentation exports.

"CVAT for images 1.1" (annotations.xml): <image name width height> elements holding
  <polygon label points="x0,y0;x1,y1;..." z_order>, <ellipse cx cy rx ry rotation>, and
  <mask label rle left top width height>, whose rle is run lengths over the mask's
  width x height box in row-major order, starting with a run of 0s. Shapes paint in
  z_order, then file order. Polylines and points have no area (ignored with a warning);
  boxes are refused (draw polygons).
"Segmentation mask 1.1": labelmap.txt (`name:r,g,b:parts:actions` per label) and
  SegmentationClass/<image>.png painted in those colours.
"""

import os
import xml.etree.ElementTree as ElementTree

import numpy as np
from absl import logging

from dgan_jax.annotations import raster
from dgan_jax.annotations import records
from dgan_jax.data import images as image_utils
from dgan_jax.errors import InputError

FORMAT = 'CVAT'
NO_AREA = ('polyline', 'points', 'skeleton', 'cuboid', 'tag')


def read(src: str, labels, tolerance: float) -> list[records.Annotation]:
  """SRC: annotations.xml (or a folder holding it), or a Segmentation mask 1.1 folder."""
  if os.path.isdir(src) and os.path.isfile(os.path.join(src, 'labelmap.txt')):
    return read_segmentation_masks(src, labels, tolerance)
  path = os.path.join(src, 'annotations.xml') if os.path.isdir(src) else src
  if not os.path.isfile(path):
    raise InputError(f'{src}: no annotations.xml or labelmap.txt here (CVAT export: "CVAT '
                     'for images 1.1" or "Segmentation mask 1.1")')
  return read_xml(path, labels)


def decode_rle(counts, height: int, width: int, where: str) -> np.ndarray:
  """CVAT mask RLE (alternating 0/1 run lengths, row-major, 0s first) -> [h, w] bool."""
  runs = np.asarray(counts, np.int64)
  if np.any(runs < 0) or runs.sum() != height * width:
    raise InputError(f'{where}: mask rle covers {int(runs.sum())} pixels, not its box\'s '
                     f'{width} x {height}')
  values = np.arange(len(runs)) % 2 == 1
  return np.repeat(values, runs).reshape(height, width)


def _attribute(element, name: str, where: str) -> str:
  value = element.get(name)
  if value is None:
    raise InputError(f'{where}: <{element.tag}> has no {name} attribute')
  return value


def _shape(element, labels, where: str):
  """One shape element -> a raster region, or None for shapes without area."""
  class_id = labels.id_of(_attribute(element, 'label', where), where)
  attribute = lambda name: records.number(_attribute(element, name, where), where)
  if element.tag == 'polygon':
    pairs = [p.split(',') for p in _attribute(element, 'points', where).split(';') if p]
    return raster.Polygon(class_id, records.points(pairs, where))
  if element.tag == 'ellipse':
    return raster.Ellipse(class_id, attribute('cx'), attribute('cy'), attribute('rx'),
                          attribute('ry'), float(element.get('rotation', 0)))
  if element.tag == 'mask':
    left, top, width, height = (int(attribute(k)) for k in ('left', 'top', 'width', 'height'))
    counts = [records.number(v, where) for v in _attribute(element, 'rle', where).split(',')]
    return raster.Bitmap(class_id, decode_rle(counts, height, width, where), top, left)
  if element.tag == 'box':
    raise InputError(f'{where}: a box has no outline to segment; draw it as a polygon or '
                     'mask in CVAT')
  return None


def read_xml(path: str, labels) -> list[records.Annotation]:
  try:
    root = ElementTree.parse(path).getroot()
  except (ElementTree.ParseError, UnicodeDecodeError) as e:
    raise InputError(f'{path}: not valid XML ({e})') from None
  if root.tag != 'annotations':
    raise records.not_format(path, FORMAT, f'"CVAT for images 1.1" XML has the root '
                             f'<annotations>, not <{root.tag}>')
  if root.find('track') is not None:
    raise InputError(f'{path}: holds tracks ("CVAT for video"); export the task as "CVAT '
                     'for images 1.1"')
  out = []
  for image in root.iter('image'):
    name = _attribute(image, 'name', path)
    where = f'{path}: image {name}'
    size = (int(records.number(_attribute(image, 'height', where), where)),
            int(records.number(_attribute(image, 'width', where), where)))
    shapes = []
    for position, element in enumerate(image):
      if element.tag in NO_AREA:
        logging.warning('%s: ignored a %s (no area)', where, element.tag)
        continue
      region = _shape(element, labels, where)
      if region is not None:
        shapes.append((int(element.get('z_order', 0)), position, region))
    in_z_order = sorted(shapes, key=lambda s: s[:2])
    out.append(records.Annotation(path, name, size, [region for _, _, region in in_z_order]))
  return out


def read_labelmap(path: str) -> tuple[list[str], np.ndarray]:
  """labelmap.txt -> (names, colours [K, 3] uint8)."""
  names, colors = [], []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      line = line.strip()
      if not line or line.startswith('#'):
        continue
      fields = line.split(':')
      try:
        color = [int(v) for v in fields[1].split(',')]
        if len(color) != 3 or not all(0 <= v <= 255 for v in color):
          raise ValueError
      except (IndexError, ValueError):
        raise InputError(f'{path}:{number}: expected name:r,g,b:parts:actions, got '
                         f'{line!r}') from None
      names.append(fields[0])
      colors.append(color)
  if not names:
    raise InputError(f'{path}: no labels')
  return names, np.asarray(colors, np.uint8)


def read_segmentation_masks(src: str, labels, tolerance: float) -> list[records.Annotation]:
  names, colors = read_labelmap(os.path.join(src, 'labelmap.txt'))
  folder = os.path.join(src, 'SegmentationClass')
  paths = records.files(folder, '.png', f'{FORMAT} Segmentation mask 1.1')
  out = []
  for path in paths:
    rgb = image_utils.read_rgb(path)
    position, off = labels.nearest(rgb, tolerance, colors)
    records.check_colors(path, off, rgb, tolerance)
    used = np.unique(position)
    ids = np.zeros(len(names), np.int64)
    for k in used:   # only labels a mask uses must be classes
      ids[k] = labels.id_of(names[k], f'{path} (labelmap.txt)')
    out.append(records.Annotation(path, os.path.relpath(path, folder), rgb.shape[:2],
                                  mask=ids[position].astype(labels.mask_dtype)))
  return out
