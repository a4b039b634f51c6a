"""Segment a folder of your own images with what a run trained.

  python -m dgan_jax.segment --workdir=workdirs/toy --images=photos --out=photos_masks
  python -m dgan_jax.segment --workdir=W --images=DIR --out=OUT --run=few_shot --epoch=3
  python -m dgan_jax.segment --config=configs/test_vqgan.py --workdir=W --images=DIR \
      --out=OUT --labeler

Two segmenters, chosen by flag:
  (default)  the DeepLabV3 run workdir/downstream/<--run> at the epoch `evaluate.best_epoch`
             picks from workdir/eval.json (--epoch overrides), through the evaluate stage's
             own compiled prediction (`evaluate.make_predictor`) with its batch size
             (config.evaluate.batch_size): a test image segmented here gets exactly the
             labels evaluation scored for it.
  --labeler  the run's labeler itself (the MLP ensemble or the conv head) on the
             generator's features of each image, for generators that encode images
             (`Generator.encodes_images`: VQGAN; any family with `Sampling.from_images`),
             through the generate stage's compiled step (`factory.Factory.label_inputs`).

Any image size: each image is resized (PIL bicubic, aspect ratio not kept) to the
network's square input (config.downstream.resolution, or the generator's resolution),
exactly as evaluation resizes test images, and the label map is resized back to the
image's size with nearest neighbour (PIL's pixel-centre rule). Nothing is tiled.

Every entry of --images is tried in sorted name order; files that are not readable
images (and sub-folders) are listed in segment.json and index.html and skipped. OUT is
written under a temporary name and renamed when complete:

  OUT/<stem>.png            class ids ('L' PNG, uint16 above 255 classes), the image's size
  OUT/overlays/<stem>.png   the image with class colours blended over non-background pixels
  OUT/index.html            every image's overlay and confidence, the legend (legend/<id>.png),
                            what was skipped
  OUT/confidence.json, .csv per image: file, mask, width, height and its confidence:
                            DeepLab: mean_max_probability (mean over the network's pixels of
                            the largest softmax probability); labeler: mean_js (mean pixel
                            Jensen-Shannon divergence of the members) and score (the
                            generate stage's image score: mean of the top pixels' JS)
  OUT/segment.json          what made OUT: run, epoch, resolution, classes, palette, skipped

A stem that repeats (photo.jpg, photo.png) keeps its extension: photo.png.png.
"""

import csv
import dataclasses
import html
import io as stdio
import os
import time
from typing import Callable

import jax
import numpy as np
from absl import app
from absl import flags
from PIL import Image
from tqdm import tqdm

from dgan_jax import config as config_lib
from dgan_jax import factory as factory_lib
from dgan_jax import io
from dgan_jax import labelers
from dgan_jax import main as main_lib   # --config and --workdir, parsed as main parses them
from dgan_jax import parallel
from dgan_jax.data import images as image_utils
from dgan_jax.downstream import data as data_lib
from dgan_jax.downstream import deeplab
from dgan_jax.downstream import evaluate as evaluate_lib
from dgan_jax.downstream import metrics
from dgan_jax.downstream import run as run_lib
from dgan_jax.downstream import train as train_lib
from dgan_jax.errors import InputError

RECORD = 'segment.json'
OVERLAYS = 'overlays'
LEGEND = 'legend'
OVERLAY_ALPHA = 0.5


@dataclasses.dataclass
class Segmenter:
  """A compiled segmenter: predict(images uint8 [B, R, R, 3]) -> (labels int [B, h, w],
  {confidence field: [B] float}); B at most batch_size (padded inside)."""
  record: dict
  class_names: tuple[str, ...]
  palette: np.ndarray            # [C, 3] uint8
  resolution: int
  batch_size: int
  confidence_fields: tuple[str, ...]
  predict: Callable[[np.ndarray], tuple[np.ndarray, dict[str, np.ndarray]]]


