"""DatasetGAN Car-20: StyleGAN (v1) cars 512x384, 20 part classes, 16 annotated images.

Weights: DatasetGAN's `karras2019stylegan-cars-512x384.for_g_all.pt` (its README links
the checkpoint folder), converted once:
  python -m convert_weights stylegan1 karras2019stylegan-cars-512x384.for_g_all.pt \\
      checkpoints/stylegan1_car512 \\
      --avg-latent dataset_release/training_latent/car_20/avg_latent_stylegan1.npy
Run:
  python -m dgan_jax.main --config=configs/car20.py --workdir=workdirs/car20
"""

from dgan_jax import config as config_lib

CAR20_CLASSES = ('background', 'back_bumper', 'bumper', 'car_body', 'car_lights', 'door',
                 'fender', 'grilles', 'handles', 'hoods', 'licensePlate', 'mirror', 'roof',
                 'running_boards', 'tailLight', 'tire', 'trunk_lids', 'wheelhub', 'window',
                 'windshield')
CAR20_PALETTE = (255, 255, 255, 238, 229, 102, 0, 0, 0, 124, 99, 34, 193, 127, 15,
                 248, 213, 42, 220, 147, 77, 99, 83, 3, 116, 116, 138, 200, 226, 37,
                 225, 184, 161, 142, 172, 248, 153, 112, 146, 38, 112, 254, 229, 30, 141,
                 52, 83, 84, 194, 87, 125, 225, 96, 18, 31, 102, 211, 104, 131, 101)


def car_config():
  """The car model and annotations shared by Car-20 and ADE-Car-12."""
  config = config_lib.base()
  config.generator.checkpoint = 'checkpoints/stylegan1_car512'
  config.generator.how_to_get = (
      "Download DatasetGAN's karras2019stylegan-cars-512x384.for_g_all.pt and convert it: "
      'python -m convert_weights stylegan1 karras2019stylegan-cars-512x384.for_g_all.pt '
      'checkpoints/stylegan1_car512 --avg-latent '
      'dataset_release/training_latent/car_20/avg_latent_stylegan1.npy')
  config.data.name = 'car20'
  config.data.num_classes = 20
  config.data.class_names = CAR20_CLASSES
  config.data.palette = CAR20_PALETTE
  config.data.crop_rows = (64, 448)     # the 512x512 output holds a 512x384 car image
  config.data.feature_size = (512, 512)
  config.data.annotation_dir = 'dataset_release/annotation/training_data/car_processed'
  config.data.latents = 'dataset_release/training_latent/car_20/latent_stylegan1.npy'
  config.data.num_annotated = 16
  config.interpreter.num_members = 10
  return config


def get_config(arg=None):
  del arg
  config = car_config()
  config.evaluate.test_dir = 'dataset_release/annotation/testing_data/car_20_class'
  return config_lib.finalize(config)
