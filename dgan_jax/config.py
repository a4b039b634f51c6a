"""The config schema: every field a run may set, with its default.

Experiment files (`configs/<name>.py`) start from `base()` and override fields; the
returned ConfigDict is locked, so a misspelt field fails at once with its name.
"""

import math

import ml_collections

from dgan_jax import labelers
from dgan_jax.annotations import labels
from dgan_jax.errors import InputError

STAGES = ('sample', 'annotate', 'train_interpreter', 'generate', 'train_downstream', 'evaluate',
          'report')


def base() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0                # every random draw of the run derives from it
  config.stages = 'all'          # 'all' or comma-separated names from STAGES
  # What learns labels from the generator's features (dgan_jax/labelers.py): 'mlp',
  # DatasetGAN's per-pixel MLP ensemble (options: config.interpreter), or 'conv_head',
  # BigDatasetGAN's segmentation head (options: config.biggan.head, config.biggan.train).
  config.labeler = 'mlp'

  config.generator = ml_collections.ConfigDict()
  config.generator.checkpoint = ''      # directory written by `python -m convert_weights`
  config.generator.how_to_get = ''      # shown when the checkpoint is missing
  config.generator.avg_latent = ''      # optional .npy average W overriding the checkpoint's
  config.generator.dtype = 'float32'    # or 'bfloat16' on accelerators
  config.generator.truncation_psi = 0.7
  config.generator.truncation_cutoff = 8
  # 'const' (stored in the checkpoint), 'zero', or 'per_sample': drawn from (seed, sample
  # index), so sample i is the same whatever the batching (regenerating an annotated
  # image from its latent alone then needs 'const' or 'zero').
  config.generator.noise = 'const'
  # Random weights instead of a checkpoint (tests, smoke runs): a generator family (the
  # module dgan_jax/generators/<type>.py) and the fields of its architecture record,
  # e.g. type 'stylegan1', arch {'resolution': 32, 'fmap_base': 128, 'fmap_max': 32}.
  config.generator.random_init = ml_collections.ConfigDict()
  config.generator.random_init.type = ''    # '' = load config.generator.checkpoint
  config.generator.random_init.arch = ml_collections.ConfigDict()

  config.data = ml_collections.ConfigDict()
  config.data.name = ''
  config.data.num_classes = 2
  config.data.class_names = ('background', 'object')
  config.data.palette = ()              # flat RGB triples; empty: a generated palette
  # Imported annotations (python -m dgan_jax.annotations import): other spellings of
  # class names, {'auto': 'car'}; names match class_names case-insensitively anyway.
  config.data.label_aliases = ml_collections.ConfigDict()
  config.data.crop_rows = ()            # (start, stop) rows kept, in feature_size pixels
  config.data.annotation_dir = ''       # annotated images + masks (DatasetGAN layout)
  config.data.latents = ''              # latents of the annotated images ([N, 512] z)
  config.data.latent_kind = 'z'         # 'z' or 'w' for the latents file
  config.data.num_annotated = 16        # annotated images the interpreter trains on
  # Classes covering fewer pixels of an annotated mask are set to background (the
  # original's clean-up of annotation slips at 512 px; small images need less).
  config.data.min_segment_pixels = 30
  # No annotator (tests, smoke runs): when annotation_dir holds no masks, label the sample
  # stage's images by brightness (dgan_jax/data/synthetic.py) instead of failing.
  config.data.synthetic_masks = False
  # (H, W) the generator image and its feature maps are resized to (bilinear) before
  # crop_rows; masks live at this size after cropping. Empty: the generator resolution.
  config.data.feature_size = ()
  # Evaluation on a test set labelled with other classes (ADE-Car-12): eval_class_map[c]
  # is the test class of training class c.
  config.data.eval_class_map = ()
  config.data.eval_class_names = ()

  config.interpreter = ml_collections.ConfigDict()
  config.interpreter.num_members = 10   # ensemble size
  config.interpreter.batch_size = 64    # pixels per member per step
  config.interpreter.learning_rate = 1e-3
  # Stopping: num_steps > 0 trains that many steps; 0 keeps the original's rule: after
  # epoch patience_after_epoch, a member stops once its batch loss has not beaten its best
  # for more than `patience` steps (at most max_epochs epochs).
  config.interpreter.num_steps = 0
  config.interpreter.patience = 50
  config.interpreter.patience_after_epoch = 3
  config.interpreter.max_epochs = 100
  config.interpreter.checkpoint_every = 5000  # steps between orbax checkpoints (resume)
  config.interpreter.log_every = 100          # steps between progress-bar updates
  config.interpreter.feature_dtype = 'float32'  # stored native maps: or 'bfloat16' (half)
  # Data parallelism over local devices: 'batch' splits each member's pixel batch,
  # 'members' the ensemble; 'auto' takes members when they divide evenly.
  config.interpreter.parallel = 'auto'
  # True: every member trains on the same pixel batch each step (gathered once), instead
  # of the original's own shuffle per member; members then differ by initialisation only.
  # Faster on CPU (README, Benchmarks); the toy's mIoU with and without it is there too.
  config.interpreter.shared_pixels = False
  # Training steps per compiled call (a loop on the device; one per call once the stopping
  # rule watches). The same steps either way; fewer calls are faster (README, Benchmarks).
  config.interpreter.steps_per_call = 10

  config.sample = ml_collections.ConfigDict()
  config.sample.num_samples = 16        # images written for annotation
  config.sample.batch_size = 4
  config.sample.grid_columns = 4
  config.generate = ml_collections.ConfigDict()
  config.generate.num_samples = 10000   # synthetic samples before filtering
  config.generate.batch_size = 8        # per process; padded to a multiple of its devices
  config.generate.samples_per_shard = 256
  config.generate.drop_fraction = 0.1   # the most uncertain fraction is dropped
  config.generate.top_fraction = 0.1    # image score: mean of its top pixel JS values
  # Output rows labelled at once (bounds memory). On a 2-core CPU, 8 ran fastest for the
  # car's 384x512 grid: 1.15 s per image against 1.25 s with 32 (2026-12-07).
  config.generate.chunk_rows = 8
  config.generate.preview_count = 16
  config.generate.keep_raw = True       # keep raw shards (resume, extend num_samples)
  config.generate.dataset_name = 'datasetgan'

  # DeepLabV3 trained on the synthetic dataset and, as the few-shot baseline, on the
  # annotated images alone (dgan_jax/downstream/). Defaults: DatasetGAN's train_deeplab.py.
  config.downstream = ml_collections.ConfigDict()
  config.downstream.runs = ('synthetic', 'few_shot')  # networks trained and evaluated
  config.downstream.stage_sizes = (3, 4, 23, 3)  # bottleneck blocks per stage: ResNet-101
  config.downstream.width = 64          # stem channels; stage i has width * 2**i planes
  config.downstream.output_stride = 8   # later stages dilate instead of striding
  config.downstream.aspp_rates = (12, 24, 36)
  config.downstream.aspp_channels = 256
  config.downstream.pretrained_backbone = ''  # `convert_weights resnet` output; '' = none
  config.downstream.resolution = 512    # images and labels resized to this square
  config.downstream.batch_size = 8      # global, split over all devices
  config.downstream.epochs = 20         # one checkpoint per epoch; evaluation picks one
  config.downstream.learning_rate = 1e-3  # Adam
  # Augmentation (DeepLabV3's: random scale 0.5..2 and flip; DatasetGAN's script has none:
  # flip=False, scale_range=(1, 1) reproduces it).
  config.downstream.flip = True
  config.downstream.scale_range = (0.5, 2.0)
  config.downstream.steps_per_epoch = 0  # synthetic run; 0: floor(kept images / batch)
  # Few-shot run: 0 gives it the synthetic run's steps per epoch (as many updates).
  config.downstream.few_shot_steps_per_epoch = 0
  config.downstream.dtype = 'float32'   # or 'bfloat16' on accelerators
  # What the segmenter predicts: 'labels' (the generated labels, mapped by
  # data.eval_class_map when set), 'binary' (foreground vs background, as BigDatasetGAN's
  # benchmark), 'class' (a class-conditional generator's (K + 1)-way segmentation: each
  # foreground pixel takes its sample's class, k + 1 for the k-th of biggan.class_idx).
  config.downstream.label_mode = 'labels'
  # Fine-tuning, BigDatasetGAN's transfer experiment (downstream/run.py): the run 'real'
  # trains from scratch on finetune_dir; 'finetune' starts from the last epoch of the run
  # finetune_from (its backbone; with finetune_head its classifier too) and trains on
  # finetune_dir; 'finetune_few_shot' likewise on the annotated images.
  config.downstream.finetune_dir = ''   # real images + .npy masks (config.evaluate.test_dir's formats)
  config.downstream.finetune_from = 'synthetic'  # a run of this workdir, or a run's folder
  config.downstream.finetune_head = False
  config.downstream.finetune_epochs = 0       # 0: downstream.epochs
  config.downstream.finetune_steps_per_epoch = 0  # 0: the from-scratch run's (few_shot, real)
  config.downstream.finetune_learning_rate = 0.0  # 0: downstream.learning_rate
  config.downstream.log_every = 10      # steps between progress-bar updates
  config.downstream.workers = 4         # threads reading and augmenting examples

  # Real annotated test images: 5-fold cross-validation over the epoch checkpoints.
  config.evaluate = ml_collections.ConfigDict()
  config.evaluate.test_dir = ''         # images + .npy masks with matching sorted names
  config.evaluate.num_folds = 5
  config.evaluate.batch_size = 8
  config.evaluate.preview_count = 16    # test images shown per fold in eval/*.png
  # Smoke runs with no test_dir: this many fresh samples labelled by brightness stand in
  # for real test images (workdir/test_synthetic/); 0 = test_dir is required.
  config.evaluate.synthetic_test_images = 0

  # The report stage. compare_with: other workdirs, comma-separated, scored on the same test
  # images, classes, folds and resolution (say the toy GAN's beside the toy DDPM's); their
  # runs become rows of this report's tables, labelled with the workdir's name.
  config.report = ml_collections.ConfigDict()
  config.report.compare_with = ''

  # BigDatasetGAN (defaults: its train.py and sample_dataset.py). Class-conditional
  # generators (BigGAN, BigGAN-deep) draw per-class samples with these fields instead of
  # sample.num_samples / generate.num_samples; the 'conv_head' labeler reads head and
  # train.
  config.biggan = ml_collections.ConfigDict()
  config.biggan.class_idx = (225, 200)  # ImageNet class ids sampled (sample, generate stages)
  config.biggan.samples_per_class = 10  # generate: samples per class (before filtering)
  config.biggan.annotate_per_class = 5  # sample: images per class written for annotation
  config.biggan.z_std = 0.9             # z ~ N(0, z_std^2 I): sample_dataset.py's --z_var
  # The segmentation head: maps join the first group at least as large as they are
  # (BigGAN-512: 8..32 px -> 32, 64..128 -> 128, 256..512 -> 512), projected to
  # group_channels; the last group size must be the image resolution.
  config.biggan.head = ml_collections.ConfigDict()
  config.biggan.head.group_sizes = (32, 128, 512)
  config.biggan.head.group_channels = (128, 64, 32)
  # Heads trained at once (different initialisations); more than one gives the JS
  # uncertainty that config.generate.drop_fraction filters on (1 requires drop_fraction 0).
  config.biggan.head.num_members = 1
  config.biggan.train = ml_collections.ConfigDict()
  config.biggan.train.num_steps = 5000
  config.biggan.train.batch_size = 4    # annotated samples per step, split over devices
  config.biggan.train.learning_rate = 1e-3   # Adam
  config.biggan.train.checkpoint_every = 1000  # steps between orbax checkpoints (resume)
  config.biggan.train.log_every = 100          # steps between progress-bar updates

  # VQGAN's transformer (dgan_jax/generators/vqgan.py) samples with taming's settings:
  # softmax temperature, top_k (0: every token; taming's ImageNet samples use 600), or
  # greedy (the most likely token at each step). Classes and counts come from config.biggan.
  config.vqgan = ml_collections.ConfigDict()
  config.vqgan.temperature = 1.0
  config.vqgan.top_k = 600
  config.vqgan.greedy = False

  # A DDPM (guided-diffusion's UNet; dgan_jax/generators/ddpm.py). Features as
  # ddpm-segmentation takes them: the image noised to each step t of `steps` with one
  # shared noise, the outputs of the UNet's decoder blocks `blocks`. Samples (sample and
  # generate stages, DatasetDDPM): the reverse process, sampler 'ddpm' (ancestral) or
  # 'ddim' (with eta), over timestep_respacing's steps (guided-diffusion's strings: ''
  # every step, '100', 'ddim50', '10,20,30'), x_0 predictions clipped with clip_denoised.
  config.ddpm = ml_collections.ConfigDict()
  config.ddpm.steps = (50, 150, 250)
  config.ddpm.blocks = (5, 6, 7, 8, 12)
  config.ddpm.sampler = 'ddpm'
  config.ddpm.timestep_respacing = ''
  config.ddpm.eta = 0.0
  config.ddpm.clip_denoised = True

  # The built-in toy domain (dgan_jax/toy/): rendered side-view cars with exact part masks.
  # The `annotate` stage renders a held-out test set (the evaluate stage's default
  # test_dir) and train_images image-mask pairs, trains the fully supervised segmenter on
  # them and lets it label the sample stage's images: an annotator model standing in for
  # the person who draws the masks in real use.
  config.toy = ml_collections.ConfigDict()
  config.toy.enabled = False
  config.toy.resolution = 32            # rendered image size (the GAN's resolution)
  config.toy.train_images = 4000        # rendered pairs: annotator and supervised ceiling
  config.toy.test_images = 500          # rendered held-out test set with exact masks
  config.toy.colour_baseline_images = 400  # per-pixel colour classifier (report row)
  # Rendered labelled images standing in for a real labelled set (the fine-tuning runs'
  # config.downstream.finetune_dir when it is empty): workdir/toy/finetune/.
  config.toy.finetune_images = 100

  # Several hosts: jax.distributed.initialize(coordinator_address, num_processes,
  # process_id) when num_processes > 1 (or the environment of a TPU/SLURM job asks).
  config.distributed = ml_collections.ConfigDict()
  config.distributed.coordinator_address = ''
  config.distributed.num_processes = 1
  config.distributed.process_id = 0
  config.distributed.auto = False       # jax.distributed.initialize() from the environment

  config.lock()  # experiment files may change these fields, not add new ones
  return config


