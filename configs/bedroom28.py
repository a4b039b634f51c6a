"""DatasetGAN Bedroom-28: StyleGAN (v1) LSUN bedrooms 256, 28 classes, 40 annotated images
(the paper's Table 1).

DatasetGAN's release names no bedroom classes; they are numbered here.
Weights: DatasetGAN's `karras2019stylegan-bedrooms-256x256.for_g_all.pt`:
  python -m convert_weights stylegan1 karras2019stylegan-bedrooms-256x256.for_g_all.pt \\
      checkpoints/stylegan1_bedroom256 --avg-latent avg_latent_stylegan1.npy
  python -m dgan_jax.main --config=configs/bedroom28.py --workdir=workdirs/bedroom28
"""

from dgan_jax import config as config_lib

# The first 28 colours of DatasetGAN's bedroom palette.
BEDROOM_PALETTE = (255, 255, 255, 238, 229, 102, 255, 72, 69, 124, 99, 34, 193, 127, 15,
                   106, 177, 21, 248, 213, 42, 252, 155, 83, 220, 147, 77, 99, 83, 3,
                   116, 116, 138, 63, 182, 24, 200, 226, 37, 225, 184, 161, 233, 5, 219,
                   142, 172, 248, 153, 112, 146, 38, 112, 254, 229, 30, 141, 238, 229, 12,
                   255, 72, 6, 124, 9, 34, 193, 17, 15, 106, 17, 21, 28, 213, 2,
                   252, 155, 3, 20, 147, 77, 9, 83, 3)


def get_config(arg=None):
  del arg
  config = config_lib.base()
  config.generator.checkpoint = 'checkpoints/stylegan1_bedroom256'
  config.generator.how_to_get = (
      "Download DatasetGAN's karras2019stylegan-bedrooms-256x256.for_g_all.pt and convert it: "
      'python -m convert_weights stylegan1 karras2019stylegan-bedrooms-256x256.for_g_all.pt '
      'checkpoints/stylegan1_bedroom256 --avg-latent avg_latent_stylegan1.npy')
  config.data.name = 'bedroom28'
  config.data.num_classes = 28
  config.data.class_names = ('background',) + tuple(f'bedroom_part_{i}' for i in range(1, 28))
  config.data.palette = BEDROOM_PALETTE
  config.data.feature_size = (256, 256)
  config.data.num_annotated = 40
  config.interpreter.num_members = 10
  config.downstream.resolution = 256    # the generator's resolution, as for cats
  # No test folder is set (DatasetGAN's release has no bedroom experiment file): set
  # config.evaluate.test_dir to one.
  return config_lib.finalize(config)