def deeplab_segmenter(config, workdir: str, run: str, epoch: int | None = None,
                      batch_size: int = 0) -> Segmenter:
  """The DeepLab run's segmenter (see the module docstring)."""
  arch, run_dir, epoch, names, palette = run_lib.trained_run(config, workdir, run, epoch)
  batch_size = batch_size or config.evaluate.batch_size
  d = config.downstream
  mesh = parallel.make_mesh()
  predictor = evaluate_lib.make_predictor(deeplab.DeepLabV3(arch, train_lib.DTYPES[d.dtype]))
  variables = jax.device_put(train_lib.restore_epoch(run_dir, epoch, arch),
                             jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))

  def predict(images):
    blank = np.full(images.shape[:3], metrics.IGNORE_LABEL, np.uint8)
    prediction, _, _, confidence = evaluate_lib.predict_all(predictor, variables, images,
                                                            blank, batch_size, mesh)
    return prediction, {'mean_max_probability': confidence}

  record = {'kind': 'deeplab', 'run': run, 'run_dir': os.path.abspath(run_dir),
            'epoch': epoch, 'arch': arch.to_json(), 'dtype': d.dtype}
  return Segmenter(record, names, palette, d.resolution, batch_size,
                   ('mean_max_probability',), predict)


def labeler_segmenter(config, workdir: str, batch_size: int = 0,
                      class_id: int | None = None) -> Segmenter:
  """The run's labeler on the generator's features of each image (see the module
  docstring)."""
  factory = factory_lib.image_labeler(config, workdir, batch_size)
  g, sampling, layout = factory.generator, factory.sampling, factory.layout
  folder = labelers.workdir_folder(config, workdir)

  def predict(images):
    class_ids = None if class_id is None else np.full(len(images), class_id, np.int32)
    out = factory.label_inputs(sampling.from_images(images, class_ids))
    return out['label'], {'mean_js': out['pixel_uncertainty'].mean(axis=(1, 2)),
                          'score': out['uncertainty']}

  names = tuple(config.data.class_names)
  record = {'kind': 'labeler', 'labeler': config.labeler, 'labeler_dir': os.path.abspath(folder),
            'generator': g.family, 'grid': list(layout.output_shape), 'class_id': class_id}
  return Segmenter(record, names, image_utils.palette_array(len(names), config.data.palette),
                   g.resolution, factory.batch_size, ('mean_js', 'score'), predict)


def _read(path: str) -> tuple[np.ndarray | None, str]:
  """-> (uint8 [h, w, 3], '') or (None, why it is not a readable image)."""
  if os.path.isdir(path):
    return None, 'a folder (not searched)'
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert('RGB')), ''
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    reason = str(e).replace(repr(path), '').replace(path, '').strip(" :'") or type(e).__name__
    return None, f'not a readable image ({reason})'


def check_out(out: str, images_dir: str) -> None:
  """OUT may be new or an earlier output of this command (replaced whole), nothing else."""
  if not out:
    raise InputError('--out: give the folder to write the masks to')
  if os.path.realpath(out) == os.path.realpath(images_dir):
    raise InputError(f'--out: {out} is the --images folder; choose another')
  if os.path.lexists(out) and not os.path.isfile(os.path.join(out, RECORD)):
    raise InputError(f'--out: {out} exists and is not an earlier segment output (no '
                     f'{RECORD}); choose a new folder')


def _mask_png(label: np.ndarray, num_classes: int) -> Image.Image:
  return Image.fromarray(label.astype(np.uint8 if num_classes <= 256 else np.uint16))


def overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray) -> np.ndarray:
  """image uint8 [h, w, 3], label [h, w] -> the image with the class colours blended in
  (OVERLAY_ALPHA) where the label is not background (0)."""
  colours = palette[np.minimum(label, len(palette) - 1)].astype(np.float32)
  blended = (1 - OVERLAY_ALPHA) * image + OVERLAY_ALPHA * colours
  return np.where(label[..., None] > 0, np.round(blended), image).astype(np.uint8)


