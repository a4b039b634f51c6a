"""The toy domain's DDPM: a 32 px guided-diffusion UNet (32 channels, three levels,
attention at 8 px, fixed variance, 1000 linear-schedule steps; 1.2M parameters) trained
on the toy GAN's rendered cars (the same 20,000 renders).

Reproduces checkpoints/toy_ddpm32:

  python -m dgan_jax.ddpm --config=configs/toy_ddpm_train.py --workdir=/tmp/toy_ddpm \
      --export=checkpoints/toy_ddpm32

`configs/toy_ddpm_train.py:tiny` trains for a few steps (tests).
"""

from dgan_jax.ddpm import train


def get_config(arg=None):
  config = train.default_config()
  # The raw weights: after 4000 steps the EMA (decay 0.999, no warm-up) still holds 1.8% of
  # the random initial weights, and its samples are visibly noisier.
  config.export_weights = 'params'
  if arg == 'tiny':
    config.num_reals = 64
    config.batch_size = 4
    config.num_steps = 6
    config.warmup_steps = 2
    config.checkpoint_every = 3
    config.sample_every = 3
    config.sample_respacing = '3'
    config.log_every = 2
  elif arg:
    raise ValueError(f'configs/toy_ddpm_train.py: unknown variant {arg!r} (known: tiny)')
  return config
