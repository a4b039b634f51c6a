"""DatasetGAN Face-34: StyleGAN (v1) CelebA-HQ 1024, 34 classes, 16 annotated images.

Features and labels live at 512x512 (the generator's 1024 output is resized).
Weights: DatasetGAN's `karras2019stylegan-celebahq-1024x1024.for_g_all.pt`:
  python -m convert_weights stylegan1 karras2019stylegan-celebahq-1024x1024.for_g_all.pt \\
      checkpoints/stylegan1_face1024 \\
      --avg-latent dataset_release/training_latent/face_34/avg_latent_stylegan1.npy
  python -m dgan_jax.main --config=configs/face34.py --workdir=workdirs/face34
"""

from dgan_jax import config as config_lib

FACE34_CLASSES = (
    'background', 'head', 'head***cheek', 'head***chin', 'head***ear', 'head***ear***helix',
    'head***ear***lobule', 'head***eye***botton lid', 'head***eye***eyelashes',
    'head***eye***iris', 'head***eye***pupil', 'head***eye***sclera', 'head***eye***tear duct',
    'head***eye***top lid', 'head***eyebrow', 'head***forehead', 'head***frown', 'head***hair',
    'head***hair***sideburns', 'head***jaw', 'head***moustache', 'head***mouth***inferior lip',
    'head***mouth***oral comisure', 'head***mouth***superior lip', 'head***mouth***teeth',
    'head***neck', 'head***nose', 'head***nose***ala of nose', 'head***nose***bridge',
    'head***nose***nose tip', 'head***nose***nostril', 'head***philtrum', 'head***temple',
    'head***wrinkles')
# DatasetGAN's face palette, given as floats in [0, 1]; int(x * 255) as it does.
_FACE_PALETTE_FLOAT = (
    1.0000, 1.0000, 1.0000, 0.4420, 0.5100, 0.4234, 0.8562, 0.9537, 0.3188, 0.2405, 0.4699,
    0.9918, 0.8434, 0.9329, 0.7544, 0.3748, 0.7917, 0.3256, 0.0190, 0.4943, 0.3782, 0.7461,
    0.0137, 0.5684, 0.1644, 0.2402, 0.7324, 0.0200, 0.4379, 0.4100, 0.5853, 0.8880, 0.6137,
    0.7991, 0.9132, 0.9720, 0.6816, 0.6237, 0.8562, 0.9981, 0.4692, 0.3849, 0.5351, 0.8242,
    0.2731, 0.1747, 0.3626, 0.8345, 0.5323, 0.6668, 0.4922, 0.2122, 0.3483, 0.4707, 0.6844,
    0.1238, 0.1452, 0.3882, 0.4664, 0.1003, 0.2296, 0.0401, 0.3030, 0.5751, 0.5467, 0.9835,
    0.1308, 0.9628, 0.0777, 0.2849, 0.1846, 0.2625, 0.9764, 0.9420, 0.6628, 0.3893, 0.4456,
    0.6433, 0.8705, 0.3957, 0.0963, 0.6117, 0.9702, 0.0247, 0.3668, 0.6694, 0.3117, 0.6451,
    0.7302, 0.9542, 0.6171, 0.1097, 0.9053, 0.3377, 0.4950, 0.7284, 0.1655, 0.9254, 0.6557,
    0.9450, 0.6721, 0.6162)


def get_config(arg=None):
  del arg
  config = config_lib.base()
  config.generator.checkpoint = 'checkpoints/stylegan1_face1024'
  config.generator.how_to_get = (
      "Download DatasetGAN's karras2019stylegan-celebahq-1024x1024.for_g_all.pt and convert "
      'it: python -m convert_weights stylegan1 karras2019stylegan-celebahq-1024x1024.for_g_all.pt'
      ' checkpoints/stylegan1_face1024 --avg-latent '
      'dataset_release/training_latent/face_34/avg_latent_stylegan1.npy')
  config.data.name = 'face34'
  config.data.num_classes = 34
  config.data.class_names = FACE34_CLASSES
  config.data.palette = tuple(int(x * 255) for x in _FACE_PALETTE_FLOAT)
  config.data.feature_size = (512, 512)
  config.data.annotation_dir = 'dataset_release/annotation/training_data/face_processed'
  config.data.latents = 'dataset_release/training_latent/face_34/latent_stylegan1.npy'
  config.data.num_annotated = 16
  config.interpreter.num_members = 10
  config.evaluate.test_dir = 'dataset_release/annotation/testing_data/face_34_class'
  return config_lib.finalize(config)
