"""The `train_downstream` and `evaluate` stages: config and workdir -> the modules.

The runs share one network, one recipe and one evaluation (config.downstream.runs):
  synthetic             trained on the `generate` stage's dataset (workdir/dataset, split
                        'train': the samples kept after uncertainty filtering)
  synthetic_unfiltered  the same samples without filtering (splits 'train' + 'dropped'),
                        with the synthetic run's steps per epoch
  few_shot              trained on the annotated images alone (DatasetGAN's Table 1
                        compares it with synthetic), same augmentation, epochs and steps
                        per epoch
  real                  trained from scratch on a real labelled folder
                        (config.downstream.finetune_dir, the formats of the test folder),
                        with the few-shot run's schedule
  finetune              the kind 'finetune' (BigDatasetGAN's transfer experiment): the
                        network initialised from another run's last epoch
                        (config.downstream.finetune_from, 'synthetic' by default: its
                        backbone, and with finetune_head its classifier too), then
                        trained on config.downstream.finetune_dir with the fine-tuning
                        schedule (config.downstream.finetune_*; 0: the few-shot run's)
  finetune_few_shot     the same, fine-tuned on the annotated images (the few-shot data)
  labeler               no DeepLab: the train_interpreter stage's labeler itself on each
                        test image's features, for generators that encode images (DDPM,
                        VQGAN): ddpm-segmentation's protocol (its "DDPM" rows; DatasetDDPM
                        is 'synthetic'). Test images are read at the generator's resolution,
                        label maps resized (nearest) to the test labels' grid; one "epoch",
                        so the folds only choose the images each fold is scored on
  (the domain's own)    e.g. the toy domain's 'supervised' ceiling (dgan_jax/domains.py)

Labels (config.downstream.label_mode): 'labels' as generated; with
config.data.eval_class_map (ADE-Car-12) the training labels are mapped to the test
classes before training, so both networks predict the test classes directly. 'binary':
foreground vs background (BigDatasetGAN's benchmark). 'class': a class-conditional
generator's (K + 1)-way segmentation, each foreground pixel labelled with its sample's
class (k + 1 for the k-th class of the run, background 0).

  workdir/downstream/{run}/   see dgan_jax/downstream/train.py
  workdir/eval.json           the evaluation record (see `evaluate`)
  workdir/eval/               test_set.png, {run}_fold{k}.png, table.txt
"""

import os
import time

import numpy as np
from absl import logging
from tqdm import tqdm

from dgan_jax import domains
from dgan_jax import factory as factory_lib
from dgan_jax import generators
from dgan_jax import io
from dgan_jax import labelers
from dgan_jax import parallel
from dgan_jax.data import annotated
from dgan_jax.data import images as image_utils
from dgan_jax.data import synthetic
from dgan_jax.downstream import data as data_lib
from dgan_jax.downstream import deeplab
from dgan_jax.downstream import evaluate as evaluate_lib
from dgan_jax.downstream import metrics
from dgan_jax.downstream import train as train_lib
from dgan_jax.errors import InputError

LABELER_RUN = 'labeler'
RUNS = ('synthetic', 'synthetic_unfiltered', 'few_shot', 'real', 'finetune',
        'finetune_few_shot', LABELER_RUN)   # and the domain's extra runs
# Runs of the kind 'finetune' -> the run whose data (and from-scratch schedule) they take.
FINETUNE_RUNS = {'finetune': 'real', 'finetune_few_shot': 'few_shot'}
LABEL_MODES = ('labels', 'binary', 'class')


def run_classes(workdir: str) -> list[tuple[int, str]]:
  """(class id, name) of a class-conditional generator's samples, as the generate stage
  recorded them in workdir/dataset/generation.json."""
  path = os.path.join(workdir, io.DATASET, 'generation.json')
  record = io.read_json(path)
  if not record or not record.get('classes'):
    raise InputError(f"config.downstream.label_mode 'class' takes the run's classes from "
                     f'{path}, which a class-conditional generator\'s generate stage writes; '
                     'there are none (run generate first, or use label_mode binary)')
  return [(int(c['id']), c['name']) for c in record['classes']]


