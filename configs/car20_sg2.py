"""Car-20 on StyleGAN2: NVIDIA's LSUN car config-f model (512x384 cars in a 512x512 output),
DatasetGAN's 20 car part classes.

DatasetGAN's released car masks belong to its StyleGAN (v1) latents, not to this network:
annotate this model's own samples. The sample stage writes them to workdir/annotate
(image_{i}.png); paint mask_{i}.png beside each (classes and palette of configs/car20.py),
then rerun. The test set is DatasetGAN's real Car-20 test images, as for configs/car20.py.

Weights: NVIDIA's `stylegan2-car-config-f.pkl` (TensorFlow; read without TensorFlow):
  python -m convert_weights stylegan2 stylegan2-car-config-f.pkl checkpoints/stylegan2_car512
Run:
  python -m dgan_jax.main --config=configs/car20_sg2.py --workdir=workdirs/car20_sg2
"""

from configs import car20
from dgan_jax import config as config_lib


def get_config(arg=None):
  del arg
  config = car20.car_config()
  config.generator.checkpoint = 'checkpoints/stylegan2_car512'
  config.generator.how_to_get = (
      "Download NVIDIA's stylegan2-car-config-f.pkl (the StyleGAN2 release) and convert it: "
      'python -m convert_weights stylegan2 stylegan2-car-config-f.pkl '
      'checkpoints/stylegan2_car512')
  config.data.name = 'car20_sg2'
  config.data.annotation_dir = ''       # workdir/annotate: this model's own samples
  config.data.latents = ''
  config.sample.num_samples = 16
  config.evaluate.test_dir = 'dataset_release/annotation/testing_data/car_20_class'
  return config_lib.finalize(config)
