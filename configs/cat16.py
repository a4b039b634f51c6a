"""DatasetGAN Cat-16: StyleGAN (v1) cats 256, 16 classes, 30 annotated images.

DatasetGAN's release names no cat classes; they are numbered here.
Weights: DatasetGAN's `karras2019stylegan-cats-256x256.for_g_all.pt`:
  python -m convert_weights stylegan1 karras2019stylegan-cats-256x256.for_g_all.pt \\
      checkpoints/stylegan1_cat256 \\
      --avg-latent dataset_release/training_latent/cat_16/avg_latent_cat.npy
  python -m dgan_jax.main --config=configs/cat16.py --workdir=workdirs/cat16
"""

from dgan_jax import config as config_lib

CAT_PALETTE = (255, 255, 255, 220, 220, 0, 190, 153, 153, 250, 170, 30, 220, 220, 0,
               107, 142, 35, 102, 102, 156, 152, 251, 152, 119, 11, 32, 244, 35, 232,
               220, 20, 60, 52, 83, 84, 194, 87, 125, 225, 96, 18, 31, 102, 211,
               104, 131, 101)


def get_config(arg=None):
  del arg
  config = config_lib.base()
  config.generator.checkpoint = 'checkpoints/stylegan1_cat256'
  config.generator.how_to_get = (
      "Download DatasetGAN's karras2019stylegan-cats-256x256.for_g_all.pt and convert it: "
      'python -m convert_weights stylegan1 karras2019stylegan-cats-256x256.for_g_all.pt '
      'checkpoints/stylegan1_cat256 --avg-latent '
      'dataset_release/training_latent/cat_16/avg_latent_cat.npy')
  config.data.name = 'cat16'
  config.data.num_classes = 16
  config.data.class_names = ('background',) + tuple(f'cat_part_{i}' for i in range(1, 16))
  config.data.palette = CAT_PALETTE
  config.data.feature_size = (256, 256)
  config.data.annotation_dir = 'dataset_release/annotation/training_data/cat_processed'
  config.data.latents = 'dataset_release/training_latent/cat_16/latent_stylegan1.npy'
  config.data.num_annotated = 30
  config.interpreter.num_members = 10
  config.downstream.resolution = 256    # the original's deeplab_res for cats
  config.evaluate.test_dir = 'dataset_release/annotation/testing_data/cat_16_class'
  return config_lib.finalize(config)