def class_setup(config, workdir: str = '') -> tuple[tuple[str, ...], np.ndarray | None,
                                                      np.ndarray]:
  """-> (names of the classes the networks predict, lookup table training id -> that
  class or None, palette [C, 3]). config.downstream.label_mode: 'labels' (as generated,
  or mapped by config.data.eval_class_map), 'binary' (foreground / background), 'class'
  (background and one class per class of a conditional generator's run)."""
  data, mode = config.data, config.downstream.label_mode
  if mode not in LABEL_MODES:
    raise InputError(f'config.downstream.label_mode must be one of {list(LABEL_MODES)}, '
                     f'got {mode!r}')
  if mode == 'binary':
    palette = data.palette if data.num_classes == 2 else ()
    return ('background', 'foreground'), data_lib.binary_lookup(), image_utils.palette_array(
        2, palette)
  if mode == 'class':
    names = ('background',) + tuple(name for _, name in run_classes(workdir))
    return names, None, image_utils.palette_array(len(names))
  if data.eval_class_map:
    if len(data.eval_class_map) != data.num_classes:
      raise InputError(f'config.data.eval_class_map has {len(data.eval_class_map)} entries but '
                       f'config.data.num_classes is {data.num_classes}')
    names = tuple(data.eval_class_names)
    if not names or max(data.eval_class_map) >= len(names) or min(data.eval_class_map) < 0:
      raise InputError('config.data.eval_class_map must map every training class to an index '
                       'of config.data.eval_class_names')
    return (names, data_lib.class_lookup(data.eval_class_map, data.num_classes),
            image_utils.palette_array(len(names)))
  names = tuple(data.class_names)
  return names, None, image_utils.palette_array(len(names), data.palette)


def label_map(config, workdir: str) -> data_lib.LabelMap:
  """How the stored labels become the classes of `class_setup`."""
  if config.downstream.label_mode == 'class':
    return data_lib.LabelMap(data_lib.binary_lookup(), {
        c: k + 1 for k, (c, _) in enumerate(run_classes(workdir))})
  _, lookup, _ = class_setup(config, workdir)
  return data_lib.LabelMap(lookup)


def arch_from_config(config, num_classes: int) -> deeplab.DeepLabArch:
  d = config.downstream
  try:
    return deeplab.DeepLabArch(num_classes=num_classes, stage_sizes=tuple(d.stage_sizes),
                               width=d.width, output_stride=d.output_stride,
                               aspp_rates=tuple(d.aspp_rates), aspp_channels=d.aspp_channels)
  except ValueError as e:
    raise InputError(f'config.downstream: {e}') from None


def selected_runs(config) -> list[str]:
  known = RUNS + tuple(domains.from_config(config).extra_runs())
  runs = [r.strip() for r in config.downstream.runs if r.strip()]
  unknown = [r for r in runs if r not in known]
  if unknown or not runs:
    raise InputError(f'config.downstream.runs: {unknown or "(empty)"}; known: {list(known)}')
  return runs


def stand_in_test_dir(config, workdir: str, num_classes: int) -> str:
  """Smoke runs without real test images (config.evaluate.synthetic_test_images > 0 and
  no test_dir): that many fresh generator samples (the sampling's 'test' purpose, never
  in the synthetic dataset) labelled by brightness (dgan_jax/data/synthetic.py) as the
  train_interpreter stage's stand-in annotations are, written once to
  workdir/test_synthetic/ in the test folder format ({i:05d}.png + .npy; BigDatasetGAN's
  layout for class-conditional generators)."""
  out = os.path.join(workdir, io.TEST_SYNTHETIC)
  if os.path.isdir(out):
    return out
  g = generators.from_config(config.generator, config.seed)
  sampling = g.sampling(config)
  images, inputs = g.draw_images(sampling, 'test', sampling.count('test', config),
                                 progress=False)
  images = image_utils.crop_rows(images, config.data)
  with io.atomic_dir(out) as tmp:
    if annotated.sample_format(g) == annotated.LAYOUT:
      synthetic.write_layout_test_set(tmp, g, images, inputs)
    else:
      masks = synthetic.brightness_masks(images, num_classes)
      for i, (image, mask) in enumerate(zip(images, masks)):
        image_utils.save_png(os.path.join(tmp, f'{i:05d}.png'), image)
        np.save(os.path.join(tmp, f'{i:05d}.npy'), mask)
  logging.info('evaluate: no config.evaluate.test_dir; %d brightness-labelled samples in %s '
               'stand in for real test images', len(images), out)
  return out


