"""`python -m dgan_jax.annotations import`: a labelling tool's export -> the annotation
folder's masks (mask_{i}.png class ids, or the layout's annotations/), checked as a whole
before anything is written, then swapped in with the folder; plus annotations.png (image |
mask | overlay per sample) and annotations.json (per-class pixel counts)."""

import os
import shutil

import numpy as np
from absl import logging
from PIL import Image

from dgan_jax import io
from dgan_jax.annotations import coco
from dgan_jax.annotations import cvat
from dgan_jax.annotations import label_studio
from dgan_jax.annotations import labelme
from dgan_jax.annotations import palette
from dgan_jax.annotations import samples as samples_lib
from dgan_jax.data import annotated
from dgan_jax.data import images as image_utils
from dgan_jax.errors import InputError

READERS = {'cvat': cvat.read, 'labelme': labelme.read, 'coco': coco.read,
           'label_studio': label_studio.read, 'palette': palette.read}
REPORT_IMAGE = 'annotations.png'
REPORT_JSON = 'annotations.json'


def _pair(records, catalogue):
  """-> {sample stem: (sample, record)}; InputError for an annotation of no sample or two
  annotations of one."""
  by_name = {name: sample for sample in catalogue for name in sample.names}
  paired = {}
  for record in records:
    sample = samples_lib.match(record.image_name, by_name)
    if sample is None:
      raise InputError(f'{record.source}: annotates {record.image_name!r}, which is not '
                       f'among the samples (e.g. {catalogue[0].image})')
    if sample.stem in paired:
      raise InputError(f'{record.source}: annotates {sample.image} again (also in '
                       f'{paired[sample.stem][1].source})')
    paired[sample.stem] = (sample, record)
  return paired


def _render(folder: str, sample, record, labels) -> np.ndarray:
  """The record's mask at its image's size; InputError when the sizes differ."""
  height, width = samples_lib.image_size(os.path.join(folder, sample.image))
  if record.size is not None and tuple(record.size) != (height, width):
    raise InputError(f'{record.source}: {record.image_name} is {record.size[1]}x'
                     f'{record.size[0]} there but {sample.image} is {width}x{height}')
  mask = record.render(height, width, len(labels))
  if mask.shape != (height, width):
    raise InputError(f'{record.source}: the mask is {mask.shape[1]}x{mask.shape[0]} but '
                     f'{sample.image} is {width}x{height}')
  return mask


def _copy_without_masks(folder: str, tmp: str, folder_format: str) -> None:
  """Everything of `folder` but the previous import (hard links where possible)."""
  for root, dirs, names in os.walk(folder):
    relative_root = os.path.relpath(root, folder)
    for name in dirs:
      os.makedirs(os.path.join(tmp, relative_root, name), exist_ok=True)
    for name in names:
      relative = os.path.normpath(os.path.join(relative_root, name))
      if relative in (REPORT_IMAGE, REPORT_JSON) or samples_lib.is_mask_file(relative,
                                                                             folder_format):
        continue
      try:
        os.link(os.path.join(folder, relative), os.path.join(tmp, relative))
      except OSError:
        shutil.copy2(os.path.join(folder, relative), os.path.join(tmp, relative))


def _save_mask(path: str, mask: np.ndarray) -> None:
  """Class ids as a single-channel PNG: mode L, or I beyond 255."""
  with io.atomic_file(path, 'wb') as f:
    Image.fromarray(mask.astype(np.uint8) if mask.max() < 256 else mask.astype(np.int32)
                    ).save(f, format='PNG')


def _report_image(folder: str, rows, labels) -> np.ndarray:
  tiles = []
  for sample, mask in rows:
    image = image_utils.read_rgb(os.path.join(folder, sample.image))
    colored = image_utils.colorize(mask, labels.colors)
    overlay = ((image.astype(np.uint16) + colored) // 2).astype(np.uint8)
    tiles += [image_utils.enlarge(t) for t in (image, colored, overlay)]
  return image_utils.grid(np.stack(tiles), columns=3)


def import_annotations(format_name: str, src: str, folder: str, labels,
                       tolerance: float = 0.0, allow_missing: bool = False,
                       min_segment_pixels: int = 0) -> dict:
  """Reads SRC in `format_name` (READERS), writes the masks of `folder`'s samples and
  the report, replacing any earlier import as a whole; -> annotations.json's content.
  Nothing is written when anything is wrong (InputError naming the file)."""
  if format_name not in READERS:
    raise InputError(f'--format: {format_name!r} is not one of {", ".join(READERS)}')
  if not os.path.exists(src):
    raise InputError(f'{src}: no such file or folder')
  folder_format = annotated.detect_format(folder)
  catalogue = samples_lib.catalogue(folder)
  paired = _pair(READERS[format_name](src, labels, tolerance), catalogue)
  empty = [stem for stem, (_, record) in paired.items()
           if record.mask is None and not record.regions]
  missing = [s for s in catalogue if s.stem not in paired or s.stem in empty]
  if missing and not allow_missing:
    shown = ', '.join(s.image for s in missing[:5]) + (', ...' if len(missing) > 5 else '')
    raise InputError(f'{os.path.join(folder, missing[0].image)}: no annotation in {src} '
                     f'({len(missing)} of {len(catalogue)} samples have none: {shown}); '
                     'label them, or import the rest with --allow-missing')
  rows, images = [], {}
  for sample in catalogue:
    if sample in missing:
      continue
    record = paired[sample.stem][1]
    mask = _render(folder, sample, record, labels)
    rows.append((sample, mask))
    counts = np.bincount(mask.ravel(), minlength=len(labels))
    small = [labels.names[c] for c in range(1, len(labels))
             if 0 < counts[c] < min_segment_pixels]
    for name in small:
      logging.warning('%s: %s covers fewer than %d pixels; training sets it to background '
                      '(config.data.min_segment_pixels)', sample.image, name,
                      min_segment_pixels)
    images[sample.stem] = {'image': sample.image, 'mask': sample.mask,
                           'source': os.path.abspath(record.source),
                           'pixels': {labels.names[c]: int(counts[c])
                                      for c in range(len(labels))},
                           'below_min_segment_pixels': small}
  if not rows:
    raise InputError(f'{src}: annotates none of the {len(catalogue)} samples in {folder}')
  report = {'format': format_name, 'source': os.path.abspath(src), 'tolerance': tolerance,
            'classes': list(labels.names), 'min_segment_pixels': min_segment_pixels,
            'imported': len(rows), 'missing': [s.image for s in missing], 'images': images}
  with io.atomic_dir(folder) as tmp:
    _copy_without_masks(folder, tmp, folder_format)
    for sample, mask in rows:
      os.makedirs(os.path.dirname(os.path.join(tmp, sample.mask)), exist_ok=True)
      _save_mask(os.path.join(tmp, sample.mask), mask)
    image_utils.save_png(os.path.join(tmp, REPORT_IMAGE), _report_image(folder, rows, labels))
    io.write_json(os.path.join(tmp, REPORT_JSON), report)
  if missing:
    logging.warning('imported %d of %d samples; no annotation for %s', len(rows),
                    len(catalogue), ', '.join(s.image for s in missing))
  return report