def segment(segmenter: Segmenter, images_dir: str, out: str, progress: bool = True) -> dict:
  """Segments every readable image of images_dir into `out` (module docstring) -> the
  segment.json record. InputError, with nothing written, when the folder is missing,
  empty or holds no readable image."""
  if not images_dir or not os.path.isdir(images_dir):
    raise InputError(f'--images: {images_dir or "(empty)"} is not a folder')
  check_out(out, images_dir)
  names = sorted(os.listdir(images_dir))
  if not names:
    raise InputError(f'--images: {images_dir} is empty')
  start = time.perf_counter()
  entries, skipped, used = [], [], set()
  r = segmenter.resolution
  with io.atomic_dir(out) as tmp:
    os.makedirs(os.path.join(tmp, OVERLAYS))
    pending = []

    def flush():
      if not pending:
        return
      batch = np.stack([image_utils.resize_image(image, r, r) for _, _, image in pending])
      labels, confidence = segmenter.predict(batch)
      for k, (name, stem, image) in enumerate(pending):
        h, w = image.shape[:2]
        label = data_lib.resize_label(np.asarray(labels[k]), h, w)
        with io.atomic_file(os.path.join(tmp, f'{stem}.png'), 'wb') as f:
          _mask_png(label, len(segmenter.class_names)).save(f, format='PNG')
        image_utils.save_png(os.path.join(tmp, OVERLAYS, f'{stem}.png'),
                             overlay(image, label, segmenter.palette))
        entries.append({'file': name, 'mask': f'{stem}.png', 'width': w, 'height': h,
                        **{field: float(confidence[field][k])
                           for field in segmenter.confidence_fields}})
      pending.clear()

    for name in tqdm(names, desc='segment', unit='image', disable=not progress):
      image, reason = _read(os.path.join(images_dir, name))
      if image is None:
        skipped.append({'file': name, 'reason': reason})
        continue
      stem = os.path.splitext(name)[0]
      stem = name if stem in used else stem
      used.add(stem)
      pending.append((name, stem, image))
      if len(pending) == segmenter.batch_size:
        flush()
    flush()
    if not entries:
      raise InputError(f'--images: no readable image in {images_dir} ({len(skipped)} '
                       f'entries skipped, e.g. {skipped[0]["file"]}: {skipped[0]["reason"]})')
    seconds = time.perf_counter() - start
    record = {
        'segmenter': segmenter.record, 'images_dir': os.path.abspath(images_dir),
        'resize': (f'images resized (PIL bicubic, aspect ratio not kept) to {r}x{r}; labels '
                   'resized back to each image with nearest neighbour'),
        'classes': list(segmenter.class_names), 'palette': segmenter.palette.tolist(),
        'confidence_fields': list(segmenter.confidence_fields),
        'num_images': len(entries), 'skipped': skipped, 'seconds': round(seconds, 3),
        'images_per_second': round(len(entries) / seconds, 3)}
    io.write_json(os.path.join(tmp, 'confidence.json'), entries)
    io.write_text(os.path.join(tmp, 'confidence.csv'), _csv(entries, segmenter))
    _legend(tmp, segmenter.palette)
    io.write_text(os.path.join(tmp, 'index.html'), _index(record, entries))
    io.write_json(os.path.join(tmp, RECORD), record)
  return record


def _csv(entries: list[dict], segmenter: Segmenter) -> str:
  text = stdio.StringIO()
  writer = csv.DictWriter(text, ['file', 'mask', 'width', 'height',
                                 *segmenter.confidence_fields], lineterminator='\n')
  writer.writeheader()
  writer.writerows(entries)
  return text.getvalue()


def _legend(folder: str, palette: np.ndarray) -> None:
  os.makedirs(os.path.join(folder, LEGEND))
  for c, colour in enumerate(palette):
    image_utils.save_png(os.path.join(folder, LEGEND, f'{c}.png'),
                         np.broadcast_to(colour, (12, 12, 3)))


