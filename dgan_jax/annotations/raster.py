"""The one rasteriser every importer draws with: which pixels a labelled shape covers.

Coordinates are the labelling tools' own: continuous image coordinates in pixels, x to the
right and y down, with pixel (row r, column c) the unit square [c, c+1) x [r, r+1). CVAT,
COCO, Label Studio and LabelMe all place points this way on their canvas. A pixel belongs to
a shape when its centre (c + 0.5, r + 0.5) lies inside it: skimage.draw's rule, shifted by
half a pixel, so a 10 x 10 square drawn from (10, 10) to (20, 20) covers exactly pixels
10..19. pycocotools' polygon masks approximate the same rule (they differ on boundary
pixels only); LabelMe's own PIL export also fills the outline, one pixel wider.

Regions are painted in order: a later region covers an earlier one (the tools' z-order).
"""

import dataclasses

import numpy as np
from skimage import draw

BACKGROUND = 0


@dataclasses.dataclass(frozen=True)
class Polygon:
  """A closed polygon, points [n, 2] as (x, y)."""
  class_id: int
  points: np.ndarray


@dataclasses.dataclass(frozen=True)
class Ellipse:
  """Centre (cx, cy), radii (rx along x, ry along y) before rotation; rotation in degrees,
  clockwise on screen (y down), as CVAT stores it."""
  class_id: int
  cx: float
  cy: float
  rx: float
  ry: float
  rotation: float = 0.0


@dataclasses.dataclass(frozen=True)
class Bitmap:
  """A binary mask [h, w] whose pixel (0, 0) is image pixel (top, left)."""
  class_id: int
  mask: np.ndarray
  top: int = 0
  left: int = 0


Region = Polygon | Ellipse | Bitmap


def rectangle(class_id: int, x0: float, y0: float, x1: float, y1: float) -> Polygon:
  """An axis-aligned rectangle between two corners (any order)."""
  xs, ys = sorted((x0, x1)), sorted((y0, y1))
  return Polygon(class_id, np.array([[xs[0], ys[0]], [xs[1], ys[0]], [xs[1], ys[1]],
                                     [xs[0], ys[1]]], np.float64))


def coverage(region: Region, height: int, width: int) -> np.ndarray:
  """[height, width] bool: the pixels `region` covers (clipped to the image)."""
  covered = np.zeros((height, width), bool)
  if isinstance(region, Polygon):
    points = np.asarray(region.points, np.float64).reshape(-1, 2)
    if len(points) >= 3:
      rows, cols = draw.polygon(points[:, 1] - 0.5, points[:, 0] - 0.5, (height, width))
      covered[rows, cols] = True
  elif isinstance(region, Ellipse):
    if region.rx > 0 and region.ry > 0:
      # skimage rotates counter-clockwise in (row, column) space: on screen that is
      # anticlockwise, so a clockwise angle is negated.
      rows, cols = draw.ellipse(region.cy - 0.5, region.cx - 0.5, region.ry, region.rx,
                                (height, width), rotation=-np.deg2rad(region.rotation))
      covered[rows, cols] = True
  else:
    mask = np.asarray(region.mask, bool)
    top, left = max(region.top, 0), max(region.left, 0)
    bottom = min(region.top + mask.shape[0], height)
    right = min(region.left + mask.shape[1], width)
    if bottom > top and right > left:
      covered[top:bottom, left:right] = mask[top - region.top:bottom - region.top,
                                             left - region.left:right - region.left]
  return covered


def render(regions, height: int, width: int, num_classes: int) -> np.ndarray:
  """Regions in z-order (later on top) -> [height, width] class ids, 0 where none is;
  uint8 for up to 256 classes, else int32."""
  mask = np.full((height, width), BACKGROUND, np.uint8 if num_classes <= 256 else np.int32)
  for region in regions:
    mask[coverage(region, height, width)] = region.class_id
  return mask
