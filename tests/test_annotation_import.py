"""Labelling tools in and out (dgan_jax/annotations): each tool's export, written here in
the tool's documented format, imports to the masks the test rasterises on its own; every
refusal is one line and leaves the folder as it was."""

import fractions
import hashlib
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

import conftest
from dgan_jax.annotations import export
from dgan_jax.annotations import importer
from dgan_jax.annotations import labels as labels_lib
from dgan_jax.annotations import raster
from dgan_jax.data import annotations
from dgan_jax.errors import InputError

HEIGHT, WIDTH = 24, 32      # not square: x and y cannot be swapped unnoticed
NAMES = ('background', 'body', 'wheel', 'window')
PALETTE = (255, 255, 255, 200, 30, 30, 20, 20, 20, 40, 90, 220)
LABELS = labels_lib.LabelSet(NAMES, PALETTE, {'tyre': 'wheel'})


def centre_rule(points, height=HEIGHT, width=WIDTH) -> np.ndarray:
  """[height, width] bool: pixel (r, c) is the polygon's when its centre (c + 0.5, r + 0.5)
  lies inside it or on its outline (the closed polygon), decided in exact rational
  arithmetic on the points' float values: on an edge when the cross product is zero
  within the edge's box, inside by the even-odd rule (a ray to +x crossing edges whose
  ends lie on either side of the centre's row, an end on the row counted above it)."""
  corners = [(fractions.Fraction(float(x)), fractions.Fraction(float(y)))
             for x, y in np.asarray(points, float).reshape(-1, 2)]
  out = np.zeros((height, width), bool)
  for r in range(height):
    py = fractions.Fraction(2 * r + 1, 2)
    for c in range(width):
      px = fractions.Fraction(2 * c + 1, 2)
      inside = False
      for (x0, y0), (x1, y1) in zip(corners[-1:] + corners[:-1], corners):
        if ((x1 - x0) * (py - y0) == (y1 - y0) * (px - x0) and min(x0, x1) <= px <= max(x0, x1)
            and min(y0, y1) <= py <= max(y0, y1)):
          inside = True    # on the outline
          break
        if (y0 > py) != (y1 > py) and px < x0 + (py - y0) * (x1 - x0) / (y1 - y0):
          inside = not inside
      out[r, c] = inside
  return out


def paint(*layers) -> np.ndarray:
  """(class id, bool mask) pairs in z-order -> class ids."""
  out = np.zeros((HEIGHT, WIDTH), np.uint8)
  for class_id, covered in layers:
    out[covered] = class_id
  return out


def box(x0, y0, x1, y1) -> np.ndarray:
  out = np.zeros((HEIGHT, WIDTH), bool)
  out[y0:y1, x0:x1] = True
  return out