def train_options(config, steps_per_epoch: int = 0, run: str = '') -> train_lib.TrainOptions:
  """The run's training options: config.downstream's, with the fine-tuning schedule for
  the runs of the kind 'finetune' (whose initial weights replace pretrained_backbone)."""
  d = config.downstream
  if d.dtype not in train_lib.DTYPES:
    raise InputError(f'config.downstream.dtype must be one of {list(train_lib.DTYPES)}, '
                     f'got {d.dtype!r}')
  low, high = d.scale_range
  if not 0 < low <= high:
    raise InputError(f'config.downstream.scale_range must be (low, high) with 0 < low <= '
                     f'high, got {tuple(d.scale_range)}')
  finetune = run in FINETUNE_RUNS
  return train_lib.TrainOptions(
      batch_size=d.batch_size, epochs=run_epochs(config, run),
      learning_rate=(d.finetune_learning_rate or d.learning_rate) if finetune
      else d.learning_rate,
      resolution=d.resolution, flip=d.flip, scale_range=(float(low), float(high)),
      steps_per_epoch=steps_per_epoch,
      pretrained_backbone='' if finetune else d.pretrained_backbone,
      dtype=d.dtype, log_every=d.log_every, workers=d.workers)


def run_epochs(config, run: str) -> int:
  d = config.downstream
  return (d.finetune_epochs or d.epochs) if run in FINETUNE_RUNS else d.epochs


def finetune_dir(config, workdir: str) -> str:
  """The real labelled folder of the 'real' and 'finetune' runs:
  config.downstream.finetune_dir, else the domain's (the toy domain renders one)."""
  folder = (config.downstream.finetune_dir
            or domains.from_config(config).finetune_dir(config, workdir))
  if not folder:
    raise InputError("config.downstream.finetune_dir: empty; the 'real' and 'finetune' runs "
                     'train on a labelled folder of real images (images and .npy masks with '
                     "matching sorted names, or BigDatasetGAN's layout, as "
                     'config.evaluate.test_dir)')
  return folder


def finetune_init(config, workdir: str, run: str) -> train_lib.InitFrom:
  """The checkpoint a 'finetune' run starts from: the last epoch of the run
  config.downstream.finetune_from (a run of this workdir, trained first when needed, or
  the folder of another workdir's run). The last epoch, not evaluate's pick, so that no
  test image chooses the initial weights."""
  source = config.downstream.finetune_from.strip()
  if not source or source in FINETUNE_RUNS:
    raise InputError(f'config.downstream.finetune_from: {source or "(empty)"!r}; name the run '
                     f'that initialises the {run} run (e.g. synthetic), not a fine-tuning run, '
                     "or the folder of another workdir's run (W/downstream/synthetic)")
  if os.sep in source or source.startswith('.'):
    run_dir = os.path.abspath(os.path.expanduser(source))
    if not train_lib.is_complete(run_dir):
      raise InputError(f'config.downstream.finetune_from: {run_dir} holds no finished '
                       'downstream run (no train.json)')
  else:
    known = RUNS + tuple(domains.from_config(config).extra_runs())
    if source not in known:
      raise InputError(f'config.downstream.finetune_from: unknown run {source!r}; known: '
                       f'{[r for r in known if r not in FINETUNE_RUNS]}, or a run folder')
    run_dir = train_run(config, workdir, source)
  epochs = train_lib.epoch_checkpoints(run_dir)
  if not epochs:
    raise InputError(f'{run_dir}/epochs: no checkpoints to initialise the {run} run from')
  return train_lib.InitFrom(run_dir, epochs[-1], bool(config.downstream.finetune_head))


def _synthetic_source(workdir, mapping, split='train'):
  return data_lib.SyntheticSource(os.path.join(workdir, io.DATASET), mapping, split)


def _synthetic_steps(config, workdir: str, run: str) -> int:
  """The synthetic run's steps per epoch: config.downstream.steps_per_epoch, else as
  many as one pass over the kept samples takes."""
  d = config.downstream
  if d.steps_per_epoch:
    return d.steps_per_epoch
  if not os.path.isdir(os.path.join(workdir, io.DATASET)):
    raise InputError(f'the {run} run takes the synthetic run\'s steps per epoch (config.'
                     'downstream.steps_per_epoch is 0) but there is no synthetic dataset in '
                     f'{workdir}/dataset: set config.downstream.steps_per_epoch')
  return len(_synthetic_source(workdir, None)) // d.batch_size


