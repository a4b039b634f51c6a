"""Trains a StyleGAN generator on rendered images and exports it for the pipeline.

  python -m dgan_jax.gan --config=configs/toy_gan.py --workdir=/tmp/toy_gan \
      --export=checkpoints/toy_cars32
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from dgan_jax import io
from dgan_jax.errors import InputError
from dgan_jax.gan import train

config_flags.DEFINE_config_file('config', None, 'GAN training config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Training state, rendered images, samples.')
flags.DEFINE_string('export', '', 'Write the EMA generator here when training ends.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  config = flags.FLAGS.config
  try:
    state = train.train(config, flags.FLAGS.workdir)
    if flags.FLAGS.export:
      train.export(config, state['g_ema'], flags.FLAGS.export, {
          'trained_by': 'python -m dgan_jax.gan', 'config': config.to_dict(),
          'steps': int(state['step']),
          'kimg': int(state['step']) * config.batch_size / 1000, 'commit': io.git_commit()})
  except InputError as e:
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  app.run(main)
