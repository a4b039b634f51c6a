"""The sample stage's images a person labels, and where each one's mask goes.

  plain (unconditional generators)   image_{i}.png -> mask_{i}.png
  BigDatasetGAN's layout             images/<subset>/<wnid>/<stem>.png ->
                                     annotations/<subset>/<wnid>/<stem>.png
A tool's reference to an image (a path, an upload URL, a file name with the tool's prefix)
matches a sample by its file stem: equal to the sample's, or ending in it after a
separator (`3f2a-image_3.png`, `1_image_3.jpg`); palette PNGs may say mask_{i} instead.
"""

import dataclasses
import os
import re

from PIL import Image

from dgan_jax.data import annotated
from dgan_jax.errors import InputError

PLAIN_IMAGE = re.compile(r'image_(\d+)\.png')


@dataclasses.dataclass(frozen=True)
class Sample:
  """Paths relative to the annotation folder; `names` are the stems that match it."""
  image: str
  mask: str
  names: tuple[str, ...]

  @property
  def stem(self) -> str:
    return self.names[0]


def catalogue(folder: str) -> list[Sample]:
  """The samples of a sample-stage folder, in index (plain) or path (layout) order."""
  found = []
  if annotated.detect_format(folder) == annotated.LAYOUT:
    images = os.path.join(folder, 'images')
    for root, _, names in sorted(os.walk(images)):
      for name in sorted(names):
        if name.endswith('.png'):
          image = os.path.relpath(os.path.join(root, name), folder)
          mask = os.path.join('annotations', os.path.relpath(image, 'images'))
          found.append(Sample(image, mask, (os.path.splitext(name)[0],)))
  elif os.path.isdir(folder):
    numbers = sorted(int(m.group(1)) for m in map(PLAIN_IMAGE.fullmatch, os.listdir(folder))
                     if m)
    found = [Sample(f'image_{i}.png', f'mask_{i}.png', (f'image_{i}', f'mask_{i}'))
             for i in numbers]
  if not found:
    raise InputError(f'{folder}: no sample images (image_{{i}}.png, or images/<subset>/'
                     '<wnid>/<stem>.png); run the sample stage first')
  return found


def is_mask_file(relative: str, folder_format: str) -> bool:
  """A mask of a previous import (replaced as a whole by the next)."""
  if folder_format == annotated.LAYOUT:
    return relative.startswith('annotations' + os.sep) and relative.endswith('.png')
  return re.fullmatch(r'mask_\d+\.(png|npy)', relative) is not None


def stem_of(reference: str) -> str:
  """A tool's image reference -> its file stem: the last path or URL component, without
  its extension."""
  last = re.split(r'[/\\?=&]', reference.strip())[-1]
  return os.path.splitext(last)[0]


def match(reference: str, by_name: dict[str, Sample]) -> Sample | None:
  """The sample a tool's image reference names, or None."""
  stem = stem_of(reference)
  if stem in by_name:
    return by_name[stem]
  best = None
  for name, sample in by_name.items():
    if stem.endswith(name) and not stem[-len(name) - 1].isalnum() and (
        best is None or len(name) > len(best[0])):
      best = (name, sample)
  return best and best[1]


def image_size(path: str) -> tuple[int, int]:
  """(height, width) from the file header."""
  try:
    with Image.open(path) as image:
      return image.height, image.width
  except (OSError, SyntaxError) as e:
    raise InputError(f'{path}: not a readable image ({e})') from None
