"""Face-34 on StyleGAN2: NVIDIA's FFHQ 1024 model, DatasetGAN's 34 face part classes.

Annotate this model's own samples (DatasetGAN's face masks belong to its StyleGAN v1
CelebA-HQ latents): the sample stage writes workdir/annotate/image_{i}.png; paint
mask_{i}.png beside each (classes and palette of configs/face34.py). Features and labels
live at 512x512. The test set is DatasetGAN's real Face-34 test images (CelebA-HQ).

Weights: stylegan2-ada-pytorch's `ffhq.pkl` (NGC), or the TF `stylegan2-ffhq-config-f.pkl`:
  python -m convert_weights stylegan2 ffhq.pkl checkpoints/stylegan2_ffhq1024
Run:
  python -m dgan_jax.main --config=configs/ffhq34_sg2.py --workdir=workdirs/ffhq34_sg2
"""

from configs import face34
from dgan_jax import config as config_lib


def get_config(arg=None):
  config = face34.get_config(arg)
  config.generator.checkpoint = 'checkpoints/stylegan2_ffhq1024'
  config.generator.how_to_get = (
      "Download stylegan2-ada-pytorch's ffhq.pkl (or NVIDIA's TF "
      'stylegan2-ffhq-config-f.pkl) and convert it: python -m convert_weights stylegan2 '
      'ffhq.pkl checkpoints/stylegan2_ffhq1024')
  config.data.name = 'ffhq34_sg2'
  config.data.annotation_dir = ''       # workdir/annotate: this model's own samples
  config.data.latents = ''
  config.sample.num_samples = 16
  return config_lib.finalize(config)
