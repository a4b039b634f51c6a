"""The built-in toy domain: side-view cars rendered with exact part masks (dgan_jax/toy/),
a 32 px StyleGAN trained on the renders by this project (checkpoints/toy_cars32, made by
configs/toy_gan.py) and an annotator model standing in for the person who labels the 16
samples. Runs offline on a fresh clone; the default config of dgan_jax.main.

  python -m dgan_jax.main --config=configs/toy.py --workdir=workdirs/toy
  python -m dgan_jax.main --config=configs/toy.py:quick --workdir=workdirs/toy_quick

`quick` shrinks every stage (fewer samples, steps and test images) to a few-minute smoke
run; its numbers are not meaningful.
"""

import os

from dgan_jax import config as config_lib
from dgan_jax.toy import render

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config(arg=None):
  config = config_lib.base()
  config.generator.checkpoint = os.path.join(REPO, 'checkpoints', 'toy_cars32')
  config.generator.how_to_get = (
      'It is committed with the repository; to retrain it: python -m dgan_jax.gan '
      '--config=configs/toy_gan.py --workdir=/tmp/toy_gan --export=checkpoints/toy_cars32')
  config.generator.truncation_psi = 1.0   # the whole distribution, as the test renders
  config.generator.truncation_cutoff = 8   # every layer of the 32 px network

  config.data.name = 'toy_cars'
  config.data.num_classes = render.NUM_CLASSES
  config.data.class_names = render.CLASS_NAMES
  config.data.palette = render.PALETTE
  config.data.num_annotated = 16
  config.data.min_segment_pixels = 2     # lights and hubs cover a few pixels at 32 px

  config.toy.enabled = True
  config.toy.resolution = 32
  config.toy.train_images = 4000
  config.toy.test_images = 500

  config.interpreter.num_members = 10
  # A fixed number of steps: at 32 px one epoch is 256 steps, and the original's stopping
  # rule (meant for 512 px epochs) would stop after about 4 epochs.
  config.interpreter.num_steps = 6000
  config.interpreter.checkpoint_every = 2000
  config.sample.num_samples = 16
  config.sample.grid_columns = 8
  config.generate.num_samples = 6000
  config.generate.batch_size = 50
  config.generate.samples_per_shard = 500
  config.generate.preview_count = 32

  config.downstream.runs = ('synthetic', 'synthetic_unfiltered', 'few_shot', 'supervised',
                            # BigDatasetGAN's transfer rows: pretrained on 'synthetic',
                            # fine-tuned on the 16 annotated images or on 100 renders
                            # (workdir/toy/finetune), and from scratch on those 100
                            'finetune_few_shot', 'finetune', 'real')
  # A small DeepLabV3 on 64 px inputs (the 32 px images upscaled), output stride 4.
  config.downstream.stage_sizes = (1, 1, 1)
  config.downstream.width = 16
  config.downstream.output_stride = 4
  config.downstream.aspp_rates = (2, 4, 6)
  config.downstream.aspp_channels = 64
  config.downstream.resolution = 64
  config.downstream.batch_size = 16
  config.downstream.epochs = 5
  config.downstream.steps_per_epoch = 250   # every run, the few-shot one included
  config.downstream.scale_range = (0.8, 1.25)
  config.downstream.log_every = 20
  config.evaluate.batch_size = 50

  if arg == 'quick':
    config.toy.train_images = 500
    config.toy.test_images = 100
    config.toy.colour_baseline_images = 200
    config.interpreter.num_members = 3
    config.interpreter.num_steps = 300
    config.generate.num_samples = 300
    config.generate.samples_per_shard = 100
    config.downstream.batch_size = 8
    config.downstream.epochs = 2
    config.downstream.steps_per_epoch = 20
  elif arg:
    raise ValueError(f'configs/toy.py: unknown variant {arg!r} (known: quick)')
  return config_lib.finalize(config)
