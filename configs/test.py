"""A tiny random-weight StyleGAN (v1): every stage runs in seconds, offline.

  python -m dgan_jax.main --config=configs/test.py --workdir=/tmp/dgan_test
"""

import ml_collections

from dgan_jax import config as config_lib


def get_config(arg=None):
  del arg
  config = config_lib.base()
  config.generator.random_init.type = 'stylegan1'
  config.generator.random_init.arch = ml_collections.ConfigDict(
      {'resolution': 32, 'fmap_base': 128, 'fmap_max': 32})
  config.data.name = 'test'
  config.data.num_classes = 3
  config.data.class_names = ('background', 'part_a', 'part_b')
  config.data.crop_rows = (4, 28)
  config.data.num_annotated = 4
  config.data.synthetic_masks = True    # brightness masks stand in for annotations
  config.interpreter.num_members = 3
  config.interpreter.num_steps = 150
  config.interpreter.checkpoint_every = 100
  config.interpreter.log_every = 50
  config.sample.num_samples = 4
  config.sample.batch_size = 2
  config.sample.grid_columns = 4
  config.generate.num_samples = 20
  config.generate.batch_size = 4
  config.generate.samples_per_shard = 8
  config.generate.chunk_rows = 8
  config.generate.preview_count = 8
  config_lib.smoke_downstream(config)
  return config_lib.finalize(config)
