"""The toy domain with diffusion features: configs/toy.py's domain, annotator, test set,
folds and DeepLab, with the toy DDPM (checkpoints/toy_ddpm32, made by
configs/toy_ddpm_train.py from the toy GAN's renders) in place of the toy GAN.

The sample stage draws 16 DDPM samples, which the annotator model labels, as it labels
the GAN's; the labeler is ddpm-segmentation's MLP ensemble on the features of those
images noised to steps 50, 150 and 250 (decoder blocks 1-5: every block above the 8 px
bottleneck, 768 channels). Rows: 'labeler' (the ensemble applied to each test render's
features, ddpm-segmentation's method), 'synthetic' (DatasetDDPM: DeepLab on labelled
DDPM samples, the most uncertain 10% dropped), 'few_shot' (DeepLab on the 16 annotated
samples) and 'supervised' (the annotator, the same network as configs/toy.py's).

  python -m dgan_jax.main --config=configs/toy_ddpm.py --workdir=workdirs/toy_ddpm
  python -m dgan_jax.main --config=configs/toy_ddpm.py:quick --workdir=workdirs/toy_ddpm_quick

DatasetDDPM here draws 2000 samples (configs/toy.py's GAN: 6000) with 50 respaced
ancestral steps (ddpm-segmentation: all 1000): a sample costs 50 UNet passes and its
features 3 more, and 6000 samples of 1000 steps would take about a day on 2 CPU cores.
(25 DDIM steps gave smoother, more often broken samples of this model.)
"""

import os

from configs import toy
from dgan_jax import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config(arg=None):
  config = toy.get_config(arg)
  with config.unlocked():
    config.generator.checkpoint = os.path.join(REPO, 'checkpoints', 'toy_ddpm32')
    config.generator.how_to_get = (
        'It is committed with the repository; to retrain it: python -m dgan_jax.ddpm '
        '--config=configs/toy_ddpm_train.py --workdir=/tmp/toy_ddpm '
        '--export=checkpoints/toy_ddpm32')
  config.data.feature_size = (32, 32)   # the maps resized to the image (collect_features)
  config.ddpm.steps = (50, 150, 250)
  config.ddpm.blocks = (1, 2, 3, 4, 5)
  config.ddpm.sampler = 'ddpm'
  config.ddpm.timestep_respacing = '50'
  config.generate.dataset_name = 'datasetddpm'
  config.downstream.runs = ('labeler', 'synthetic', 'few_shot', 'supervised')
  if arg != 'quick':
    config.generate.num_samples = 2000
  return config_lib.finalize(config)