def test_polygon_pixels_by_construction():
  """The rasteriser on shapes whose pixels are known without rasterising: pixel (r, c) is
  the square [c, c+1) x [r, r+1), covered when its centre is inside the polygon or on its
  outline; a centre a hair outside is not covered."""
  rows, cols = np.mgrid[:HEIGHT, :WIDTH]

  def coverage(points):
    return raster.coverage(raster.Polygon(1, np.asarray(points, np.float64)), HEIGHT, WIDTH)

  cases = {
      # Integer corners: centres 10.5 .. 19.5 and 4.5 .. 11.5, none on the outline.
      'integer rectangle': ([(10, 4), (20, 4), (20, 12), (10, 12)], box(10, 4, 20, 12)),
      # Corners on pixel centres: the outline runs through the centres of columns 2 and 7
      # and rows 3 and 9, which are covered.
      'rectangle through centres': ([(2.5, 3.5), (7.5, 3.5), (7.5, 9.5), (2.5, 9.5)],
                                    box(2, 3, 8, 10)),
      # A hair (2**-20 px) inside on the left: column 2's centres are outside.
      'rectangle a hair inside': ([(2.5 + 2 ** -20, 3.5), (7.5, 3.5), (7.5, 9.5),
                                   (2.5 + 2 ** -20, 9.5)], box(3, 3, 8, 10)),
      # Legs and hypotenuse through centres: (c + 0.5) + (r + 0.5) <= 10.
      'right triangle through centres': ([(0.5, 0.5), (9.5, 0.5), (0.5, 9.5)],
                                         (rows + cols <= 9)),
      # Integer corners (1, 1), (13, 1), (1, 13): centres with x, y > 1 and x + y <= 14,
      # the hypotenuse's 12 centres (c + r == 13) included.
      'right triangle on the grid': ([(1, 1), (13, 1), (1, 13)],
                                     (rows >= 1) & (cols >= 1) & (rows + cols <= 13)),
      # Drawn the other way round (clockwise on screen) and from another first corner.
      'reversed and rotated': ([(1, 13), (13, 1), (1, 1)],
                               (rows >= 1) & (cols >= 1) & (rows + cols <= 13)),
      # A U: two 3-wide prongs (columns 20..22 and 27..29) over a base (rows 16..21).
      'non-convex U': ([(20, 22), (30, 22), (30, 6), (27, 6), (27, 16), (23, 16), (23, 6),
                        (20, 6)],
                       box(20, 16, 30, 22) | box(20, 6, 23, 16) | box(27, 6, 30, 16)),
  }
  for name, (points, expected) in cases.items():
    assert np.array_equal(coverage(points), expected), name
    assert np.array_equal(centre_rule(points), expected), name   # the tests' own rule
  assert int(cases['right triangle on the grid'][1].sum()) == 78   # 12 + 11 + ... + 1
  assert not coverage([(0, 0), (5, 5), (9, 9)]).any()   # no area: no pixel


@pytest.fixture
def folder(tmp_path):
  """A sample stage's plain folder: image_{0,1,2}.png (24 x 32), latents.npy."""
  out = tmp_path / 'work' / 'annotate'
  out.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for i in range(3):
    Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3), np.uint8)).save(
        out / f'image_{i}.png')
  np.save(out / 'latents.npy', rng.standard_normal((3, 512)).astype(np.float32))
  return out


def state(folder) -> dict[str, str]:
  """Every file under `folder` (and its .partial sibling) -> the digest of its bytes."""
  out = {}
  for base in (str(folder), str(folder) + '.partial'):
    for root, _, names in os.walk(base):
      for name in names:
        path = os.path.join(root, name)
        with open(path, 'rb') as f:
          out[path] = hashlib.sha256(f.read()).hexdigest()
  return out


def read_masks(folder, count=3) -> list[np.ndarray]:
  return [annotations.read_mask(str(folder / f'mask_{i}.png')) for i in range(count)]


def run_import(fmt, src, folder, **kwargs):
  return importer.import_annotations(fmt, str(src), str(folder), LABELS, **kwargs)


# --- CVAT ------------------------------------------------------------------------------

def cvat_rle(mask: np.ndarray) -> str:
  """CVAT's mask rle, written from its definition: run lengths of 0s and 1s in row-major
  order, starting with 0s."""
  flat = mask.ravel().astype(int)
  runs, value, length = [], 0, 0
  for pixel in flat:
    if pixel == value:
      length += 1
    else:
      runs.append(length)
      value, length = pixel, 1
  runs.append(length)
  return ', '.join(str(r) for r in runs)


def cvat_xml(images: dict[str, str], *, size=(HEIGHT, WIDTH)) -> str:
  body = ''.join(f'<image id="{i}" name="{name}" width="{size[1]}" height="{size[0]}">'
                 f'{shapes}</image>' for i, (name, shapes) in enumerate(images.items()))
  return (f'<?xml version="1.0" encoding="utf-8"?><annotations><version>1.1</version>'
          f'<meta><task><name>t</name></task></meta>{body}</annotations>')


