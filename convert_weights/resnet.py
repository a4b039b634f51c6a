"""torchvision ResNet / DeepLabV3 weights -> a dgan_jax DeepLab weights directory.

Two sources, told apart by their keys:
  * a torchvision bottleneck ResNet classifier (`resnet50`, `resnet101`, ...): `conv1.*`,
    `bn1.*`, `layer{1..4}.{j}.*`, `fc.*` -> the DeepLab backbone (`fc` is dropped);
  * a torchvision `deeplabv3_resnet*` model (DatasetGAN's `deeplab_epoch_*.pth` holds one
    under 'model_state_dict'): `backbone.*` + `classifier.*` -> the whole network
    (`aux_classifier.*` is dropped).

Layouts: conv weights [out, in, kh, kw] -> HWIO kernels; BatchNorm weight/bias ->
scale/bias (params), running_mean/running_var -> mean/var (batch_stats);
num_batches_tracked is dropped. Names follow dgan_jax/downstream/deeplab.py.

DST holds `resnet.json` (format, arch, what it contains, what was dropped) and
`params.npz` (flat '/'-joined names: 'params/backbone/conv1/kernel',
'batch_stats/backbone/bn1/mean', ...), read by `deeplab.load_converted`.
"""

import os
import re

import numpy as np

import convert_weights
from convert_weights import safe_load
from dgan_jax import io
from dgan_jax.downstream import deeplab
from dgan_jax.generators import checkpoint
from dgan_jax.generators.checkpoint import CheckpointError


def _conv(w):  # PyTorch [out, in, kh, kw] -> [kh, kw, in, out]
  return w.transpose(2, 3, 1, 0)


def _same(w):
  return w


def to_torch(transform):
  """The inverse of a name map's layout transform (ours -> PyTorch's), for exporting
  (dgan_jax/export.py reads these name maps backwards)."""
  return {_conv: lambda w: w.transpose(3, 2, 0, 1), _same: _same}[transform]


def _batch_norm_names(src: str, dst: str) -> dict[str, tuple[str, callable]]:
  return {f'{src}.weight': (f'params/{dst}/scale', _same),
          f'{src}.bias': (f'params/{dst}/bias', _same),
          f'{src}.running_mean': (f'batch_stats/{dst}/mean', _same),
          f'{src}.running_var': (f'batch_stats/{dst}/var', _same)}


def _conv_bn_names(conv_src: str, bn_src: str, dst: str) -> dict:
  names = {f'{conv_src}.weight': (f'params/{dst}/conv/kernel', _conv)}
  names.update(_batch_norm_names(bn_src, f'{dst}/bn'))
  return names


def backbone_name_map(stage_sizes, prefix: str = '') -> dict[str, tuple[str, callable]]:
  """torchvision ResNet name (with `prefix`) -> (our flat name, layout transform)."""
  names = {f'{prefix}conv1.weight': ('params/backbone/conv1/kernel', _conv)}
  names.update(_batch_norm_names(f'{prefix}bn1', 'backbone/bn1'))
  for i, size in enumerate(stage_sizes, start=1):
    for j in range(size):
      src, dst = f'{prefix}layer{i}.{j}', f'backbone/layer{i}_{j}'
      for k in (1, 2, 3):
        names[f'{src}.conv{k}.weight'] = (f'params/{dst}/conv{k}/kernel', _conv)
        names.update(_batch_norm_names(f'{src}.bn{k}', f'{dst}/bn{k}'))
      if j == 0:
        names[f'{src}.downsample.0.weight'] = (f'params/{dst}/downsample_conv/kernel', _conv)
        names.update(_batch_norm_names(f'{src}.downsample.1', f'{dst}/downsample_bn'))
  return names


def head_name_map(num_rates: int) -> dict[str, tuple[str, callable]]:
  """torchvision DeepLabHead names (`classifier.*`) -> (our flat name, transform)."""
  aspp, dst = 'classifier.0', 'classifier/aspp'
  names = _conv_bn_names(f'{aspp}.convs.0.0', f'{aspp}.convs.0.1', f'{dst}/branch0')
  for k in range(1, num_rates + 1):
    names.update(_conv_bn_names(f'{aspp}.convs.{k}.0', f'{aspp}.convs.{k}.1',
                                f'{dst}/branch{k}'))
  pool = f'{aspp}.convs.{num_rates + 1}'   # AdaptiveAvgPool2d, conv, bn, relu
  names.update(_conv_bn_names(f'{pool}.1', f'{pool}.2', f'{dst}/pooling'))
  names.update(_conv_bn_names(f'{aspp}.project.0', f'{aspp}.project.1', f'{dst}/project'))
  names.update(_conv_bn_names('classifier.1', 'classifier.2', 'classifier/block'))
  names['classifier.4.weight'] = ('params/classifier/out/kernel', _conv)
  names['classifier.4.bias'] = ('params/classifier/out/bias', _same)
  return names


def _apply_name_map(state: dict[str, np.ndarray], names: dict, source: str,
                    what: str) -> dict[str, np.ndarray]:
  checkpoint.check_source_keys([k for k in names if k not in state],
                               [k for k in state if k not in names], source,
                               f'torchvision {what}')
  return {dst: np.asarray(transform(state[src]), np.float32)
          for src, (dst, transform) in names.items()}


