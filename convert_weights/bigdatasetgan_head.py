"""BigDatasetGAN's trained segmentation head -> a head directory (`dgan_jax.bigdatasetgan.
head.load`; the train_interpreter stage's workdir/head with config.labeler='conv_head').

The release's train.py saves `torch.save(g_seg.state_dict())` as checkpoint_latest.pth: the
whole model, the generator under `biggan_model.*` (ignored here: convert it with
`convert_weights biggan`) and the head (models.py, BigGAN-PyTorch layers):

  {low,mid,high}_feature_conv.0.weight        [c_g, C_g, 1, 1]   group g's 1x1 projection
  {mid,high}_feature_mix_conv                  mixing blocks 1 and 2 (SegBlock):
    .bn{1,2}.{gain,bias}.{weight [C, D], bias [C], u0 [1, C], sv0}   SNLinear of the ccbn
    .bn{1,2}.stored_{mean,var} [C]
    .conv{1,2}.{weight [C, C, 3, 3], bias [C], u0 [1, C], sv0}       SNConv2d
  out_layer.0.{gain, bias, stored_mean, stored_var} [C]              batch norm
  out_layer.2.{weight [1, C, 3, 3], bias [1], u0 [1, 1], sv0}        SNConv2d to the logit

`u0` is the power iteration's output-side vector (ours without its leading 1); `sv0` only
logs the last singular value and is dropped. The head's feature grouping comes from the
generator (its converted directory, --generator; default BigGAN-512's architecture).
"""

import json
import os

import numpy as np

import convert_weights
from convert_weights import safe_load
from dgan_jax.bigdatasetgan import head as head_lib
from dgan_jax.generators import biggan
from dgan_jax.generators import checkpoint
from dgan_jax.generators.checkpoint import CheckpointError

GROUPS = ('low', 'mid', 'high')
MIX_BLOCKS = {1: 'mid_feature_mix_conv', 2: 'high_feature_mix_conv'}
GENERATOR_PREFIX = 'biggan_model.'
_CONV = (2, 3, 1, 0)   # [out, in, kh, kw] -> [kh, kw, in, out]


def name_map(arch: head_lib.HeadArch) -> dict[str, tuple[str, object]]:
  """Our flat name (one member, without the member axis) -> (release key, layout change)."""
  mapping = {f'params/proj{g}/weight': (f'{GROUPS[g]}_feature_conv.0.weight', _CONV)
             for g in range(arch.num_groups)}
  for k in range(1, arch.num_groups):
    block = MIX_BLOCKS[k]
    for bn in ('bn1', 'bn2'):
      for part in ('gain', 'bias'):
        mapping[f'params/mix{k}/{bn}/{part}/weight'] = (f'{block}.{bn}.{part}.weight', 'T')
        mapping[f'params/mix{k}/{bn}/{part}/bias'] = (f'{block}.{bn}.{part}.bias', None)
        mapping[f'sn/mix{k}/{bn}/{part}'] = (f'{block}.{bn}.{part}.u0', 'row')
      mapping[f'batch_stats/mix{k}/{bn}/mean'] = (f'{block}.{bn}.stored_mean', None)
      mapping[f'batch_stats/mix{k}/{bn}/var'] = (f'{block}.{bn}.stored_var', None)
    for conv in ('conv1', 'conv2'):
      mapping[f'params/mix{k}/{conv}/weight'] = (f'{block}.{conv}.weight', _CONV)
      mapping[f'params/mix{k}/{conv}/bias'] = (f'{block}.{conv}.bias', None)
      mapping[f'sn/mix{k}/{conv}'] = (f'{block}.{conv}.u0', 'row')
  mapping.update({
      'params/out/bn/scale': ('out_layer.0.gain', None),
      'params/out/bn/bias': ('out_layer.0.bias', None),
      'batch_stats/out/bn/mean': ('out_layer.0.stored_mean', None),
      'batch_stats/out/bn/var': ('out_layer.0.stored_var', None),
      'params/out/conv/weight': ('out_layer.2.weight', _CONV),
      'params/out/conv/bias': ('out_layer.2.bias', None),
      'sn/out/conv': ('out_layer.2.u0', 'row')})
  return mapping