def run_source(config, workdir: str, run: str, mapping):
  """-> (examples source, steps per epoch, description) of one run; labels through
  `mapping` (`label_map`)."""
  d = config.downstream
  if run in ('synthetic', 'synthetic_unfiltered'):
    split = 'train' if run == 'synthetic' else 'train+dropped'
    source = _synthetic_source(workdir, mapping, split)
    kind = '' if run == 'synthetic' else ', unfiltered'
    return source, _synthetic_steps(config, workdir, run), (
        f'synthetic dataset{kind}: {len(source)} images')
  if run in FINETUNE_RUNS:
    source, steps, description = run_source(config, workdir, FINETUNE_RUNS[run], mapping)
    return source, d.finetune_steps_per_epoch or steps, description
  if run == 'real':
    folder = finetune_dir(config, workdir)
    source = data_lib.read_labelled(folder, len(class_setup(config, workdir)[0]), mapping)
    steps = d.few_shot_steps_per_epoch or _synthetic_steps(config, workdir, run)
    return source, steps, f'{len(source)} labelled real images ({folder})'
  extra_runs = domains.from_config(config).extra_runs()
  if run in extra_runs:
    source, steps, description = extra_runs[run](config, workdir)
    source = data_lib.apply_lookup(source, mapping)
    return source, steps or d.steps_per_epoch or len(source) // d.batch_size, description
  folder = annotated.used_folder(config, workdir)
  source = data_lib.read_annotated(folder, config.data.num_annotated, config.data.num_classes,
                                   config.data.min_segment_pixels, mapping)
  steps = d.few_shot_steps_per_epoch or _synthetic_steps(config, workdir, run)
  return source, steps, f'{len(source)} annotated images ({folder})'


def train_run(config, workdir: str, run: str) -> str:
  """Trains one run unless workdir/downstream/{run} is complete -> that folder."""
  names, _, palette = class_setup(config, workdir)
  if len(names) > 255:
    raise InputError(f'{len(names)} classes: the downstream pipeline keeps labels in uint8 '
                     '(at most 255 classes)')
  arch = arch_from_config(config, len(names))
  run_dir = os.path.join(workdir, io.DOWNSTREAM, run)
  init = finetune_init(config, workdir, run) if run in FINETUNE_RUNS else None
  if train_lib.is_complete(run_dir):
    trained = io.read_json(os.path.join(run_dir, 'train.json'))
    if (trained['epochs'] == run_epochs(config, run)
        and trained.get('init') == (init and init.record())):
      logging.info('train_downstream: %s is complete, skipping', run_dir)
      return run_dir
  source, steps, description = run_source(config, workdir, run, label_map(config, workdir))
  if init is not None:
    description = (f'{description}, initialised from {_run_name(init.run_dir, workdir)} epoch '
                   f'{init.epoch} ({"backbone and head" if init.head else "backbone"})')
  start = time.time()
  record = train_lib.train(arch, source, train_options(config, steps, run), config.seed,
                           run_dir, palette=palette, description=description, init=init)
  logging.info('train_downstream: %s done in %.1f s (%s)', run, time.time() - start,
               record and record['description'])
  return run_dir


def _run_name(run_dir: str, workdir: str) -> str:
  """A run of this workdir by its name (descriptions stay short), another's by its folder."""
  inside = os.path.relpath(run_dir, os.path.join(workdir, io.DOWNSTREAM))
  return run_dir if inside.startswith('..') or os.sep in inside else inside


def evaluated_epoch(workdir: str, run: str) -> int:
  """The epoch of `run` that evaluate picks (`evaluate.best_epoch` of its eval.json entry)."""
  path = os.path.join(workdir, io.EVAL_JSON)
  record = io.read_json(path)
  if record is None or run not in record.get('runs', {}):
    raise InputError(f'{path}: no evaluation of the run {run!r} (run the evaluate stage, or '
                     'choose the epoch with --epoch)')
  entry = record['runs'][run]
  return int(entry['best_epoch']) if 'best_epoch' in entry else evaluate_lib.best_epoch(entry)