def from_torch_state_dict(state: dict[str, np.ndarray], source: str = 'state dict',
                          aspp_rates: tuple[int, ...] | None = None):
  """-> (arch, flat arrays, info). `arch` has num_classes 0 for a bare backbone."""
  state = {re.sub(r'^(module\.)+', '', k): np.asarray(v) for k, v in state.items()}
  dropped = sorted(k for k in state if k.endswith('num_batches_tracked'))
  if any(k.startswith('backbone.') for k in state):
    prefix, contains = 'backbone.', 'deeplabv3'
    dropped += sorted(k for k in state if k.startswith('aux_classifier.'))
  elif 'conv1.weight' in state:
    prefix, contains = '', 'backbone'
    dropped += sorted(k for k in state if k.startswith('fc.'))
  else:
    raise CheckpointError(f'{source}: neither a torchvision ResNet (conv1.weight, layer1.*) '
                          f'nor a DeepLabV3 (backbone.*, classifier.*); first keys are '
                          f'{list(state)[:4]}')
  state = {k: v for k, v in state.items() if k not in set(dropped)}
  blocks = {}
  for k in state:
    if m := re.match(rf'{re.escape(prefix)}layer(\d+)\.(\d+)\.', k):
      stage, block = int(m.group(1)), int(m.group(2))
      blocks[stage] = max(blocks.get(stage, 0), block + 1)
  if not blocks or sorted(blocks) != list(range(1, len(blocks) + 1)):
    raise CheckpointError(f'{source}: stages {sorted(blocks)} found; expected layer1, '
                          'layer2, ... in order')
  if f'{prefix}layer1.0.conv3.weight' not in state:
    raise CheckpointError(f'{source}: layer1.0 has no conv3: a basic-block ResNet '
                          '(resnet18/34); DeepLabV3 here uses bottleneck ResNets (50, 101, 152)')
  stage_sizes = tuple(blocks[i] for i in range(1, len(blocks) + 1))
  width = int(state[f'{prefix}conv1.weight'].shape[0])
  names = backbone_name_map(stage_sizes, prefix)
  num_classes, aspp_channels = 0, 256
  if contains == 'deeplabv3':
    branches = {int(m.group(1)) for k in state
                if (m := re.match(r'classifier\.0\.convs\.(\d+)\.', k))}
    num_rates = len(branches) - 2
    if num_rates < 0 or 'classifier.4.weight' not in state:
      raise CheckpointError(f'{source}: classifier.* is not a torchvision DeepLabHead '
                            '(ASPP convs, classifier.4 output conv)')
    names.update(head_name_map(num_rates))
    num_classes = int(state['classifier.4.weight'].shape[0])
    aspp_channels = int(state['classifier.4.weight'].shape[1])
    if aspp_rates is None:
      aspp_rates = (12, 24, 36) if num_rates == 3 else None
    if aspp_rates is None or len(aspp_rates) != num_rates:
      raise CheckpointError(f'{source}: the ASPP has {num_rates} dilated branches; give '
                            'their rates with --aspp-rates (weights do not store them)')
  flat = _apply_name_map(state, names, source, 'DeepLabV3' if prefix else 'ResNet')
  arch = deeplab.DeepLabArch(num_classes=max(num_classes, 1), stage_sizes=stage_sizes,
                             width=width, aspp_rates=tuple(aspp_rates or (12, 24, 36)),
                             aspp_channels=aspp_channels)
  expected = {k: v for k, v in deeplab.variable_shapes(arch).items()
              if contains == 'deeplabv3' or '/backbone/' in k}
  checkpoint.check_names_and_shapes(flat, expected, source)
  info = {'contains': contains, 'dropped': dropped}
  return arch, flat, info


def convert(src: str, dst: str, aspp_rates: tuple[int, ...] | None = None) -> dict:
  """Converts the torchvision state dict SRC into the directory DST (atomically).

  Returns the record written to DST/resnet.json.
  """
  arch, flat, info = from_torch_state_dict(safe_load.load_torch_state_dict(src), src,
                                           aspp_rates)
  record = {'format': deeplab.CONVERTED_FORMAT, 'format_version': 1,
            'arch': arch.to_json(), 'source': os.path.abspath(src), **info}
  if info['contains'] == 'backbone':
    record['arch'].update(num_classes=0)
  checkpoint.check_finite(flat, src)
  dst = os.path.abspath(dst)
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  with io.atomic_dir(dst) as tmp:
    np.savez(os.path.join(tmp, 'params.npz'), **flat)
    io.write_json(os.path.join(tmp, 'resnet.json'), record)
  return record


OUTPUT_META = 'resnet.json'
HELP = 'torchvision ResNet (DeepLab backbone) or DeepLabV3 state dict'


def add_arguments(parser) -> None:
  parser.add_argument('src')
  parser.add_argument('dst')
  parser.add_argument('--aspp-rates', type=convert_weights.positive_ints, help='DeepLabV3 only: comma-separated ASPP dilation '
                      "rates (weights do not store them; default torchvision's 12,24,36)")


def run(args) -> str:
  info = convert(args.src, args.dst, args.aspp_rates)
  arch = info['arch']
  return (f'wrote {args.dst} ({info["contains"]}: stage_sizes {tuple(arch["stage_sizes"])}, '
          f'width {arch["width"]}; dropped {len(info["dropped"])} keys)')