def _index(record: dict, entries: list[dict]) -> str:
  e = html.escape
  fields = record['confidence_fields']
  source = record['segmenter']
  what = (f'DeepLab run {source["run"]}, epoch {source["epoch"]}' if source['kind'] == 'deeplab'
          else f'labeler {source["labeler"]} on {source["generator"]} features')
  parts = ['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
           '<title>segment</title><style>body{font-family:sans-serif;margin:2em}'
           'table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em}'
           'img.o{max-width:320px;image-rendering:pixelated}</style></head><body>',
           f'<h1>{e(str(len(entries)))} images from {e(record["images_dir"])}</h1>',
           f'<p>{e(what)}. {e(record["resize"])}.</p>', '<h2>Classes</h2><table>']
  parts += [f'<tr><td>{c}</td><td><img src="{LEGEND}/{c}.png" alt=""></td>'
            f'<td>{e(name)}</td></tr>' for c, name in enumerate(record['classes'])]
  parts.append('</table><h2>Images</h2><table><tr><th>file</th><th>overlay</th>'
               '<th>size</th>' + ''.join(f'<th>{e(f)}</th>' for f in fields) + '</tr>')
  for entry in entries:
    parts.append(f'<tr><td><a href="{e(entry["mask"])}">{e(entry["file"])}</a></td>'
                 f'<td><img class="o" src="{OVERLAYS}/{e(entry["mask"])}" alt=""></td>'
                 f'<td>{entry["width"]}x{entry["height"]}</td>'
                 + ''.join(f'<td>{entry[f]:.4f}</td>' for f in fields) + '</tr>')
  parts.append('</table>')
  if record['skipped']:
    parts.append('<h2>Skipped</h2><ul>' + ''.join(
        f'<li>{e(s["file"])}: {e(s["reason"])}</li>' for s in record['skipped']) + '</ul>')
  parts.append('</body></html>')
  return '\n'.join(parts) + '\n'


def define_flags() -> None:
  """The command's flags (besides main's --config and --workdir); defined only when it runs,
  so that importing the module defines none."""
  flags.DEFINE_string('images', None, 'Folder of images to segment (any size, not searched '
                      'recursively).')
  flags.DEFINE_string('out', None, 'Output folder (must not exist, or be an earlier output).')
  flags.DEFINE_string('run', 'synthetic', 'The downstream run (workdir/downstream/<run>).')
  flags.DEFINE_bool('labeler', False, "Segment with the labeler through the generator's "
                    'encoder instead of a DeepLab run.')
  flags.DEFINE_integer('epoch', None, "The run's epoch (default: evaluate's pick, "
                       'eval.json best_epoch).')
  flags.DEFINE_integer('batch_size', 0, 'Images per compiled call (default: '
                       'config.evaluate.batch_size, or config.generate.batch_size with --labeler).')
  flags.DEFINE_integer('class_id', None, 'Class-conditional labelers: the class every image '
                       'is labelled as (default: the sampling\'s, 0 for VQGAN).')


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f'error: unexpected arguments {argv[1:]}')
  f = flags.FLAGS
  config = f.config
  workdir = os.path.abspath(os.path.expanduser(f.workdir))
  try:
    config_lib.validate(config)
    main_lib.resolve_paths(config)
    if not os.path.isdir(workdir):
      raise InputError(f'--workdir: {workdir} is not a folder')
    if not f.images:
      raise InputError('--images: give the folder of images to segment')
    check_out(f.out, f.images)
    if f.labeler:
      segmenter = labeler_segmenter(config, workdir, f.batch_size, f.class_id)
    else:
      segmenter = deeplab_segmenter(config, workdir, f.run, f.epoch, f.batch_size)
    record = segment(segmenter, f.images, f.out)
  except InputError as e:
    raise SystemExit(f'error: {e}') from None
  skipped = record['skipped']
  print(f'segment: {record["num_images"]} images -> {f.out} '
        f'({record["images_per_second"]:.1f} images/s)'
        + (f'; skipped {len(skipped)}: ' + ', '.join(s['file'] for s in skipped[:5])
           + (' ...' if len(skipped) > 5 else '') if skipped else ''))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=main_lib.parse_flags)
