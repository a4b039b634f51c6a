"""A tiny random-weight VQGAN with its class-conditional transformer (32 px, 8x8 codes,
1024 codes, 2 transformer layers, 1000 classes): every stage in about a minute, offline.
The sample stage writes BigDatasetGAN-layout samples; brightness masks stand in for
annotations, and the segmentation heads train on the decoder's maps of those images run
through the encoder (annotated images need no latents with a VQGAN).

  python -m dgan_jax.main --config=configs/test_vqgan.py --workdir=/tmp/dgan_test_vqgan
"""

import ml_collections

from dgan_jax import config as config_lib


def get_config(arg=None):
  del arg
  config = config_lib.base()
  config.generator.random_init.type = 'vqgan'
  config.generator.random_init.arch = ml_collections.ConfigDict(
      {'resolution': 32, 'ch': 32, 'ch_mult': (1, 2, 2), 'num_res_blocks': 1,  # 32, 16, 8 px
       'attn_resolutions': (8,), 'z_channels': 8, 'n_embed': 1024, 'embed_dim': 4,
       'vocab_size': 1024, 'block_size': 64, 'n_layer': 2, 'n_head': 2, 'n_embd': 32,
       'num_classes': 1000})
  config.data.name = 'test_vqgan'
  config.labeler = 'conv_head'
  config.data.num_classes = 2
  config.data.class_names = ('background', 'foreground')
  config.data.synthetic_masks = True    # brightness masks stand in for annotations
  config.biggan.class_idx = (225, 200)
  config.biggan.annotate_per_class = 4
  config.biggan.samples_per_class = 6
  config.vqgan.top_k = 100
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
  config.generate.dataset_name = 'vqgan'
  config.downstream.label_mode = 'binary'   # BigDatasetGAN's foreground / background
  config_lib.smoke_downstream(config)
  return config_lib.finalize(config)
