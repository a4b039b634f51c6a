"""python -m dgan_jax.annotations {import SRC | export} --config=... --workdir=W

  import  a labelling tool's export -> W/annotate/mask_{i}.png (see importer.py):
          --format=cvat|labelme|coco|label_studio|palette, --tolerance=D (palette
          colours), --allow-missing
  export  the config's classes in the tools' label formats into W/annotate (export.py):
          --format=all|cvat|label_studio|labelme|palette
"""

import os

from absl import app
from absl import flags
from absl import logging

from dgan_jax import io
from dgan_jax import main as main_lib
from dgan_jax.annotations import export as export_lib
from dgan_jax.annotations import importer
from dgan_jax.annotations import labels as labels_lib
from dgan_jax import config as config_lib
from dgan_jax.errors import InputError

COMMANDS = ('import', 'export')
flags.DEFINE_string('format', None, 'import: ' + '|'.join(importer.READERS) +
                    '; export: all|' + '|'.join(export_lib.EXPORTS) + ' (default all)')
flags.DEFINE_float('tolerance', 0.0, 'import: the largest RGB distance from a palette '
                   'colour still taken as that class (antialiased edges)')
flags.DEFINE_bool('allow-missing', False, 'import: write the masks there are and list the '
                  'samples without one')


def run(argv: list[str]) -> None:
  command, *rest = argv[1:] or ['']
  if command not in COMMANDS:
    raise InputError(f'the command is one of {", ".join(COMMANDS)}, not {command!r}')
  config = flags.FLAGS.config
  config_lib.validate(config)
  folder = os.path.join(os.path.abspath(os.path.expanduser(flags.FLAGS.workdir)), io.ANNOTATE)
  labels = labels_lib.LabelSet.from_config(config.data)
  format_name = flags.FLAGS.format
  if command == 'export':
    if rest:
      raise InputError(f'export takes no SRC, got {rest}')
    formats = (tuple(export_lib.EXPORTS) if format_name in (None, 'all') else (format_name,))
    if not set(formats) <= set(export_lib.EXPORTS):
      raise InputError(f'--format: {format_name!r} is not one of all, '
                       f'{", ".join(export_lib.EXPORTS)}')
    written = export_lib.export(folder, labels, formats)
    logging.info('export: wrote %s to %s', ', '.join(written), folder)
    return
  if len(rest) != 1:
    raise InputError('import takes one SRC (the tool\'s export file or folder), got '
                     f'{len(rest)}')
  if format_name is None:
    raise InputError(f'--format: required for import ({", ".join(importer.READERS)})')
  report = importer.import_annotations(
      format_name, os.path.abspath(os.path.expanduser(rest[0])), folder, labels,
      flags.FLAGS.tolerance, flags.FLAGS['allow-missing'].value,
      config.data.min_segment_pixels)
  logging.info('import: %d masks in %s; see %s', report['imported'], folder,
               os.path.join(folder, importer.REPORT_IMAGE))
  if config.data.annotation_dir and os.path.abspath(config.data.annotation_dir) != folder:
    logging.warning('config.data.annotation_dir is %s: train_interpreter reads that, not %s',
                    config.data.annotation_dir, folder)


def main(argv):
  try:
    run(argv)
  except InputError as e:
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  app.run(main, flags_parser=main_lib.parse_flags)