def trained_run(config, workdir: str, run: str, epoch: int | None = None
                ) -> tuple[deeplab.DeepLabArch, str, int, tuple[str, ...], np.ndarray]:
  """A finished run of the workdir for segment and export -> (arch, run folder, epoch
  (`epoch`, else `evaluated_epoch`), class names, palette), checked against the config (the
  evaluate stage's arch and classes)."""
  names, _, palette = class_setup(config, workdir)
  arch = arch_from_config(config, len(names))
  run_dir = os.path.join(workdir, io.DOWNSTREAM, run)
  if not train_lib.is_complete(run_dir):
    folder = os.path.join(workdir, io.DOWNSTREAM)
    there = sorted(r for r in os.listdir(folder) if train_lib.is_complete(
        os.path.join(folder, r))) if os.path.isdir(folder) else []
    raise InputError(f'--run: {run_dir} holds no finished downstream run (finished runs: '
                     f'{there or "none"}; run the train_downstream stage)')
  trained = io.read_json(os.path.join(run_dir, 'train.json'))
  if deeplab.DeepLabArch.from_json(trained['arch']) != arch:
    raise InputError(f'{run_dir}/train.json: the run was trained with another network than '
                     f'--config describes ({trained["arch"]}); pass the config it was '
                     'trained with')
  epochs = train_lib.epoch_checkpoints(run_dir)
  epoch = evaluated_epoch(workdir, run) if epoch is None else epoch
  if epoch not in epochs:
    raise InputError(f'--epoch: {run_dir} has no epoch {epoch} (it has {epochs})')
  return arch, run_dir, epoch, names, palette


def train_downstream(config, workdir: str) -> None:
  """Trains every run of config.downstream.runs that has no train.json yet."""
  runs = selected_runs(config)
  parallel.initialize(config.distributed)
  for run in runs:
    if run != LABELER_RUN:   # trained by the train_interpreter stage
      train_run(config, workdir, run)


def _trained_digests(config, workdir: str, runs) -> dict[str, str | None]:
  """run -> SHA-256 of its train.json (the labeler's: its meta file; None when
  unfinished): what eval.json was made from."""
  digests = {}
  for run in runs:
    path = (os.path.join(labelers.workdir_folder(config, workdir),
                         labelers.from_config(config).meta_file) if run == LABELER_RUN
            else os.path.join(workdir, io.DOWNSTREAM, run, 'train.json'))
    digests[run] = io.file_digest(path) if os.path.isfile(path) else None
  return digests


def labeler_scores(factory: factory_lib.Factory, test_dir: str, test, num_classes: int,
                   mapping, progress: bool = True):
  """The run 'labeler': the labeler on the test images read at the generator's
  resolution -> (epochs [0], intersections [1, N, C], unions [1, N, C], predictions
  uint8 [N, R, R] on the test labels' grid R x R)."""
  own = data_lib.read_test_folder(test_dir, num_classes, factory.generator.resolution,
                                  mapping)
  batch, grid = factory.batch_size or len(own.names), test.labels.shape[1:]
  predictions = []
  for start in tqdm(range(0, len(own.names), batch), desc='evaluate labeler', unit='batch',
                    disable=not progress):
    out = factory.label_inputs(factory.sampling.from_images(own.images[start:start + batch],
                                                            None))
    predictions += [data_lib.resize_label(p.astype(np.uint8), *grid) for p in out['label']]
  predictions = np.stack(predictions)
  intersection, union = metrics.iou_counts(predictions, test.labels, num_classes)
  return [0], np.asarray(intersection)[None], np.asarray(union)[None], predictions