def _generator_arch(generator_dir: str | None) -> biggan.BigGANArch:
  if not generator_dir:
    return biggan.BigGANArch()   # BigGAN-512, BigDatasetGAN's generator
  path = os.path.join(generator_dir, 'generator.json')
  try:
    with open(path) as f:
      arch_json = json.load(f)['arch']
  except (OSError, ValueError, KeyError) as e:
    raise CheckpointError(f'{path}: not a converted generator ({e})') from None
  if arch_json.get('type') != 'biggan':
    raise CheckpointError(f'{path}: BigDatasetGAN\'s head reads a BigGAN (BigGAN-PyTorch '
                          f'layout), not a {arch_json.get("type")!r} generator')
  return checkpoint.build_arch(biggan.BigGANArch, arch_json, path)


def from_state_dict(state: dict[str, np.ndarray], source: str, arch: biggan.BigGANArch,
                    group_sizes=(32, 128, 512)) -> tuple[head_lib.HeadArch, dict]:
  """The release's state dict -> (HeadArch with one member, stacked variables)."""
  state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
  head_keys = {k for k in state if not k.startswith(GENERATOR_PREFIX)
               and not k.endswith('.sv0')}
  group_channels = []
  for group in GROUPS[:len(group_sizes)]:
    key = f'{group}_feature_conv.0.weight'
    if key not in state:
      raise CheckpointError(f'{source}: not a BigDatasetGAN head checkpoint (no {key}; '
                            f'found {sorted(head_keys)[:4]}...)')
    group_channels.append(int(state[key].shape[0]))
  try:
    head_arch = head_lib.HeadArch(
        feature_resolutions=tuple(arch.feature_resolutions),
        feature_channels=tuple(arch.feature_channels), cond_dim=arch.shared_dim,
        group_sizes=tuple(group_sizes), group_channels=tuple(group_channels),
        num_outputs=int(state['out_layer.2.weight'].shape[0]) if 'out_layer.2.weight' in state
        else 1)
  except ValueError as e:
    raise CheckpointError(f'{source}: does not fit the generator ({e})') from None
  mapping = name_map(head_arch)
  checkpoint.check_source_keys(sorted({key for key, _ in mapping.values()} - head_keys),
                               sorted(head_keys - {key for key, _ in mapping.values()}),
                               source, 'BigDatasetGAN segmentation head')
  flat = {}
  for ours, (theirs, change) in mapping.items():
    value = np.asarray(state[theirs], np.float32)
    if change == 'T':
      value = value.T
    elif change == 'row':
      value = value.reshape(-1)
    elif change is not None:
      value = value.transpose(change)
    flat[ours] = value[None]   # one member
  checkpoint.check_names_and_shapes(flat, head_arch.param_shapes(), source)
  bad = [k for k, v in flat.items() if not np.all(np.isfinite(v))]
  if bad:
    raise CheckpointError(f'{source}: NaN or infinity in {bad[:3]}')
  return head_arch, checkpoint.unflatten(flat)


def convert(src: str, dst: str, generator_dir: str | None = None,
            group_sizes=(32, 128, 512)) -> dict:
  """Converts SRC into the head directory DST (head.json + params.npz)."""
  arch = _generator_arch(generator_dir)
  head_arch, variables = from_state_dict(safe_load.load_torch_state_dict(src), src, arch,
                                         group_sizes)
  info = {'source': os.path.abspath(src), 'source_format': 'bigdatasetgan_code state dict',
          'class_names': ['background', 'foreground']}
  head_lib.save(dst, head_arch, variables, info)
  return {'arch': head_arch.to_json(), **info}


OUTPUT_META = 'head.json'
HELP = "BigDatasetGAN's trained segmentation head (train.py's checkpoint_latest.pth)"


def add_arguments(parser) -> None:
  parser.add_argument('src')
  parser.add_argument('dst')
  parser.add_argument('--generator', help='the converted BigGAN directory the head was '
                      "trained on (default: BigGAN-512's architecture)")
  parser.add_argument('--group-sizes', type=convert_weights.positive_ints,
                      default=(32, 128, 512),
                      help="feature group sizes (default BigGAN-512's 32,128,512)")


def run(args) -> str:
  info = convert(args.src, args.dst, args.generator, args.group_sizes)
  return (f'wrote {args.dst} (head: group channels {info["arch"]["group_channels"]}, '
          f'{info["arch"]["num_outputs"]} output)')