def smoke_downstream(config: ml_collections.ConfigDict) -> None:
  """The downstream stages of the tiny test configs: a 3-stage ResNet (the last stage
  dilated), 8 channels, at 32 px, two epochs of two steps (seconds per stage), evaluated
  on 10 brightness-labelled stand-in samples (no real test set)."""
  d = config.downstream
  d.stage_sizes, d.width, d.aspp_rates, d.aspp_channels = (1, 1, 1), 8, (1, 2, 3), 16
  d.resolution, d.batch_size, d.epochs = 32, 4, 2
  d.steps_per_epoch = d.few_shot_steps_per_epoch = 2
  d.log_every = 1
  config.evaluate.synthetic_test_images = 10


# Range rules of validate(): dotted field -> (test, what the field must be).
_POSITIVE = (lambda v: v >= 1, 'at least 1')
_NON_NEGATIVE = (lambda v: v >= 0, 'at least 0')
_FIELD_RULES = {
    **{field: _POSITIVE for field in (
        'data.num_classes', 'data.num_annotated', 'interpreter.num_members',
        'interpreter.batch_size', 'interpreter.patience', 'interpreter.max_epochs',
        'interpreter.checkpoint_every', 'interpreter.log_every', 'interpreter.steps_per_call',
        'sample.num_samples',
        'sample.batch_size', 'sample.grid_columns', 'generate.num_samples',
        'generate.batch_size', 'generate.samples_per_shard', 'generate.chunk_rows',
        'downstream.width', 'downstream.output_stride', 'downstream.aspp_channels',
        'downstream.resolution', 'downstream.batch_size', 'downstream.epochs',
        'downstream.log_every', 'downstream.workers', 'evaluate.batch_size',
        'biggan.samples_per_class', 'biggan.annotate_per_class', 'biggan.head.num_members',
        'biggan.train.num_steps', 'biggan.train.batch_size', 'biggan.train.checkpoint_every',
        'biggan.train.log_every', 'toy.resolution', 'distributed.num_processes')},
    **{field: _NON_NEGATIVE for field in (
        'seed', 'generator.truncation_cutoff', 'data.min_segment_pixels',
        'interpreter.num_steps', 'interpreter.patience_after_epoch', 'generate.preview_count',
        'downstream.steps_per_epoch', 'downstream.few_shot_steps_per_epoch',
        'downstream.finetune_epochs', 'downstream.finetune_steps_per_epoch',
        'downstream.finetune_learning_rate', 'toy.finetune_images',
        'evaluate.preview_count', 'evaluate.synthetic_test_images', 'toy.train_images',
        'toy.test_images', 'toy.colour_baseline_images', 'distributed.process_id',
        'vqgan.top_k')},
    **{field: (lambda v: v > 0, 'positive') for field in (
        'interpreter.learning_rate', 'downstream.learning_rate', 'biggan.z_std',
        'biggan.train.learning_rate', 'vqgan.temperature')},
    'generate.drop_fraction': (lambda v: 0 <= v < 1, 'in [0, 1)'),
    'generate.top_fraction': (lambda v: 0 < v <= 1, 'in (0, 1]'),
    'generator.truncation_psi': (lambda v: math.isfinite(v), 'a finite number'),
    'evaluate.num_folds': (lambda v: v >= 2, 'at least 2'),
    'ddpm.eta': (lambda v: v >= 0, 'at least 0'),
}
_CHOICES = {
    'generator.noise': ('const', 'zero', 'per_sample'),
    'generator.dtype': ('float32', 'bfloat16'),
    'data.latent_kind': ('z', 'w'),
    'interpreter.feature_dtype': ('float32', 'bfloat16'),
    'interpreter.parallel': ('auto', 'batch', 'members'),
    'downstream.dtype': ('float32', 'bfloat16'),
    'downstream.label_mode': ('labels', 'binary', 'class'),
    'ddpm.sampler': ('ddpm', 'ddim'),
}
# Paths a user gives; main.resolve_paths makes them absolute (relative to the current
# directory) once, where they enter.
PATH_FIELDS = ('generator.checkpoint', 'generator.avg_latent', 'data.annotation_dir',
               'data.latents', 'evaluate.test_dir', 'downstream.pretrained_backbone',
               'downstream.finetune_dir')