def test_cvat_xml_polygons_ellipse_rle_mask_and_z_order(folder, tmp_path, caplog):
  blob = np.zeros((6, 9), bool)
  blob[1:5, 2:8] = True
  blob[2, 4] = False
  shapes0 = (
      # z_order 1 paints over the z_order 0 polygon that follows it in the file.
      '<polygon label="Window" source="manual" occluded="0" z_order="1" '
      'points="8.00,4.00;20.00,4.00;20.00,12.00;8.00,12.00"/>'
      '<polygon label="body" source="manual" occluded="0" z_order="0" '
      'points="2.5,2.5;29.5,3.0;27.0,21.5;4.0,20.0"/>'
      '<polyline label="body" points="0,0;5,5" z_order="2"/>'
      f'<mask label="tyre" source="manual" occluded="0" rle="{cvat_rle(blob)}" left="20" '
      'top="14" width="9" height="6" z_order="3"/>')
  shapes1 = '<ellipse label="wheel" cx="16" cy="12" rx="6.5" ry="4" z_order="0"/>'
  shapes2 = '<polygon label="body" points="0,0;32,0;32,24;0,24" z_order="0"/>'
  src = tmp_path / 'annotations.xml'
  src.write_text(cvat_xml({'image_0.png': shapes0, 'subdir/image_1.png': shapes1,
                           'image_2.png': shapes2}))
  report = run_import('cvat', src, folder)
  masks = read_masks(folder)
  placed = np.zeros((HEIGHT, WIDTH), bool)
  placed[14:20, 20:29] = blob
  expected0 = paint((1, centre_rule([(2.5, 2.5), (29.5, 3), (27, 21.5), (4, 20)])),
                    (3, box(8, 4, 20, 12)), (2, placed))
  assert np.array_equal(masks[0], expected0)
  # Hand-computed: a 12 x 8 rectangle on integer corners covers exactly its 96 pixels.
  assert np.sum(masks[0] == 3) == 12 * 8
  rows, cols = np.mgrid[:HEIGHT, :WIDTH] + 0.5
  ellipse = ((cols - 16) / 6.5) ** 2 + ((rows - 12) / 4) ** 2 < 1
  assert np.array_equal(masks[1], paint((2, ellipse)))
  assert np.array_equal(masks[2], np.ones((HEIGHT, WIDTH)))
  assert 'ignored a polyline' in caplog.text
  assert report['images']['image_0']['pixels']['wheel'] == int(blob.sum())
  assert report['imported'] == 3 and report['missing'] == []


def test_cvat_box_is_refused(folder, tmp_path):
  src = tmp_path / 'annotations.xml'
  src.write_text(cvat_xml({f'image_{i}.png': '<box label="body" xtl="1" ytl="1" xbr="5" '
                           'ybr="5" z_order="0"/>' for i in range(3)}))
  before = state(folder)
  with pytest.raises(InputError, match=r'annotations.xml: image image_0.png: a box'):
    run_import('cvat', src, folder)
  assert state(folder) == before


def test_cvat_segmentation_mask_export(folder, tmp_path):
  """"Segmentation mask 1.1": CVAT's own colours, mapped to classes by name."""
  src = tmp_path / 'cvat_masks'
  (src / 'SegmentationClass').mkdir(parents=True)
  (src / 'labelmap.txt').write_text('# label:color_rgb:parts:actions\nbackground:0,0,0::\n'
                                    'body:250,50,83::\nWheel:51,221,255::\nlamp:1,2,3::\n')
  colors = {0: (0, 0, 0), 1: (250, 50, 83), 2: (51, 221, 255)}
  expected = []
  for i in range(3):
    mask = paint((1, box(2, 3, 30, 20)), (2, box(4 + i, 14, 12 + i, 22)))
    expected.append(mask)
    rgb = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for class_id, color in colors.items():
      rgb[mask == class_id] = color
    Image.fromarray(rgb).save(src / 'SegmentationClass' / f'image_{i}.png')
  run_import('cvat', src, folder)
  for mask, want in zip(read_masks(folder), expected):
    assert np.array_equal(mask, want)


