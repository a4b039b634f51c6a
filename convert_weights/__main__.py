"""python -m convert_weights stylegan1 SRC DST [--avg-latent avg.npy] [--noise-seed 0]

SRC: DatasetGAN's `*.for_g_all.pt` (PyTorch state dict) or NVIDIA's TF pickle
(`karras2019stylegan-*.pkl`, read without TensorFlow). DST: a directory that
`dgan_jax.generators.load(DST)` opens.

python -m convert_weights biggan SRC DST [--config config.json] [--bn-eps E] [--sn-eps E]

SRC: BigGAN-PyTorch's generator state dict (BigDatasetGAN's `biggan-512.pth`), or a
pytorch-pretrained-biggan BigGAN-deep `pytorch_model.bin` (or its directory, with
`config.json`). The layout is detected from the keys; spectral norm is folded.

python -m convert_weights ddpm SRC DST --flags "--image_size 256 --num_channels 256 ..."

SRC: an openai guided-diffusion UNet state dict (lsun_bedroom.pt, ffhq.pt, ...; float16 or
float32). --flags: the MODEL_FLAGS it was trained with, or a JSON object (inline or a .json
file) of the same keys; every key and shape is checked against them.

python -m convert_weights interpreter SRC DST

SRC: a folder of DatasetGAN's trained interpreter members `model_{i}.pth` (or a
comma-separated list of files). DST: one stacked ensemble `dgan_jax.interpreter.load(DST)`
opens (as the train_interpreter stage writes to workdir/interpreter).

python -m convert_weights bigdatasetgan_head SRC DST [--generator DIR]

SRC: BigDatasetGAN's trained head, `checkpoint_latest.pth` of its train.py (the model's
state dict; its generator part is ignored). DST: the head directory (workdir/head of a
run with config.labeler='conv_head'), `dgan_jax.bigdatasetgan.head.load(DST)` opens.

python -m convert_weights resnet SRC DST [--aspp-rates 12,24,36]

SRC: a torchvision bottleneck ResNet state dict (resnet50/101/152; `fc` dropped), for
config.downstream.pretrained_backbone, or a torchvision deeplabv3_resnet* state dict
(DatasetGAN's `deeplab_epoch_*.pth`), the whole network. DST: a directory that
`dgan_jax.downstream.deeplab.load_converted(DST)` reads.
"""

import argparse
import importlib
import os
import pkgutil
import shutil
import sys
import tempfile

import convert_weights
from dgan_jax import io
from dgan_jax.generators.checkpoint import CheckpointError

NOT_CONVERTERS = ('__main__', 'safe_load')


def converters() -> dict:
  """Subcommand name -> converter module: every module of this package that defines
  HELP, OUTPUT_META (the JSON file its DST folder holds), add_arguments(parser) with
  `src` and `dst`, and run(args) -> message (a new format adds its module)."""
  found = {}
  for info in pkgutil.iter_modules(convert_weights.__path__):
    if info.name in NOT_CONVERTERS:
      continue
    module = importlib.import_module(f'convert_weights.{info.name}')
    if all(hasattr(module, name) for name in ('HELP', 'OUTPUT_META', 'add_arguments', 'run')):
      found[info.name] = module
  return found


def check_destination(dst: str, output_meta: str, overwrite: bool) -> None:
  """DST may be new, or a converted checkpoint of the same kind (holding `output_meta`)
  when --overwrite is given; anything else is refused before anything is written."""
  if not os.path.lexists(dst):
    return
  if not os.path.isdir(dst) or os.path.islink(dst) or not os.path.isfile(
      os.path.join(dst, output_meta)):
    raise CheckpointError(f'{dst}: exists and is not a converted checkpoint of this kind '
                          f'(no {output_meta}); give a new DST (nothing was changed)')
  if not overwrite:
    raise CheckpointError(f'{dst}: a converted checkpoint is already there; pass '
                          '--overwrite to replace it')


def convert(module, args) -> str:
  """Runs the converter into a fresh temporary folder beside DST, then moves the result
  into place: a failed conversion leaves DST as it was."""
  dst = os.path.abspath(args.dst)
  check_destination(dst, module.OUTPUT_META, args.overwrite)
  parent = os.path.dirname(dst)
  try:
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f'.{os.path.basename(dst)}.', suffix=io.PARTIAL,
                               dir=parent)
  except OSError as e:
    raise CheckpointError(f'{args.dst}: cannot write there ({e.strerror})') from None
  given, args.dst = args.dst, os.path.join(scratch, 'out')
  try:
    message = module.run(args)
    io.replace_dir(args.dst, dst)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return message.replace(args.dst, given)


class _OneLineErrors(argparse.ArgumentParser):
  """Usage mistakes (a bad option value, a missing SRC) end in one line."""

  def error(self, message):
    self.exit(2, f'error: {self.prog}: {message}\n')


def main(argv=None) -> int:
  parser = _OneLineErrors(prog='python -m convert_weights', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  formats = parser.add_subparsers(dest='format', required=True)
  modules = converters()
  for name, module in sorted(modules.items()):
    subparser = formats.add_parser(name, help=module.HELP)
    module.add_arguments(subparser)
    subparser.add_argument('--overwrite', action='store_true',
                           help='replace DST when it is a converted checkpoint of this kind')
  args = parser.parse_args(argv)
  try:
    print(convert(modules[args.format], args))
  except CheckpointError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
