"""python -m convert_weights stylegan1 SRC DST [--avg-latent avg.npy] [--noise-seed 0]

SRC: DatasetGAN's `*.for_g_all.pt` (PyTorch state dict) or NVIDIA's TF pickle
(`karras2019stylegan-*.pkl`, read without TensorFlow). DST: a directory that
`dgan_jax.generators.load(DST)` opens.
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
  args = parser.parse_args(argv)
  try:
    if args.format == 'stylegan1':
      from convert_weights import stylegan1  # pylint: disable=import-outside-toplevel
      info = stylegan1.convert(args.src, args.dst, args.avg_latent, args.noise_seed)
  except CheckpointError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote {args.dst} ({info["source_format"]}; const noise {info["const_noise"]}; '
        f'avg_latent {info["avg_latent"]})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
