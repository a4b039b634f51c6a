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

from dgan_jax import config as config_lib


def get_config(arg=None):
  del arg
  config = config_lib.base()
  config.stages = 'train_interpreter,generate'
  config.generator.checkpoint = 'checkpoints/vqgan_cin'
  config.generator.how_to_get = (
      "Get taming-transformers' ImageNet cin_transformer log folder "
      '(2021-04-03T19-39-50_cin_transformer, linked from its README), then convert it: '
      'python -m convert_weights vqgan 2021-04-03T19-39-50_cin_transformer '
      'checkpoints/vqgan_cin')
  config.data.name = 'bigdatasetgan_vqgan'
  config.labeler = 'conv_head'
  config.data.num_classes = 2
  config.data.class_names = ('background', 'foreground')
  config.data.annotation_dir = 'data'
  config.biggan.class_idx = (225, 200)
  config.biggan.samples_per_class = 10
  config.biggan.annotate_per_class = 5
  config.vqgan.temperature = 1.0
  config.vqgan.top_k = 600
  # The decoder's maps: 16 px (512 channels), 32 and 64 (256), 128 and 256 (128).
  config.biggan.head.group_sizes = (32, 128, 256)
  config.biggan.head.group_channels = (128, 64, 32)
  config.biggan.head.num_members = 1
  config.biggan.train.num_steps = 5000
  config.biggan.train.batch_size = 4
  config.biggan.train.learning_rate = 1e-3
  config.generate.drop_fraction = 0.0   # one head: no disagreement to filter on
  config.generate.batch_size = 4
  config.generate.samples_per_shard = 64
  config.generate.dataset_name = 'bigdatasetgan_vqgan'
  return config_lib.finalize(config)
