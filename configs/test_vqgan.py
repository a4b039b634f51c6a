"""A tiny random-weight VQGAN with its class-conditional transformer (32 px, 8x8 codes,
1024 codes, 2 transformer layers, 1000 classes): every stage in about a minute, offline.
The sample stage writes BigDatasetGAN-layout samples; brightness masks stand in for
annotations, and the segmentation heads train on the decoder's maps of those images run
through the encoder (annotated images need no latents with a VQGAN).

  python -m dgan_jax.main --config=configs/test_vqgan.py --workdir=/tmp/dgan_test_vqgan
"""

import ml_collections

from configs import test_biggan
from dgan_jax import config as config_lib


def get_config(arg=None):
  """configs/test_biggan.py's stages, counts and heads, with the VQGAN as the generator."""
  config = test_biggan.get_config(arg)
  config.generator.random_init.type = 'vqgan'
  config.generator.random_init.arch = ml_collections.ConfigDict(
      {'resolution': 32, 'ch': 32, 'ch_mult': (1, 2, 2), 'num_res_blocks': 1,  # 32, 16, 8 px
       'attn_resolutions': (8,), 'z_channels': 8, 'n_embed': 1024, 'embed_dim': 4,
       'vocab_size': 1024, 'block_size': 64, 'n_layer': 2, 'n_head': 2, 'n_embd': 32,
       'num_classes': 1000})
  config.data.name = 'test_vqgan'
  config.vqgan.top_k = 100
  config.generate.dataset_name = 'vqgan'
  return config_lib.finalize(config)
