"""A tiny random-weight StyleGAN2 ('skip', 32 px): every stage runs in seconds, offline.

  python -m dgan_jax.main --config=configs/test_sg2.py --workdir=/tmp/dgan_test_sg2
"""

import ml_collections

from configs import test as test_config


def get_config(arg=None):
  config = test_config.get_config(arg)
  with config.unlocked():
    config.generator.random_init.type = 'stylegan2'
    config.generator.random_init.arch = ml_collections.ConfigDict(
        {'resolution': 32, 'z_dim': 64, 'w_dim': 64, 'channel_base': 256, 'channel_max': 32,
         'mapping_layers': 2})
  config.data.name = 'test_sg2'
  return config
