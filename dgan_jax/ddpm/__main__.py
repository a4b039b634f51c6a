"""Trains a DDPM on rendered images and exports it for the pipeline.

  python -m dgan_jax.ddpm --config=configs/toy_ddpm_train.py --workdir=/tmp/toy_ddpm \
      --export=checkpoints/toy_ddpm32
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from dgan_jax import io
from dgan_jax.ddpm import train
from dgan_jax.errors import InputError

config_flags.DEFINE_config_file('config', None, 'DDPM training config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Training state, rendered images, samples.')
flags.DEFINE_string('export', '', 'Write the weights (config.export_weights) here when '
                    'training ends.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  config = flags.FLAGS.config
  try:
    state = train.train(config, flags.FLAGS.workdir)
    if flags.FLAGS.export:
      history = state['history']
      train.export(config, train.exported_weights(config, state), flags.FLAGS.export, {
          'trained_by': 'python -m dgan_jax.ddpm', 'config': config.to_dict(),
          'weights': config.export_weights,
          'steps': int(state['step']), 'kimg': int(state['step']) * config.batch_size / 1000,
          'final_loss': float(history['loss'][-1]) if len(history['loss']) else None,
          'training_seconds': float(history['seconds'][-1]) if len(history['seconds']) else None,
          'commit': io.git_commit()})
  except InputError as e:
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  app.run(main)