# --- LabelMe ---------------------------------------------------------------------------

def labelme_file(path, image_path, shapes, size=(HEIGHT, WIDTH)):
  path.write_text(json.dumps({
      'version': '5.5.0', 'flags': {}, 'imagePath': image_path, 'imageData': None,
      'imageHeight': size[0], 'imageWidth': size[1],
      'shapes': [{'label': label, 'points': points, 'group_id': None, 'description': '',
                  'shape_type': kind, 'flags': {}, 'mask': None}
                 for label, kind, points in shapes]}))


def test_labelme_overlapping_shapes_paint_in_file_order(folder, tmp_path):
  src = tmp_path / 'labelme'
  src.mkdir()
  body = [[1.0, 2.0], [30.0, 1.5], [31.0, 22.0], [2.0, 23.0]]
  for i in range(3):
    labelme_file(src / f'image_{i}.json', f'../annotate/image_{i}.png', [
        ('body', 'polygon', body),
        ('wheel', 'circle', [[10.0, 16.0], [10.0, 21.0]]),     # radius 5
        ('window', 'rectangle', [[20.0 + i, 4.0], [6.0, 10.0]]),  # covers the circle's top
        ('body', 'line', [[0, 0], [9, 9]]),
    ])
  run_import('labelme', src, folder)
  rows, cols = np.mgrid[:HEIGHT, :WIDTH] + 0.5
  circle = (cols - 10) ** 2 + (rows - 16) ** 2 < 25
  for i, mask in enumerate(read_masks(folder)):
    expected = paint((1, centre_rule(body)), (2, circle), (3, box(6, 4, 20 + i, 10)))
    assert np.array_equal(mask, expected)
    assert np.sum(mask == 3) == (14 + i) * 6   # hand count: the rectangle is on top


def test_labelme_size_differs_from_the_image(folder, tmp_path):
  src = tmp_path / 'labelme'
  src.mkdir()
  for i in range(3):
    labelme_file(src / f'image_{i}.json', f'image_{i}.png',
                 [('body', 'polygon', [[1, 1], [5, 1], [5, 5]])],
                 size=(HEIGHT, WIDTH) if i != 1 else (WIDTH, HEIGHT))
  before = state(folder)
  with pytest.raises(InputError, match=r'image_1.json: image_1.png is 24x32 there but '
                     r'image_1.png is 32x24'):
    run_import('labelme', src, folder)
  assert state(folder) == before


# --- COCO ------------------------------------------------------------------------------

def uncompressed_rle(mask: np.ndarray) -> list[int]:
  """COCO's uncompressed RLE from its definition: runs over the column-major pixels,
  starting with 0s."""
  flat = np.asarray(mask, int).ravel(order='F')
  changes = np.flatnonzero(np.diff(flat)) + 1
  bounds = np.concatenate([[0], changes, [flat.size]])
  runs = np.diff(bounds).tolist()
  return ([0] + runs) if flat[0] else runs


