"""dgan_jax entry point.

  python -m dgan_jax.main --config=configs/car20.py --workdir=/tmp/car20
  python -m dgan_jax.main --config=configs/test.py --workdir=/tmp/test --stages=sample
"""

import os

from absl import app
from absl import flags
from ml_collections import config_flags

from dgan_jax import config as config_lib
from dgan_jax import parallel
from dgan_jax import stages
from dgan_jax.errors import InputError

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               'configs', 'toy.py')

config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG, 'Experiment config file.',
                                lock_config=True)
flags.DEFINE_string('workdir', './workdir', 'Where every stage reads and writes.')
flags.DEFINE_string('stages', None, "Comma-separated stages to run (default: the config's).")


def main(argv):
  del argv
  config = flags.FLAGS.config
  if flags.FLAGS.stages:
    with config.unlocked():
      config.stages = flags.FLAGS.stages
  workdir = os.path.abspath(flags.FLAGS.workdir)   # orbax refuses relative paths
  os.makedirs(workdir, exist_ok=True)
  try:
    parallel.initialize(config.distributed)   # before any stage touches a device
    for name in config_lib.selected_stages(config):
      stages.STAGE_FUNCTIONS[name](config, workdir)
  except InputError as e:
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  app.run(main)