def evaluate(config, workdir: str) -> None:
  """Scores every run on config.evaluate.test_dir; writes workdir/eval.json and eval/.

  eval.json: {'protocol': how the numbers are made, 'classes', 'test_images' (sorted
  names), 'runs': {run: {'trained_on', 'num_train_images', 'miou_mean', 'miou_std',
  'miou_absent_as_zero_mean', 'folds': [...], 'class_iou': {name: {'mean', 'std',
  'folds'} or null}, 'all_images_miou_per_epoch', 'best_epoch' (the epoch segment and
  export use, `evaluate.best_epoch`), 'initialised_from' (fine-tuning runs)}}, 'trained'
  (run -> digest of its train.json), 'seconds'}. An eval.json made from other runs (or
  other training of them: a run added, retrained or fine-tuned) is made again.
  """
  out_json = os.path.join(workdir, io.EVAL_JSON)
  runs = selected_runs(config)
  trained_digests = _trained_digests(config, workdir, runs)
  previous = io.read_json(out_json)
  if previous is not None:
    if previous.get('trained') == trained_digests:
      logging.info('evaluate: %s exists for these runs, skipping', out_json)
      return
    logging.info('evaluate: the runs (or their training) differ from %s; evaluating again',
                 out_json)
  process_index, _ = parallel.initialize(config.distributed)
  if process_index != 0:
    return
  names, _, palette = class_setup(config, workdir)
  arch = arch_from_config(config, len(names))
  ev, d = config.evaluate, config.downstream
  start = time.time()
  test_dir = ev.test_dir or domains.from_config(config).test_dir(config, workdir)
  stand_in = not test_dir and ev.synthetic_test_images > 0
  if stand_in:
    test_dir = stand_in_test_dir(config, workdir, len(names))
  test = data_lib.read_test_folder(test_dir, len(names), d.resolution,
                                   label_map(config, workdir))
  metrics.fold_splits(len(test.names), ev.num_folds)  # enough images?
  labeler = (factory_lib.image_labeler(config, workdir, what="config.downstream.runs 'labeler'")
             if LABELER_RUN in runs else None)
  for run in set(runs) - {LABELER_RUN}:
    if not train_lib.is_complete(os.path.join(workdir, io.DOWNSTREAM, run)):
      raise InputError(f'{os.path.join(workdir, io.DOWNSTREAM, run)}: training is not '
                       'complete (run the train_downstream stage first)')
  results = {}
  with io.atomic_dir(os.path.join(workdir, io.EVAL)) as tmp:
    image_utils.save_png(os.path.join(tmp, 'test_set.png'), train_lib.preview_batch(
        test.images[:ev.preview_count], test.labels[:ev.preview_count], palette))
    for run in runs:
      run_dir = os.path.join(workdir, io.DOWNSTREAM, run)
      if run == LABELER_RUN:
        epochs, intersections, unions, predictions = labeler_scores(
            labeler, test_dir, test, len(names), label_map(config, workdir))
        info = io.read_json(os.path.join(labelers.workdir_folder(config, workdir),
                                         'info.json')) or {}
        trained = {'description': f'the {config.labeler} labeler on each test image\'s '
                                  f'{labeler.generator.family} features (no DeepLab)',
                   'num_examples': info.get('num_annotated', config.data.num_annotated),
                   'epochs': 0, 'steps_per_epoch': 0}
      else:
        trained = io.read_json(os.path.join(run_dir, 'train.json'))
        epochs, intersections, unions = evaluate_lib.score_epochs(
            arch, run_dir, test, ev.batch_size, dtype=d.dtype, description=run)
      cross = metrics.cross_validate(intersections, unions, ev.num_folds)
      record = evaluate_lib.summarize(cross, epochs, intersections, unions, names,
                                      test.names)
      results[run] = {'trained_on': trained['description'],
                      'num_train_images': trained['num_examples'],
                      'epochs': trained['epochs'], 'steps_per_epoch': trained['steps_per_epoch'],
                      **record}
      results[run]['best_epoch'] = evaluate_lib.best_epoch(results[run])
      if trained.get('init'):
        results[run]['initialised_from'] = {k: trained['init'][k]
                                            for k in ('run_dir', 'epoch', 'head')}
      if run == LABELER_RUN:
        shown = [np.asarray(fold['test'][:ev.preview_count]) for fold in cross['folds']]
        grids = [evaluate_lib.prediction_grid(test.images[i], test.labels[i], predictions[i],
                                              palette) for i in shown]
      else:
        grids = evaluate_lib.fold_previews(arch, run_dir, test, cross['folds'], epochs,
                                           palette, ev.preview_count, ev.batch_size,
                                           dtype=d.dtype)
      for k, grid in enumerate(grids):
        image_utils.save_png(os.path.join(tmp, f'{run}_fold{k}.png'), grid)
    table = evaluate_lib.format_table(names, results)
    with open(os.path.join(tmp, 'table.txt'), 'w') as f:
      f.write(table + '\n')
  size = len(test.names) // ev.num_folds
  record = {
      'protocol': {
          'test_dir': os.path.abspath(test_dir), 'num_test_images': len(test.names),
          'stand_in_test_images': bool(stand_in),
          'num_folds': ev.num_folds, 'fold_size': size,
          'description': (
              f'test images in sorted order cut into {ev.num_folds} folds of {size}; per '
              'fold the epoch checkpoint with the best mIoU on the fold is scored on the '
              'other images; mean and std (ddof 0) over folds'),
          'miou': ('per-class IoU from intersections and unions summed over the images; '
                   'mean over the classes present in prediction or ground truth (a class '
                   'absent from both is left out; *_absent_as_zero counts it as 0, as '
                   "DatasetGAN's script does)"),
          'resolution': d.resolution, 'ignore_label': metrics.IGNORE_LABEL,
          'class_map': list(config.data.eval_class_map) or None},
      'classes': list(names), 'test_images': test.names, 'runs': results,
      'trained': trained_digests, 'seconds': round(time.time() - start, 2)}
  io.write_json(out_json, record)
  print(table)
  logging.info('evaluate: wrote %s', out_json)
