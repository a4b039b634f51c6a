"""BigDatasetGAN: BigGAN-512 (ImageNet, 1000 classes) with a convolutional segmentation
head trained on BigDatasetGAN's annotated samples (foreground / background).

Weights: BigGAN-512 from TF-Hub (https://tfhub.dev/deepmind/biggan-512/2) converted to the
BigGAN-PyTorch layout, `biggan-512.pth`, as BigDatasetGAN's README describes (BigGAN-PyTorch's
TFHub/converter.py), then converted once more for JAX:
  python -m convert_weights biggan biggan-512.pth checkpoints/biggan512
Annotations: BigDatasetGAN's annotations.zip and latents.zip unzipped into data/ (the
layout data/annotations/biggan512/<wnid>/, data/latents/biggan512/<wnid>/; images/ is
optional).
Run (train the head, then 10 labelled samples of each class):
  python -m dgan_jax.main --config=configs/bigdatasetgan.py --workdir=workdirs/bigdatasetgan \\
      --config.biggan.class_idx=225,200 --config.biggan.samples_per_class=10
The `sample` stage writes new images to annotate, 5 per class of class_idx, into
workdir/annotate/ in the same layout (masks go to annotations/biggan512/<wnid>/<stem>.png).
An ensemble with uncertainty filtering, e.g.:
  --config.biggan.head.num_members=3 --config.generate.drop_fraction=0.1
"""

from dgan_jax import config as config_lib


def get_config(arg=None):
  del arg
  config = config_lib.base()
  config.stages = 'train_interpreter,generate'
  config.generator.checkpoint = 'checkpoints/biggan512'
  config.generator.how_to_get = (
      'Get biggan-512.pth: BigGAN-512 from https://tfhub.dev/deepmind/biggan-512/2 '
      "converted with BigGAN-PyTorch's TFHub/converter.py (see BigDatasetGAN's README), "
      'then convert it: python -m convert_weights biggan biggan-512.pth checkpoints/biggan512')
  config.data.name = 'bigdatasetgan'
  config.labeler = 'conv_head'
  config.data.num_classes = 2
  config.data.class_names = ('background', 'foreground')
  config.data.annotation_dir = 'data'
  config.biggan.class_idx = (225, 200)
  config.biggan.samples_per_class = 10
  config.biggan.annotate_per_class = 5
  config.biggan.z_std = 0.9
  config.biggan.head.group_sizes = (32, 128, 512)
  config.biggan.head.group_channels = (128, 64, 32)
  config.biggan.head.num_members = 1    # BigDatasetGAN trains one head
  config.biggan.train.num_steps = 5000
  config.biggan.train.batch_size = 4
  config.biggan.train.learning_rate = 1e-3
  config.generate.drop_fraction = 0.0   # one head: no disagreement to filter on
  config.generate.batch_size = 4
  config.generate.samples_per_shard = 64
  config.generate.dataset_name = 'bigdatasetgan'
  return config_lib.finalize(config)