def test_coco_polygons_rle_and_uncompressed_rle(folder, tmp_path):
  crowd = box(0, 18, 32, 24)
  crowd[20, 5] = False
  wheel = box(3, 10, 9, 16) | box(22, 11, 27, 17)
  compressed = coco_mask.encode(np.asfortranarray(wheel.astype(np.uint8)))
  polygon = [4.0, 2.0, 28.0, 2.0, 28.0, 19.5, 4.0, 19.5]
  src = tmp_path / 'instances_default.json'
  src.write_text(json.dumps({
      'info': {}, 'licenses': [],
      'categories': [{'id': 7, 'name': 'Body', 'supercategory': ''},
                     {'id': 9, 'name': 'wheel', 'supercategory': ''},
                     {'id': 11, 'name': 'window', 'supercategory': ''}],
      'images': [{'id': 10 + i, 'file_name': f'images/image_{i}.png', 'height': HEIGHT,
                  'width': WIDTH} for i in range(3)],
      'annotations': [
          {'id': 1, 'image_id': 10, 'category_id': 7, 'iscrowd': 0,
           'segmentation': [polygon, [1, 1, 3, 1, 3, 3]], 'area': 0, 'bbox': []},
          {'id': 2, 'image_id': 10, 'category_id': 9, 'iscrowd': 0, 'area': 0, 'bbox': [],
           'segmentation': {'size': [HEIGHT, WIDTH],
                            'counts': compressed['counts'].decode()}},
          {'id': 3, 'image_id': 10, 'category_id': 11, 'iscrowd': 1, 'area': 0, 'bbox': [],
           'segmentation': {'size': [HEIGHT, WIDTH], 'counts': uncompressed_rle(crowd)}},
          {'id': 4, 'image_id': 11, 'category_id': 7, 'iscrowd': 0, 'area': 0, 'bbox': [],
           'segmentation': [[0, 0, 32, 0, 32, 24, 0, 24]]},
          {'id': 5, 'image_id': 12, 'category_id': 9, 'iscrowd': 0, 'area': 0, 'bbox': [],
           'segmentation': [[0, 0, 16, 0, 16, 24, 0, 24]]},
      ]}))
  run_import('coco', src, folder)
  masks = read_masks(folder)
  body = centre_rule(np.reshape(polygon, (-1, 2))) | centre_rule([(1, 1), (3, 1), (3, 3)])
  assert np.array_equal(masks[0], paint((1, body), (2, wheel), (3, crowd)))
  # The same annotations as pycocotools renders them: RLEs exactly; polygons on the
  # boundary only (its own approximation of the centre rule).
  reference = paint((1, coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(
      [polygon], HEIGHT, WIDTH))).astype(bool)), (2, wheel), (3, crowd))
  assert np.mean(reference != masks[0]) < 0.06
  assert np.array_equal(masks[1], np.ones((HEIGHT, WIDTH)))
  assert np.array_equal(masks[2], paint((2, box(0, 0, 16, 24))))


def test_coco_json_given_as_another_format_and_unknown_category(folder, tmp_path):
  src = tmp_path / 'coco.json'
  data = {'images': [{'id': 1, 'file_name': 'image_0.png', 'height': HEIGHT, 'width': WIDTH}],
          'annotations': [{'id': 1, 'image_id': 1, 'category_id': 1,
                           'segmentation': [[0, 0, 4, 0, 4, 4]]}],
          'categories': [{'id': 1, 'name': 'spoiler'}]}
  src.write_text(json.dumps(data))
  before = state(folder)
  with pytest.raises(InputError, match=r"coco.json: annotation 1: label 'spoiler' is not a "
                     r'class of the config \(known: background, body, wheel, window\)'):
    run_import('coco', src, folder)
  with pytest.raises(InputError, match=r'coco.json: not a LabelMe export'):
    run_import('labelme', src, folder)
  with pytest.raises(InputError, match=r'coco.json: not a Label Studio JSON export'):
    run_import('label_studio', src, folder)
  src.write_text('[{"data": {"image": "x.png"}}]')
  with pytest.raises(InputError, match=r'coco.json: not a COCO export'):
    run_import('coco', src, folder)
  src.write_text('{"images": [')
  with pytest.raises(InputError, match=r'coco.json: not valid JSON'):
    run_import('coco', src, folder)
  assert state(folder) == before


# --- Label Studio ----------------------------------------------------------------------

