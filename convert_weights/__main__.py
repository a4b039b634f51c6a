"""python -m convert_weights stylegan1 SRC DST [--avg-latent avg.npy] [--noise-seed 0]

SRC: DatasetGAN's `*.for_g_all.pt` (PyTorch state dict) or NVIDIA's TF pickle
(`karras2019stylegan-*.pkl`, read without TensorFlow). DST: a directory that
`dgan_jax.generators.load(DST)` opens.

python -m convert_weights biggan SRC DST [--config config.json] [--bn-eps E] [--sn-eps E]

SRC: BigGAN-PyTorch's generator state dict (BigDatasetGAN's `biggan-512.pth`), or a
pytorch-pretrained-biggan BigGAN-deep `pytorch_model.bin` (or its directory, with
`config.json`). The layout is detected from the keys; spectral norm is folded.

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
import pkgutil
import sys

import convert_weights
from dgan_jax.generators.checkpoint import CheckpointError

NOT_CONVERTERS = ('__main__', 'safe_load')


def converters() -> dict:
  """Subcommand name -> converter module: every module of this package that defines
  HELP, add_arguments(parser) and run(args) -> message (a new format adds its module)."""
  found = {}
  for info in pkgutil.iter_modules(convert_weights.__path__):
    if info.name in NOT_CONVERTERS:
      continue
    module = importlib.import_module(f'convert_weights.{info.name}')
    if all(hasattr(module, name) for name in ('HELP', 'add_arguments', 'run')):
      found[info.name] = module
  return found


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m convert_weights', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  formats = parser.add_subparsers(dest='format', required=True)
  modules = converters()
  for name, module in sorted(modules.items()):
    module.add_arguments(formats.add_parser(name, help=module.HELP))
  args = parser.parse_args(argv)
  try:
    print(modules[args.format].run(args))
  except CheckpointError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
