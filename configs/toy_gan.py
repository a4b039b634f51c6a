"""The toy domain's GAN: a 32 px StyleGAN (v1) trained on rendered side-view cars.

Reproduces checkpoints/toy_cars32 (88 minutes on 2 CPU cores shared with other work):

  python -m dgan_jax.gan --config=configs/toy_gan.py --workdir=/tmp/toy_gan \
      --export=checkpoints/toy_cars32

`configs/toy_gan.py:tiny` trains for a few steps (tests).
"""

from dgan_jax.gan import train


def get_config(arg=None):
  config = train.default_config()
  config.total_kimg = 192.0   # 6000 steps of 32
  if arg == 'tiny':
    config.num_reals = 64
    config.generator.fmap_base = 64
    config.generator.fmap_max = 16
    config.generator.latent_size = 16
    config.generator.dlatent_size = 16
    config.generator.mapping_fmaps = 16
    config.discriminator.fmap_base = 128
    config.discriminator.fmap_max = 16
    config.batch_size = 8
    config.total_kimg = 0.048
    config.r1_every = 2
    config.checkpoint_every = 3
    config.sample_every = 3
    config.log_every = 2
  elif arg:
    raise ValueError(f'configs/toy_gan.py: unknown variant {arg!r} (known: tiny)')
  return config
