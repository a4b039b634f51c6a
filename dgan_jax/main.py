"""dgan_jax entry point.

  python -m dgan_jax.main --config=configs/car20.py --workdir=/tmp/car20
  python -m dgan_jax.main --config=configs/test.py --workdir=/tmp/test --stages=sample
"""

import difflib
import os
import sys

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


def _unknown_override(argv: list[str]) -> str | None:
  """The first --config.a.b override naming no field of the schema, with the closest
  field name, or None."""
  schema = config_lib.base()
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    *parents, leaf = arg[len('--config.'):].split('=', 1)[0].split('.')
    node = schema
    for part in parents:
      node = node.get(part) if hasattr(node, 'get') else None
    if node is None or not hasattr(node, 'keys') or not list(node.keys()):
      continue   # a free-form section (random_init.arch) or deeper than the schema
    if leaf not in node:
      close = difflib.get_close_matches(leaf, list(node.keys()), n=1)
      hint = f"; did you mean '{close[0]}'?" if close else ''
      return f"config.{'.'.join(parents + [leaf])}: no such config field{hint}"
  return None


def _one_line(error: BaseException, argv: list[str]) -> str:
  """A config file's or override's failure -> one line naming the file or field."""
  chain, link = [], error
  while link is not None:   # the exception, what caused it, ... the root cause
    chain.append(link)
    link = link.__cause__ or link.__context__
  cause = chain[-1]
  config_file = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')),
                     _DEFAULT_CONFIG)
  if isinstance(cause, SyntaxError):
    return f'{cause.filename}:{cause.lineno}: syntax error in the config file ({cause.msg})'
  if any('Failed loading config file' in str(link) for link in chain):
    return f'--config: {config_file}: no such file'
  unknown = _unknown_override(argv)
  if unknown:
    return unknown
  text = ' '.join(str(cause).split()) or type(cause).__name__
  if isinstance(cause, InputError):
    return text
  flag = str(error).splitlines()[0] if str(error).startswith('flag --') else ''
  return flag or f'{config_file}: {type(cause).__name__}: {text}'


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing (the config file runs here, then --config.* overrides) with every
  failure reported as one line instead of a traceback."""
  try:
    rest = flags.FLAGS(argv)
    flags.FLAGS.config.keys()   # a config file that failed to load raises here
    return rest
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(f'error: {_one_line(e, argv)}')


def resolve_paths(config) -> None:
  """Every path field, relative to the current directory, made absolute once."""
  with config.unlocked():
    for dotted in config_lib.PATH_FIELDS:
      *parents, leaf = dotted.split('.')
      node = config
      for part in parents:
        node = node[part]
      if node[leaf]:
        node[leaf] = os.path.abspath(os.path.expanduser(node[leaf]))


def main(argv):
  del argv
  config = flags.FLAGS.config
  if flags.FLAGS.stages:
    with config.unlocked():
      config.stages = flags.FLAGS.stages
  workdir = os.path.abspath(os.path.expanduser(flags.FLAGS.workdir))  # orbax: absolute
  try:
    config_lib.validate(config)   # the final config, after --config.* overrides
    resolve_paths(config)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
      raise InputError(f'--workdir: {workdir} exists and is not a folder')
    try:
      os.makedirs(workdir, exist_ok=True)
    except OSError as e:
      raise InputError(f'--workdir: cannot create {workdir} ({e.strerror})') from None
    if not os.access(workdir, os.W_OK | os.X_OK):
      raise InputError(f'--workdir: {workdir} is not writable')
    parallel.initialize(config.distributed)   # before any stage touches a device
    for name in config_lib.selected_stages(config):
      stages.STAGE_FUNCTIONS[name](config, workdir)
  except InputError as e:
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