def _field(config, dotted: str):
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def validate(config: ml_collections.ConfigDict) -> None:
  """Every numeric field within its range, every enum among its choices, every path a
  string, and the cross-field rules; InputError naming the first bad field. Runs on the
  final config, after command-line overrides (main) as well as in finalize."""
  for field, (test, what) in _FIELD_RULES.items():
    value = _field(config, field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not test(value):
      raise InputError(f'config.{field} must be {what}, got {value!r}')
  for field, choices in _CHOICES.items():
    if _field(config, field) not in choices:
      raise InputError(f'config.{field} must be one of {list(choices)}, got '
                       f'{_field(config, field)!r}')
  for field in PATH_FIELDS:
    if not isinstance(_field(config, field), str):
      raise InputError(f'config.{field} must be a path (a string), got '
                       f'{_field(config, field)!r}')
  data = config.data
  if len(data.class_names) != data.num_classes:
    raise InputError(f'config.data.class_names has {len(data.class_names)} names '
                     f'but config.data.num_classes is {data.num_classes}')
  if data.palette and (len(data.palette) != 3 * data.num_classes
                       or not all(isinstance(v, int) and 0 <= v <= 255 for v in data.palette)):
    raise InputError(f'config.data.palette needs {3 * data.num_classes} values in 0..255 '
                     f'(RGB per class), has {list(data.palette)[:6]}...')
  if data.crop_rows and (len(data.crop_rows) != 2 or not 0 <= data.crop_rows[0] < data.crop_rows[1]):
    raise InputError(f'config.data.crop_rows must be (start, stop) with 0 <= start < stop, '
                     f'or empty; got {tuple(data.crop_rows)}')
  if data.feature_size and (len(data.feature_size) != 2
                            or not all(isinstance(v, int) and v > 0 for v in data.feature_size)):
    raise InputError(f'config.data.feature_size must be (height, width) or empty; got '
                     f'{tuple(data.feature_size)}')
  if data.eval_class_map and len(data.eval_class_map) != data.num_classes:
    raise InputError(f'config.data.eval_class_map needs one test class per class '
                     f'({data.num_classes}), has {len(data.eval_class_map)}')
  if not isinstance(config.downstream.finetune_from, str) or not config.downstream.finetune_from:
    raise InputError('config.downstream.finetune_from must name a run (e.g. synthetic) or a '
                     f'run folder, got {config.downstream.finetune_from!r}')
  labels.LabelSet.from_config(data)         # InputError naming a bad label alias
  labelers.labeler_class(config.labeler)   # InputError naming an unknown labeler
  selected_stages(config)                   # InputError naming an unknown stage
  if config.distributed.process_id >= config.distributed.num_processes:
    raise InputError('config.distributed.process_id must be below '
                     'config.distributed.num_processes')


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Validates an experiment file's config and locks it against new fields."""
  validate(config)
  config.generator.random_init.arch.lock()   # assigned whole by experiment files
  return config


def selected_stages(config) -> list[str]:
  if config.stages == 'all':
    return list(STAGES)
  names = [s.strip() for s in config.stages.split(',') if s.strip()]
  unknown = [s for s in names if s not in STAGES]
  if unknown:
    raise InputError(f'config.stages: unknown stage(s) {unknown}; known: {list(STAGES)}')
  return names
