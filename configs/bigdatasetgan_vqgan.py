"""BigDatasetGAN's second generator: taming-transformers' class-conditional ImageNet VQGAN
(cin_transformer: 256 px, 16x16 codes of 16384, a 48-layer transformer, 1000 classes) with
the convolutional segmentation head trained on annotated images run through its encoder.

Weights: taming's "ImageNet (cIN)" log folder 2021-04-03T19-39-50_cin_transformer
(configs/2021-04-03T19-39-50-project.yaml and checkpoints/last.ckpt, linked from the
taming-transformers README), converted once (it reads the YAML safely and the checkpoint
weights-only; about 1.4 billion parameters, 5.6 GB as float32):
  python -m convert_weights vqgan 2021-04-03T19-39-50_cin_transformer checkpoints/vqgan_cin
Annotations: any folder of masks with their images; no latents are needed, since the
encoder turns each image into codes. BigDatasetGAN's release in data/ (annotations/
biggan512/<wnid>/<stem>.png with images/biggan512/<wnid>/<stem>.png; 512 px images are
resized to 256 and their masks to the labelled grid), or your own photographs in the
plain format (image_{i}.png + mask_{i}.png; centre-cropped to a square).
Run (train the head, then 10 labelled samples of each class):
  python -m dgan_jax.main --config=configs/bigdatasetgan_vqgan.py \\
      --workdir=workdirs/bigdatasetgan_vqgan --config.biggan.class_idx=225,200
Sampling follows taming's ImageNet samples: temperature 1.0, top-k 600 (its nucleus
filter, top-p, is not implemented).
"""

from configs import bigdatasetgan
from dgan_jax import config as config_lib


def get_config(arg=None):
  """configs/bigdatasetgan.py's classes, head and training, with the VQGAN as the
  generator and head groups for its 256 px decoder."""
  config = bigdatasetgan.get_config(arg)
  config.generator.checkpoint = 'checkpoints/vqgan_cin'
  config.generator.how_to_get = (
      "Get taming-transformers' ImageNet cin_transformer log folder "
      '(2021-04-03T19-39-50_cin_transformer, linked from its README), then convert it: '
      'python -m convert_weights vqgan 2021-04-03T19-39-50_cin_transformer '
      'checkpoints/vqgan_cin')
  config.data.name = 'bigdatasetgan_vqgan'
  config.vqgan.temperature = 1.0
  config.vqgan.top_k = 600
  # The decoder's maps: 16 px (512 channels), 32 and 64 (256), 128 and 256 (128).
  config.biggan.head.group_sizes = (32, 128, 256)
  config.generate.dataset_name = 'bigdatasetgan_vqgan'
  return config_lib.finalize(config)