def test_label_studio_brush_polygon_and_rectangle(folder, tmp_path):
  from label_studio_converter import brush  # pylint: disable=import-outside-toplevel
  strokes = box(3, 5, 14, 20)
  strokes[8:10, 6:9] = False

  def result(kind, value, number):
    return {'id': f'r{number}', 'type': kind, 'from_name': kind[:-6], 'to_name': 'image',
            'original_width': WIDTH, 'original_height': HEIGHT, 'image_rotation': 0,
            'value': value}

  polygon = [[10.0, 10.0], [90.0, 12.5], [75.0, 87.5]]   # percent of width, height
  tasks = []
  for i in range(3):
    results = [
        result('polygonlabels', {'points': polygon, 'polygonlabels': ['body'],
                                 'closed': True}, 0),
        result('brushlabels', {'format': 'rle', 'brushlabels': ['wheel'],
                               'rle': brush.mask2rle(strokes.astype(np.uint8) * 255)}, 1),
        result('rectanglelabels', {'x': 50.0, 'y': 25.0, 'width': 25.0, 'height': 50.0,
                                   'rotation': 90.0 * i, 'rectanglelabels': ['window']}, 2),
    ]
    tasks.append({'id': 40 + i, 'data': {'image': f'/data/upload/3/8c1f2e0a-image_{i}.png'},
                  'annotations': [{'id': 1, 'was_cancelled': True, 'result': []},
                                  {'id': 2, 'result': results}], 'predictions': []})
  src = tmp_path / 'project-3-at-2026.json'
  src.write_text(json.dumps(tasks))
  run_import('label_studio', src, folder)
  masks = read_masks(folder)
  body = centre_rule(np.asarray(polygon) / 100 * [WIDTH, HEIGHT])
  window = box(16, 6, 24, 18)     # x 50%..75% of 32, y 25%..75% of 24
  assert np.array_equal(masks[0], paint((1, body), (2, strokes), (3, window)))
  # Rotated 90 degrees clockwise about its top-left corner (16, 6): x 4..16, y 6..14.
  assert np.array_equal(masks[1], paint((1, body), (2, strokes), (3, box(4, 6, 16, 14))))


# --- palette PNGs ----------------------------------------------------------------------

def test_palette_pngs_with_tolerance(folder, tmp_path):
  src = tmp_path / 'painted'
  src.mkdir()
  colors = np.asarray(PALETTE, np.uint8).reshape(-1, 3)
  expected = []
  for i in range(3):
    mask = paint((1, box(2, 2, 30, 22)), (3, box(5 + i, 4, 15, 10)))
    rgb = colors[mask].copy()
    rgb[4, 15] = (60, 80, 190)      # an antialiased edge: 37.4 from window, 185 from wheel
    mask[4, 15] = 3
    expected.append(mask)
    Image.fromarray(rgb).save(src / f'mask_{i}.png')
  before = state(folder)
  with pytest.raises(InputError, match=r'mask_0.png: 1 pixels are not a label colour \(within '
                     r'tolerance 30\); the first is \(x=15, y=4\) with RGB \(60, 80, 190\)'):
    run_import('palette', src, folder, tolerance=30)
  assert state(folder) == before
  run_import('palette', src, folder, tolerance=40)
  for mask, want in zip(read_masks(folder), expected):
    assert np.array_equal(mask, want)


# --- matching, errors, atomicity -------------------------------------------------------

def polygon_json(src, names, label='body'):
  src.mkdir(exist_ok=True)
  for name in names:
    labelme_file(src / f'{os.path.splitext(os.path.basename(name))[0]}.json', name,
                 [(label, 'polygon', [[1, 1], [20, 1], [20, 20]])])


def test_missing_and_foreign_images(folder, tmp_path):
  before = state(folder)
  polygon_json(tmp_path / 'two', ['image_0.png', 'image_2.png'])
  with pytest.raises(InputError, match=r'annotate/image_1.png: no annotation in .*two \(1 of '
                     r'3 samples have none: image_1.png\); label them, or import the rest '
                     r'with --allow-missing'):
    run_import('labelme', tmp_path / 'two', folder)
  polygon_json(tmp_path / 'foreign', ['image_0.png', 'image_1.png', 'image_2.png',
                                      'image_12.png'])
  with pytest.raises(InputError, match=r"image_12.json: annotates 'image_12.png', which is "
                     r'not among the samples'):
    run_import('labelme', tmp_path / 'foreign', folder)
  polygon_json(tmp_path / 'unknown', ['image_0.png', 'image_1.png', 'image_2.png'],
               label='Spoiler')
  with pytest.raises(InputError, match=r"label 'Spoiler' is not a class of the config"):
    run_import('labelme', tmp_path / 'unknown', folder)
  assert state(folder) == before


