"""The pipeline's stages for class-conditional BigGAN generators (BigDatasetGAN).

dgan_jax/stages.py dispatches here when the run's generator is a BigGAN:

  sample             workdir/annotate/: images/ and latents/ in BigDatasetGAN's layout
                     (config.biggan.annotate_per_class per class of config.biggan.class_idx),
                     empty annotations/<subset>/<wnid>/ folders for the masks, samples.png
                     (one row per class), info.json
  train_interpreter  workdir/head/: the segmentation head ensemble trained on the layout
                     under config.data.annotation_dir (else workdir/annotate): head.json +
                     params.npz (`head.load`), check.png, preview.png, history.npz, info.json
  generate           workdir/dataset/: config.biggan.samples_per_class samples per class,
                     labelled by the heads' majority vote, scored by their disagreement and
                     filtered as the StyleGAN path does (dgan_jax/generate.py), each record
                     with its class_id
"""

import dataclasses
import hashlib
import json
import os
import shutil
import time

import numpy as np
from absl import logging
from PIL import Image
from tqdm import tqdm

from dgan_jax import generate as generate_lib
from dgan_jax import generators
from dgan_jax import parallel
from dgan_jax import stages as pipeline
from dgan_jax.bigdatasetgan import factory as factory_lib
from dgan_jax.bigdatasetgan import head as head_lib
from dgan_jax.bigdatasetgan import layout as layout_lib
from dgan_jax.bigdatasetgan import train as train_lib
from dgan_jax.data import images as image_utils
from dgan_jax.data import synthetic
from dgan_jax.errors import InputError

HEAD_DIR = 'head'
CHECK_COUNT = 8


def subset_name(g) -> str:
  """The layout's subset folder: 'biggan512' for BigDatasetGAN's BigGAN-512."""
  return f'biggan{g.resolution}'


def _generator(config):
  g = generators.from_config(config.generator, config.seed)
  factory_lib.check_generator(g)
  if config.data.num_classes != 2:
    raise InputError(f'config.data.num_classes is {config.data.num_classes}; the BigDatasetGAN '
                     'head labels foreground/background: set it to 2')
  for field in ('crop_rows', 'feature_size'):
    if config.data[field]:
      raise InputError(f'config.data.{field} is not used with BigGAN generators (labels are '
                       'at the image resolution): leave it empty')
  return g


def sample(config, workdir: str) -> None:
  """Images to annotate, config.biggan.annotate_per_class per class, with their latents."""
  out = os.path.join(workdir, 'annotate')
  if os.path.exists(out):
    logging.info('sample: %s exists, skipping', out)
    return
  g = _generator(config)
  class_idx = factory_lib.check_class_idx(config.biggan.class_idx, g.num_classes)
  per_class = config.biggan.annotate_per_class
  if per_class < 1:
    raise InputError('config.biggan.annotate_per_class must be at least 1')
  subset = subset_name(g)
  class_ids, numbers = factory_lib.sample_plan(class_idx, per_class,
                                               np.arange(len(class_idx) * per_class))
  z_all = np.asarray(factory_lib.class_z(config.seed, factory_lib.ANNOTATE_STREAM, class_ids,
                                         numbers, g.dim_z, config.biggan.z_std))
  batch = config.sample.batch_size
  start = time.time()
  with pipeline.atomic_dir(out) as tmp:
    written = []
    for begin in tqdm(range(0, len(z_all), batch), desc='sample', unit='batch'):
      end = min(begin + batch, len(z_all))
      image, _ = g.synthesize(z_all[begin:end], class_ids[begin:end], return_features=False)
      images = image_utils.to_uint8(np.asarray(image))
      for k, picture in enumerate(images):
        layout_lib.write_sample(tmp, subset, int(class_ids[begin + k]), int(numbers[begin + k]),
                                g.num_classes, picture, z_all[begin + k])
      written.append(images)
    for class_id in class_idx:
      os.makedirs(os.path.join(tmp, 'annotations', subset,
                               layout_lib.class_folder(class_id, g.num_classes)))
    image_utils.save_png(os.path.join(tmp, 'samples.png'),
                         image_utils.grid(np.concatenate(written), per_class))
    with open(os.path.join(tmp, 'info.json'), 'w') as f:
      json.dump({'layout': 'bigdatasetgan', 'subset': subset, 'class_idx': list(class_idx),
                 'annotate_per_class': per_class, 'z_std': config.biggan.z_std,
                 'seed': config.seed, 'num_samples': len(z_all),
                 'masks': f'annotations/{subset}/<wnid>/<stem>.png, nonzero = foreground',
                 'seconds': round(time.time() - start, 2)}, f, indent=2)
  logging.info('sample: wrote %d images (%d classes) to %s; draw masks into '
               'annotations/%s/<wnid>/<stem>.png', len(z_all), len(class_idx), out, subset)


