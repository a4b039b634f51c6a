"""COCO instances JSON ({"images", "annotations", "categories"}): polygons
([[x0, y0, x1, y1, ...], ...]) drawn by the rasteriser; RLE segmentations, compressed
(counts a string) or not (counts a list; `iscrowd` regions are usually these), decoded
with pycocotools. COCO has no z-order: annotations paint in file order. Category names map
to the config's classes.
"""

import numpy as np

from dgan_jax.annotations import raster
from dgan_jax.annotations import records
from dgan_jax.errors import InputError

FORMAT = 'COCO'


def _rle(segmentation: dict, height: int, width: int, where: str) -> np.ndarray:
  from pycocotools import mask as coco_mask  # pylint: disable=import-outside-toplevel
  size = segmentation.get('size')
  if list(size or []) != [height, width]:
    raise InputError(f'{where}: RLE size {size} differs from its image\'s [{height}, {width}]')
  counts = segmentation.get('counts')
  try:
    if isinstance(counts, list):   # uncompressed
      rle = coco_mask.frPyObjects(segmentation, height, width)
    elif isinstance(counts, str):
      rle = {'size': [height, width], 'counts': counts.encode()}
    else:
      raise TypeError
    return coco_mask.decode(rle).astype(bool)
  except (TypeError, ValueError):
    raise InputError(f'{where}: not a COCO RLE segmentation') from None


def read(src: str, labels, tolerance: float) -> list[records.Annotation]:
  """SRC: the instances JSON."""
  del tolerance
  path, data = records.single_json(src, FORMAT)
  if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                           for k in ('images', 'annotations', 'categories')):
    raise records.not_format(path, FORMAT, 'an object with "images", "annotations" and '
                             '"categories" lists')
  try:
    categories = {c['id']: c['name'] for c in data['categories']}
    images = {i['id']: i for i in data['images']}
  except (KeyError, TypeError):
    raise records.not_format(path, FORMAT, 'categories need id and name, images an id') \
        from None
  regions = {image_id: [] for image_id in images}
  for number, annotation in enumerate(data['annotations']):
    where = f'{path}: annotation {annotation.get("id", number)}' \
        if isinstance(annotation, dict) else f'{path}: annotation {number}'
    if not isinstance(annotation, dict) or 'segmentation' not in annotation:
      raise records.not_format(where, FORMAT, 'annotations need a segmentation')
    image = images.get(annotation.get('image_id'))
    if image is None:
      raise InputError(f'{where}: image_id {annotation.get("image_id")} is not in "images"')
    category = categories.get(annotation.get('category_id'))
    if category is None:
      raise InputError(f'{where}: category_id {annotation.get("category_id")} is not in '
                       '"categories"')
    class_id = labels.id_of(category, where)
    segmentation = annotation['segmentation']
    if isinstance(segmentation, list):
      regions[image['id']] += [raster.Polygon(class_id, records.points(polygon, where))
                               for polygon in segmentation]
    elif isinstance(segmentation, dict):
      height, width = int(image.get('height', 0)), int(image.get('width', 0))
      regions[image['id']].append(
          raster.Bitmap(class_id, _rle(segmentation, height, width, where)))
    else:
      raise records.not_format(where, FORMAT, 'segmentation is a polygon list or an RLE')
  out = []
  for image_id, image in images.items():
    if 'file_name' not in image:
      raise records.not_format(path, FORMAT, f'image {image_id} has no file_name')
    size = (int(image['height']), int(image['width'])) if 'height' in image else None
    out.append(records.Annotation(path, image['file_name'], size, regions[image_id]))
  return out