def test_reimport_replaces_the_masks_as_a_whole(folder, tmp_path):
  polygon_json(tmp_path / 'all', ['C:\\labels\\image_0.png', 'image_1.jpg',
                                  'task_image_2.png'])
  run_import('labelme', tmp_path / 'all', folder)
  assert [p for p in sorted(os.listdir(folder)) if p.startswith('mask_')] == [
      'mask_0.png', 'mask_1.png', 'mask_2.png']
  polygon_json(tmp_path / 'two', ['image_0.png', 'image_2.png'], label='WHEEL')
  report = run_import('labelme', tmp_path / 'two', folder, allow_missing=True)
  assert report['missing'] == ['image_1.png']
  assert not (folder / 'mask_1.png').exists()          # not a mix of old and new
  assert [int(m.max()) for m in read_masks(folder, 1)] == [2]
  assert not os.path.exists(str(folder) + '.partial')
  for name in ('image_0.png', 'image_1.png', 'image_2.png', 'latents.npy'):
    assert (folder / name).exists()
  # The report: image | mask | overlay per imported sample, enlarged to 96 rows.
  grid = np.asarray(Image.open(folder / 'annotations.png'))
  assert grid.shape == (2 + 2 * 98, 2 + 3 * 130, 3)
  mask_tile = grid[2:98, 132:260]
  assert tuple(mask_tile[5 * 4 + 1, 5 * 4 + 1]) == (20, 20, 20)    # wheel at (5, 5)
  assert tuple(mask_tile[90, 120]) == (255, 255, 255)              # background
  record = json.loads((folder / 'annotations.json').read_text())
  assert record['images']['image_2']['pixels']['wheel'] == int(centre_rule(
      [(1, 1), (20, 1), (20, 20)]).sum())


def test_small_classes_are_flagged(folder, tmp_path, caplog):
  polygon_json(tmp_path / 'all', [f'image_{i}.png' for i in range(3)])
  report = run_import('labelme', tmp_path / 'all', folder, min_segment_pixels=500)
  assert report['images']['image_0']['below_min_segment_pixels'] == ['body']
  assert 'body covers fewer than 500 pixels' in caplog.text


def test_bigdatasetgan_layout(tmp_path):
  """Class-conditional samples: masks go to annotations/<subset>/<wnid>/<stem>.png."""
  folder = tmp_path / 'annotate'
  stems = ['n01440764_0_0000', 'n01443537_1_0000']
  for stem in stems:
    image_dir = folder / 'images' / 'biggan32' / stem.split('_')[0]
    image_dir.mkdir(parents=True)
    (folder / 'annotations' / 'biggan32' / stem.split('_')[0]).mkdir(parents=True)
    Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(image_dir / f'{stem}.png')
  polygon_json(tmp_path / 'src', [f'{stem}.png' for stem in stems], label='Foreground')
  labels = labels_lib.LabelSet(('background', 'foreground'), ())
  importer.import_annotations('labelme', str(tmp_path / 'src'), str(folder), labels)
  for stem in stems:
    mask = np.asarray(Image.open(folder / 'annotations' / 'biggan32' / stem.split('_')[0]
                                 / f'{stem}.png'))
    assert np.array_equal(mask, centre_rule([(1, 1), (20, 1), (20, 20)]).astype(np.uint8))


# --- export and the whole loop ---------------------------------------------------------