def write_synthetic_annotations(sample_root: str, out_root: str, subset: str) -> str:
  """A copy of the sample stage's layout with brightness masks (nonzero = the brighter
  half of all pixels, `data/synthetic.py`) for smoke runs without an annotator."""
  image_paths = sorted(
      p for p in (os.path.join(dirpath, name)
                  for dirpath, _, names in os.walk(os.path.join(sample_root, 'images', subset))
                  for name in names) if p.endswith('.png'))
  if not image_paths:
    raise InputError(f'{sample_root}/images/{subset}: no samples to label (run the sample '
                     'stage first)')
  pictures = []
  for path in image_paths:
    with Image.open(path) as image:
      pictures.append(np.asarray(image.convert('RGB')))
  masks = synthetic.brightness_masks(np.stack(pictures), 2)
  tmp = out_root + '.partial'
  shutil.rmtree(tmp, ignore_errors=True)
  for path, mask in zip(image_paths, masks):
    folder = os.path.basename(os.path.dirname(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    source = layout_lib.paths(sample_root, subset, folder, stem)
    target = layout_lib.paths(tmp, subset, folder, stem)
    for key in target:
      os.makedirs(os.path.dirname(target[key]), exist_ok=True)
    image_utils.save_png(target['annotation'], mask * 255)
    shutil.copyfile(source['image'], target['image'])
    shutil.copyfile(source['latent'], target['latent'])
  if os.path.exists(out_root):
    shutil.rmtree(out_root)
  os.rename(tmp, out_root)
  return out_root


def annotation_root(config, workdir: str, subset: str) -> str:
  """config.data.annotation_dir, else the sample stage's folder; with synthetic_masks and
  no masks there, a brightness-labelled copy (workdir/annotate_synthetic)."""
  root = config.data.annotation_dir or os.path.join(workdir, 'annotate')
  mask_dir = os.path.join(root, 'annotations', subset)
  has_masks = os.path.isdir(mask_dir) and any(
      name.endswith('.png') for _, _, names in os.walk(mask_dir) for name in names)
  if config.data.synthetic_masks and not has_masks:
    root = write_synthetic_annotations(root, os.path.join(workdir, 'annotate_synthetic'),
                                       subset)
    logging.info('train_interpreter: no masks; labelled the samples by brightness in %s',
                 root)
  return root


def _check_image(data: layout_lib.Annotations, regenerated: np.ndarray, masks: np.ndarray,
                 palette: np.ndarray) -> np.ndarray:
  """One row per annotated sample: stored image | regenerated image | mask."""
  tiles = []
  size = masks.shape[1]
  for i, (image, mask) in enumerate(zip(regenerated, masks)):
    stored = data.image(i)
    if stored is None:
      stored = np.full_like(image, 128)
    elif stored.shape[:2] != image.shape[:2]:
      stored = np.asarray(Image.fromarray(stored).resize(image.shape[1::-1], Image.BILINEAR))
    tiles += [stored, image, _fit(image_utils.colorize(mask, palette), image.shape[0], size)]
  return image_utils.grid(np.stack([image_utils.enlarge(t) for t in tiles]), columns=3)


def _fit(picture: np.ndarray, resolution: int, size: int) -> np.ndarray:
  """A label-grid picture [size, size, 3] at the image resolution (nearest)."""
  if size == resolution:
    return picture
  return np.asarray(Image.fromarray(picture).resize((resolution, resolution), Image.NEAREST))


def _heat(values: np.ndarray) -> np.ndarray:
  """[H, W] in [0, ln 2] (binary JS divergence) -> grey uint8 [H, W, 3], white = ln 2."""
  grey = np.clip(values / np.log(2.0), 0, 1) * 255
  return np.repeat(grey[..., None], 3, axis=-1).astype(np.uint8)


def _in_batches(fn, ids: np.ndarray, batch: int) -> list[np.ndarray]:
  """fn(ids chunk) -> tuple of arrays, run `batch` ids at a time and concatenated."""
  parts = [tuple(np.asarray(a) for a in fn(ids[start:start + batch]))
           for start in range(0, len(ids), batch)]
  return [np.concatenate(column) for column in zip(*parts)]


def _predict_rows(g, arch, variables, data, count: int, batch: int, palette: np.ndarray):
  """image | mask | prediction | disagreement rows for the first `count` samples."""
  predict = train_lib.make_predict(g, arch)
  ids = np.arange(min(count, len(data)))
  images, labels, pixel_js = _in_batches(
      lambda chunk: predict(g.params, variables, data.latents[chunk], data.class_ids[chunk]),
      ids, batch)
  masks = data.masks(ids, arch.output_size)
  size, resolution = arch.output_size, g.resolution
  tiles = []
  for image, mask, label, js in zip(images, masks, labels, pixel_js):
    tiles += [image, _fit(image_utils.colorize(mask, palette), resolution, size),
              _fit(image_utils.colorize(label, palette), resolution, size),
              _fit(_heat(js), resolution, size)]
  agreement = float(np.mean(labels == masks)) if len(ids) else float('nan')
  return image_utils.grid(np.stack([image_utils.enlarge(t) for t in tiles]), columns=4), agreement


def train_head(config, workdir: str) -> None:
  """BigDatasetGAN's train.py: the segmentation head ensemble on the annotated layout.

  Writes workdir/head/ (see the module docstring); check.png (stored | regenerated |
  mask) is written before training starts, in head.partial/ until the stage completes.
  An interrupted run resumes from the orbax checkpoints in head.partial/checkpoints.
  """
  out = os.path.join(workdir, HEAD_DIR)
  if os.path.exists(os.path.join(out, 'head.json')):
    logging.info('train_interpreter: %s exists, skipping', out)
    return
  g = _generator(config)
  arch = factory_lib.head_arch_for(g, config.biggan.head)
  subset = subset_name(g)
  root = annotation_root(config, workdir, subset)
  data = layout_lib.read(root, subset, g.dim_z, g.num_classes)
  options = train_lib.TrainOptions.from_config(config.biggan.train)
  palette = image_utils.palette_array(2, config.data.palette)

  partial = out + '.partial'
  os.makedirs(partial, exist_ok=True)
  check_ids = np.arange(min(CHECK_COUNT, len(data)))
  regenerated, = _in_batches(
      lambda chunk: g.synthesize(data.latents[chunk], data.class_ids[chunk],
                                 return_features=False)[:1], check_ids, options.batch_size)
  check_path = os.path.join(partial, 'check.png')
  image_utils.save_png(check_path, _check_image(
      data, image_utils.to_uint8(np.asarray(regenerated)),
      data.masks(check_ids, arch.output_size), palette))
  logging.info('train_interpreter: %d annotated samples of %d classes from %s; compare '
               'them with their regenerated images in %s', len(data),
               len(set(data.class_ids.tolist())), root, check_path)

  run = {'arch': arch.to_json(), 'options': dataclasses.asdict(options), 'seed': config.seed,
         'annotation_root': os.path.abspath(root), 'subset': subset, 'samples': data.names}
  run_path = os.path.join(partial, 'run.json')
  checkpoints = os.path.join(partial, 'checkpoints')
  if os.path.exists(run_path):
    with open(run_path) as f:
      if json.load(f) != json.loads(json.dumps(run)):
        logging.warning('train_interpreter: the config or annotations changed since %s was '
                        'written; starting over', run_path)
        shutil.rmtree(checkpoints, ignore_errors=True)
  with open(run_path, 'w') as f:
    json.dump(run, f, indent=2)

  start = time.time()
  state = train_lib.train(g, data, arch, options, config.seed, checkpoint_dir=checkpoints)
  variables = train_lib.variables_of(state)
  preview, agreement = _predict_rows(g, arch, variables, data, CHECK_COUNT,
                                     options.batch_size, palette)
  image_utils.save_png(os.path.join(partial, 'preview.png'), preview)
  history = state['history']
  info = {'num_annotated': len(data), 'classes': sorted(set(data.class_ids.tolist())),
          'annotation_root': run['annotation_root'], 'subset': subset,
          'steps': int(state['step']), 'num_members': arch.num_members,
          'last_loss': [float(x) for x in history['loss'][-1]] if len(history['step']) else [],
          'last_accuracy': ([float(x) for x in history['accuracy'][-1]]
                            if len(history['step']) else []),
          'preview_pixel_agreement': agreement,
          'images_per_second': round(float(state['images_per_second']), 3),
          'train_seconds': round(time.time() - start, 2)}
  np.savez(os.path.join(partial, 'history.npz'), **history)
  with open(os.path.join(partial, 'info.json'), 'w') as f:
    json.dump(info, f, indent=2)
  head_lib.save(partial, arch, variables,
                {'class_names': list(config.data.class_names), 'subset': subset,
                 'steps': info['steps'], 'generator': config.generator.to_dict()})
  shutil.rmtree(checkpoints, ignore_errors=True)
  if os.path.exists(out):
    shutil.rmtree(out)
  os.rename(partial, out)
  logging.info('train_interpreter: %d heads, %d steps, wrote %s', arch.num_members,
               info['steps'], out)


def _file_digest(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _write_json(path: str, obj) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.partial', 'w') as f:
    json.dump(obj, f, indent=2)
  os.replace(path + '.partial', path)


def _wait_for_plan(plan_path: str, plan: dict, timeout: float = 3600) -> None:
  """Processes other than 0 wait until process 0 has cleared stale shards and written
  the plan, so none writes a shard that is then deleted."""
  deadline = time.time() + timeout
  while True:
    try:
      with open(plan_path) as f:
        if json.load(f) == plan:
          return
    except (OSError, json.JSONDecodeError):
      pass
    if time.time() > deadline:
      raise TimeoutError(f'{plan_path}: process 0 has not written the current plan')
    time.sleep(1.0)


def generate(config, workdir: str) -> None:
  """BigDatasetGAN's sample_dataset.py into the StyleGAN path's TFDS dataset: samples
  0..K*n-1 (K classes, n = config.biggan.samples_per_class), sample i of class
  class_idx[i // n]. Skipped when workdir/dataset was generated by the same plan (class
  list, n, seed, z_std, head); a different plan starts the raw shards over."""
  g = _generator(config)
  class_idx = factory_lib.check_class_idx(config.biggan.class_idx, g.num_classes)
  head_dir = os.path.join(workdir, HEAD_DIR)
  arch, variables, _ = head_lib.load(head_dir)
  if arch.num_members == 1 and config.generate.drop_fraction > 0:
    raise InputError('config.generate.drop_fraction > 0 needs an ensemble to score '
                     'samples: set config.biggan.head.num_members > 1 (and retrain) or '
                     'config.generate.drop_fraction=0')
  plan = {'class_idx': list(class_idx), 'samples_per_class': config.biggan.samples_per_class,
          'seed': config.seed, 'z_std': config.biggan.z_std,
          'head': _file_digest(os.path.join(head_dir, 'params.npz'))}
  stage_dir = os.path.join(workdir, 'generate')
  plan_path = os.path.join(stage_dir, 'plan.json')
  record_path = os.path.join(workdir, 'dataset', 'generation.json')
  previous = None
  if os.path.exists(plan_path):
    with open(plan_path) as f:
      previous = json.load(f)
  if previous == plan and os.path.exists(record_path):
    logging.info('generate: %s is complete, skipping', record_path)
    return
  process_index, process_count = parallel.initialize(config.distributed)
  if previous != plan:
    if process_index == 0:
      if previous is not None:
        logging.warning('generate: the class plan or head changed since %s; starting over',
                        plan_path)
      shutil.rmtree(os.path.join(stage_dir, 'raw'), ignore_errors=True)
      _write_json(plan_path, plan)
    else:
      _wait_for_plan(plan_path, plan)
  step = factory_lib.ClassFactory(
      g, arch, variables, class_idx, config.biggan.samples_per_class, seed=config.seed,
      z_std=config.biggan.z_std, top_fraction=config.generate.top_fraction,
      batch_size=config.generate.batch_size)
  generate_lib.run(config, step, workdir, process_index, process_count,
                   num_samples=step.num_samples)
