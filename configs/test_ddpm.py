"""A tiny random-weight DDPM (guided-diffusion UNet, 32 px, two levels, attention at 16 px,
learned variance, scale-shift norm, res-block resampling; 1000 diffusion steps): every
stage in about a minute, offline. Samples take 4 respaced DDPM steps; brightness masks
stand in for annotations, and the labeler trains on the features of those images, noised
to steps 50, 150 and 250 (decoder blocks 1 and 3: 288 channels). Evaluated: DeepLab on the DatasetDDPM samples and
on the annotated ones, and the labeler itself on the test images ('labeler').

  python -m dgan_jax.main --config=configs/test_ddpm.py --workdir=/tmp/dgan_test_ddpm
"""

import ml_collections

from configs import test as test_config


def get_config(arg=None):
  """configs/test.py's counts, labeler and downstream, with the DDPM as the generator."""
  config = test_config.get_config(arg)
  with config.unlocked():
    config.generator.random_init.type = 'ddpm'
    config.generator.random_init.arch = ml_collections.ConfigDict(
        {'image_size': 32, 'model_channels': 32, 'num_res_blocks': 1, 'channel_mult': (1, 2),
         'attention_resolutions': (16,), 'num_heads': 2, 'num_head_channels': -1})
  config.data.name = 'test_ddpm'
  config.data.crop_rows = ()            # a DDPM encodes whole square images
  config.data.feature_size = (32, 32)   # the maps resized to the image (collect_features)
  config.ddpm.blocks = (1, 3)
  config.ddpm.timestep_respacing = '4'
  config.generate.dataset_name = 'ddpm'
  config.downstream.runs = ('synthetic', 'few_shot', 'labeler')
  return config
