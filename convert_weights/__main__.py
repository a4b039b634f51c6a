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

python -m convert_weights resnet SRC DST [--aspp-rates 12,24,36]

SRC: a torchvision bottleneck ResNet state dict (resnet50/101/152; `fc` dropped), for
config.downstream.pretrained_backbone, or a torchvision deeplabv3_resnet* state dict
(DatasetGAN's `deeplab_epoch_*.pth`), the whole network. DST: a directory that
`dgan_jax.downstream.deeplab.load_converted(DST)` reads.
"""

import argparse
import sys

from dgan_jax.generators.checkpoint import CheckpointError


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m convert_weights', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  formats = parser.add_subparsers(dest='format', required=True)
  sg1 = formats.add_parser('stylegan1', help='StyleGAN (v1): DatasetGAN .pt or NVIDIA TF .pkl')
  sg1.add_argument('src')
  sg1.add_argument('dst')
  sg1.add_argument('--avg-latent', help='.npy average W, [512] or [num_ws, 512] '
                   "(DatasetGAN's avg_latent_stylegan1.npy); TF pickles carry their own")
  sg1.add_argument('--noise-seed', type=int, default=0,
                   help='seed of the constant noise stored when SRC has none (default 0)')
  big = formats.add_parser('biggan', help='BigGAN: BigGAN-PyTorch .pth or '
                           'pytorch-pretrained-biggan BigGAN-deep .bin')
  big.add_argument('src')
  big.add_argument('dst')
  big.add_argument('--config', help="BigGAN-deep only: the package's config.json (default: "
                   'config.json in a directory SRC; else inferred, blocks 1, 3, ... upsample)')
  big.add_argument('--bn-eps', type=float, default=None,
                   help='batch-norm epsilon (default 1e-4, or the config.json value)')
  big.add_argument('--sn-eps', type=float, default=1e-4,
                   help='BigGAN-PyTorch SN_eps of the folded power iteration (default 1e-4)')
  interp = formats.add_parser('interpreter', help="DatasetGAN's model_{i}.pth pixel "
                              'classifiers -> one stacked ensemble')
  interp.add_argument('src', help='folder with model_0.pth, model_1.pth, ... or a '
                      'comma-separated list of .pth files')
  interp.add_argument('dst')
  res = formats.add_parser('resnet', help='torchvision ResNet (DeepLab backbone) or '
                          'DeepLabV3 state dict')
  res.add_argument('src')
  res.add_argument('dst')
  res.add_argument('--aspp-rates', help='DeepLabV3 only: comma-separated ASPP dilation '
                   "rates (weights do not store them; default torchvision's 12,24,36)")
  args = parser.parse_args(argv)
  try:
    if args.format == 'stylegan1':
      from convert_weights import stylegan1  # pylint: disable=import-outside-toplevel
      info = stylegan1.convert(args.src, args.dst, args.avg_latent, args.noise_seed)
    elif args.format == 'biggan':
      from convert_weights import biggan  # pylint: disable=import-outside-toplevel
      info = biggan.convert(args.src, args.dst, args.config, args.bn_eps, args.sn_eps)
      print(f'wrote {args.dst} ({info["source_format"]}; {info["summary"]})')
      return 0
    elif args.format == 'interpreter':
      from convert_weights import interpreter  # pylint: disable=import-outside-toplevel
      info = interpreter.convert(args.src, args.dst)
      print(f'wrote {args.dst} ({info["members"]} members, {info["feature_dim"]} features, '
            f'{info["num_classes"]} classes)')
      return 0
    elif args.format == 'resnet':
      from convert_weights import resnet  # pylint: disable=import-outside-toplevel
      rates = tuple(int(r) for r in args.aspp_rates.split(',')) if args.aspp_rates else None
      info = resnet.convert(args.src, args.dst, rates)
      arch = info['arch']
      print(f'wrote {args.dst} ({info["contains"]}: stage_sizes {tuple(arch["stage_sizes"])}, '
            f'width {arch["width"]}; dropped {len(info["dropped"])} keys)')
      return 0
  except CheckpointError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote {args.dst} ({info["source_format"]}; const noise {info["const_noise"]}; '
        f'avg_latent {info["avg_latent"]})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