def test_export_writes_each_tools_label_files(folder):
  written = export.export(str(folder), LABELS)
  assert written == ['cvat_labels.json', 'label_studio_config.xml', 'label_studio_tasks.json',
                     'labels.txt', 'legend.png']
  cvat_labels = json.loads((folder / 'cvat_labels.json').read_text())
  assert [(l['name'], l['color']) for l in cvat_labels] == [
      ('body', '#c81e1e'), ('wheel', '#141414'), ('window', '#285adc')]
  view = ElementTree.parse(folder / 'label_studio_config.xml').getroot()
  for tag in ('BrushLabels', 'PolygonLabels'):
    assert [(l.get('value'), l.get('background')) for l in view.find(tag)] == [
        (l['name'], l['color']) for l in cvat_labels]
  tasks = json.loads((folder / 'label_studio_tasks.json').read_text())
  assert [t['data']['image'] for t in tasks] == [
      f'/data/local-files/?d=annotate/image_{i}.png' for i in range(3)]
  assert (folder / 'labels.txt').read_text().split() == [
      '__ignore__', '_background_', 'body', 'wheel', 'window']
  legend = np.asarray(Image.open(folder / 'legend.png'))
  for i in range(4):     # each row's swatch centre in the class colour
    assert tuple(legend[i * 24 + 12, 12]) == PALETTE[3 * i:3 * i + 3]


def test_cli_import_then_train_interpreter(stylegan_workdir, tmp_path):
  """The loop on the test config: the sample stage's label files, a CVAT export drawn on
  its images, `python -m dgan_jax.annotations import`, then train_interpreter."""
  workdir = tmp_path / 'work'
  shutil.copytree(stylegan_workdir / 'annotate', workdir / 'annotate')
  folder = workdir / 'annotate'
  cvat_labels = json.loads((folder / 'cvat_labels.json').read_text())
  assert [l['name'] for l in cvat_labels] == ['part_a', 'part_b']
  shapes = ('<polygon label="part_a" points="0,0;32,0;32,12;0,12" z_order="0"/>'
            '<ellipse label="part_b" cx="16" cy="16" rx="9" ry="6" z_order="1"/>')
  src = tmp_path / 'annotations.xml'
  src.write_text(cvat_xml({f'image_{i}.png': shapes for i in range(4)}))
  result = subprocess.run(
      [sys.executable, '-m', 'dgan_jax.annotations', 'import', '--format=cvat', str(src),
       '--config=configs/test.py', f'--workdir={workdir}'],
      cwd=conftest.REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  rows, cols = np.mgrid[:24, :32] + 0.5
  ellipse = ((cols - 16) / 9) ** 2 + ((rows - 16) / 6) ** 2 < 1
  expected = np.where(ellipse, 2, np.where(rows < 12, 1, 0))
  assert np.array_equal(read_masks(folder, 4)[3], expected)
  result = subprocess.run(
      [sys.executable, '-m', 'dgan_jax.annotations', 'import', '--format=cvat',
       str(tmp_path / 'absent.xml'), '--config=configs/test.py', f'--workdir={workdir}'],
      cwd=conftest.REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == f'error: {tmp_path}/absent.xml: no such ' \
      'file or folder'
  result = conftest.run_main('--config=configs/test.py', f'--workdir={workdir}',
                             '--stages=train_interpreter', '--config.interpreter.num_steps=30',
                             '--config.data.synthetic_masks=False')
  assert result.returncode == 0, result.stderr[-3000:]
  info = json.loads((workdir / 'interpreter' / 'info.json').read_text())
  assert info['annotation_dir'] == str(folder) and info['num_annotated'] == 4


def test_label_aliases_are_checked_with_the_config():
  import importlib  # pylint: disable=import-outside-toplevel
  from dgan_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  config = importlib.import_module('configs.test').get_config()
  with config.unlocked():
    config.data.label_aliases = {'A': 'Part_A'}
  config_lib.validate(config)
  assert labels_lib.LabelSet.from_config(config.data).id_of('a', 'x') == 1
  with config.unlocked():
    config.data.label_aliases = {'tyre': 'wheel'}
  with pytest.raises(InputError, match=r"config.data.label_aliases.tyre: 'wheel' is not in "
                     r"config.data.class_names \['background', 'part_a', 'part_b'\]"):
    config_lib.validate(config)
