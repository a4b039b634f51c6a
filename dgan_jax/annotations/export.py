"""`python -m dgan_jax.annotations export` (and the sample stage): the run's classes in each
labelling tool's own format, written into the annotation folder beside the images.

  cvat_labels.json           CVAT: Project/Task > Labels > Raw, paste (name, colour)
  label_studio_config.xml    Label Studio: Settings > Labeling Interface > Code (brush and
                             polygon labels in the palette's colours)
  label_studio_tasks.json    Label Studio: Import; each task points at its image through
                             local-file serving with the workdir as document root
  labels.txt                 LabelMe: `labelme <folder> --labels labels.txt` (its
                             semantic-segmentation convention: __ignore__, _background_,
                             then the classes)
  legend.png                 a swatch and name per class, for painting in GIMP or Krita

Class 0 is what stays unlabelled, so the tools list classes 1.. only; the legend shows all.
"""

import os
from xml.sax import saxutils

import numpy as np
from PIL import Image
from PIL import ImageDraw

from dgan_jax import io
from dgan_jax.annotations import samples as samples_lib
from dgan_jax.data import images as image_utils

LABEL_STUDIO_URL = '/data/local-files/?d='
LEGEND_ROW = 24


def cvat(folder: str, labels, catalogue) -> list[str]:
  del catalogue
  io.write_json(os.path.join(folder, 'cvat_labels.json'),
                [{'name': name, 'color': labels.hex_color(i), 'type': 'any', 'attributes': []}
                 for i, name in enumerate(labels.names) if i])
  return ['cvat_labels.json']


def label_studio(folder: str, labels, catalogue) -> list[str]:
  """The tasks' image URLs are relative to the workdir, Label Studio's document root."""
  choices = ''.join(f'    <Label value={saxutils.quoteattr(name)} '
                    f'background="{labels.hex_color(i)}"/>\n'
                    for i, name in enumerate(labels.names) if i)
  config = ('<View>\n  <Image name="image" value="$image" zoom="true" zoomControl="true"/>\n'
            f'  <BrushLabels name="brush" toName="image">\n{choices}  </BrushLabels>\n'
            '  <PolygonLabels name="polygon" toName="image" strokeWidth="1" '
            f'pointSize="small" opacity="0.5">\n{choices}  </PolygonLabels>\n</View>\n')
  io.write_text(os.path.join(folder, 'label_studio_config.xml'), config)
  tasks = [{'data': {'image': LABEL_STUDIO_URL + f'{io.ANNOTATE}/{s.image}'.replace(os.sep, '/')}}
           for s in catalogue]
  io.write_json(os.path.join(folder, 'label_studio_tasks.json'), tasks)
  return ['label_studio_config.xml', 'label_studio_tasks.json']


def labelme(folder: str, labels, catalogue) -> list[str]:
  del catalogue
  io.write_text(os.path.join(folder, 'labels.txt'),
                '\n'.join(['__ignore__', '_background_', *labels.names[1:]]) + '\n')
  return ['labels.txt']


def legend(folder: str, labels, catalogue) -> list[str]:
  """legend.png: one row per class, its colour swatch and 'id name'."""
  del catalogue
  width = 16 + 8 * max(len(f'{i} {n}') for i, n in enumerate(labels.names)) + LEGEND_ROW
  image = Image.new('RGB', (width, LEGEND_ROW * len(labels)), (255, 255, 255))
  draw = ImageDraw.Draw(image)
  for i, name in enumerate(labels.names):
    top = i * LEGEND_ROW
    draw.rectangle([2, top + 2, LEGEND_ROW - 3, top + LEGEND_ROW - 3],
                   fill=tuple(int(v) for v in labels.colors[i]), outline=(0, 0, 0))
    draw.text((LEGEND_ROW + 4, top + 6), f'{i} {name}', fill=(0, 0, 0))
  image_utils.save_png(os.path.join(folder, 'legend.png'), np.asarray(image))
  return ['legend.png']


EXPORTS = {'cvat': cvat, 'label_studio': label_studio, 'labelme': labelme, 'palette': legend}


def export(folder: str, labels, formats=tuple(EXPORTS)) -> list[str]:
  """Writes the label files of `formats` into the annotation folder; -> their names."""
  catalogue = samples_lib.catalogue(folder)
  return [name for f in formats for name in EXPORTS[f](folder, labels, catalogue)]
