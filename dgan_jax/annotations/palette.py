"""Masks painted in the config's palette colours (GIMP, Krita, Photoshop): one RGB(A) PNG
per image, named after it (image_3.png, mask_3.png, ...). Each pixel takes the class of
the nearest palette colour within `tolerance` (Euclidean RGB distance, for antialiased
edges); pixels farther from every colour are refused, not guessed.
"""

import os

from dgan_jax.annotations import records
from dgan_jax.data import images as image_utils

FORMAT = 'palette PNG'


def read(src: str, labels, tolerance: float) -> list[records.Annotation]:
  """SRC: a PNG or a folder of them."""
  out = []
  root = src if os.path.isdir(src) else os.path.dirname(src)
  for path in records.files(src, '.png', FORMAT):
    rgb = image_utils.read_rgb(path)
    class_map, off = labels.nearest(rgb, tolerance)
    records.check_colors(path, off, rgb, tolerance)
    out.append(records.Annotation(path, os.path.relpath(path, root), rgb.shape[:2],
                                  mask=class_map.astype(labels.mask_dtype)))
  return out
