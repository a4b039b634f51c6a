"""A tiny random-weight BigGAN (32 px, 16 channels per block, 1000 classes): every stage
with BigDatasetGAN's segmentation heads (sample, train the heads, generate, a small
DeepLabV3 foreground/background, evaluation on stand-in samples, report) in about a
minute, offline.

  python -m dgan_jax.main --config=configs/test_biggan.py --workdir=/tmp/dgan_test_biggan
"""

import ml_collections

from dgan_jax import config as config_lib


def get_config(arg=None):
  del arg
  config = config_lib.base()
  config.generator.random_init.type = 'biggan'
  config.generator.random_init.arch = ml_collections.ConfigDict(
      {'resolution': 32,   # blocks at 8, 16 (+ attention), 32 px
       'ch': 4, 'dim_z': 20, 'shared_dim': 8, 'num_classes': 1000,
       'attention_resolutions': (16,)})
  config.data.name = 'test_biggan'
  config.labeler = 'conv_head'
  config.data.num_classes = 2
  config.data.class_names = ('background', 'foreground')
  config.data.synthetic_masks = True    # brightness masks stand in for annotations
  config.biggan.class_idx = (225, 200)
  config.biggan.annotate_per_class = 4
  config.biggan.samples_per_class = 6
  config.biggan.head.group_sizes = (8, 16, 32)
  config.biggan.head.group_channels = (16, 8, 8)
  config.biggan.head.num_members = 2
  config.biggan.train.num_steps = 30
  config.biggan.train.batch_size = 4
  config.biggan.train.checkpoint_every = 20
  config.biggan.train.log_every = 10
  config.sample.batch_size = 4
  config.generate.batch_size = 4
  config.generate.samples_per_shard = 4
  config.generate.drop_fraction = 0.25
  config.generate.preview_count = 8
  config.generate.dataset_name = 'bigdatasetgan'
  config.downstream.label_mode = 'binary'   # BigDatasetGAN's foreground / background
  config_lib.smoke_downstream(config)
  return config_lib.finalize(config)
