"""DatasetGAN's trained interpreter (`model_{i}.pth`, one per member) -> one stacked ensemble.

Each file holds {'model_state_dict': state dict} of the original's pixel classifier,
saved through nn.DataParallel, so names read `module.layers.{k}.*`:
  layers.0  Linear(D, H1)        weight [H1, D], bias [H1]
  layers.2  BatchNorm1d(H1)      weight, bias, running_mean, running_var, num_batches_tracked
  layers.3  Linear(H1, H2)
  layers.5  BatchNorm1d(H2)
  layers.6  Linear(H2, C)
(layers 1 and 4 are ReLUs). The result is a directory `dgan_jax.interpreter.load` opens.
"""

import glob
import os
import re

import numpy as np

from convert_weights import safe_load
from dgan_jax import interpreter
from dgan_jax.generators.checkpoint import CheckpointError, unflatten

# Our name -> (original layer index, original field, layout change).
_NAME_MAP = {
    'params/linear0/weight': ('0', 'weight', np.transpose),
    'params/linear0/bias': ('0', 'bias', None),
    'params/norm0/scale': ('2', 'weight', None),
    'params/norm0/bias': ('2', 'bias', None),
    'batch_stats/norm0/mean': ('2', 'running_mean', None),
    'batch_stats/norm0/var': ('2', 'running_var', None),
    'params/linear1/weight': ('3', 'weight', np.transpose),
    'params/linear1/bias': ('3', 'bias', None),
    'params/norm1/scale': ('5', 'weight', None),
    'params/norm1/bias': ('5', 'bias', None),
    'batch_stats/norm1/mean': ('5', 'running_mean', None),
    'batch_stats/norm1/var': ('5', 'running_var', None),
    'params/linear2/weight': ('6', 'weight', np.transpose),
    'params/linear2/bias': ('6', 'bias', None),
}
_IGNORED = {'num_batches_tracked'}


def member_files(src: str) -> list[str]:
  """A directory -> its model_{i}.pth in member order (i = 0, 1, ... without gaps); a
  comma-separated list of files -> those files."""
  if os.path.isdir(src):
    found = {}
    for path in glob.glob(os.path.join(src, 'model_*.pth')):
      match = re.fullmatch(r'model_(\d+)\.pth', os.path.basename(path))
      if match:
        found[int(match.group(1))] = path
    if not found:
      raise CheckpointError(f'{src}: no model_{{i}}.pth files')
    missing = [i for i in range(max(found) + 1) if i not in found]
    if missing:
      raise CheckpointError(f'{src}: model_{missing[0]}.pth missing (members must be numbered '
                            f'0..{max(found)})')
    return [found[i] for i in range(max(found) + 1)]
  files = [p for p in src.split(',') if p]
  for path in files:
    if not os.path.isfile(path):
      raise CheckpointError(f'{path}: no such file')
  return files


def from_state_dicts(state_dicts: list[dict[str, np.ndarray]], sources: list[str]):
  """PyTorch state dicts (one per member) -> (InterpreterArch, params, batch_stats)."""
  members = []
  for state, source in zip(state_dicts, sources):
    layers = {}
    for name, value in state.items():
      match = re.fullmatch(r'(?:module\.)?layers\.(\d+)\.(\w+)', name)
      if not match:
        raise CheckpointError(f'{source}: unexpected entry {name!r} (expected '
                              'module.layers.{0,2,3,5,6}.*)')
      if match.group(2) not in _IGNORED:
        layers[(match.group(1), match.group(2))] = np.asarray(value, np.float32)
    flat = {}
    for ours, (index, field, change) in _NAME_MAP.items():
      if (index, field) not in layers:
        raise CheckpointError(f'{source}: missing module.layers.{index}.{field}')
      value = layers.pop((index, field))
      rank = 2 if ours.endswith('/weight') else 1
      if value.ndim != rank:
        raise CheckpointError(f'{source}: module.layers.{index}.{field} has shape '
                              f'{list(value.shape)}; expected {rank} dimension(s)')
      flat[ours] = change(value) if change is not None else value
    if layers:
      extra = ', '.join(f'layers.{i}.{f}' for i, f in sorted(layers))
      raise CheckpointError(f'{source}: unexpected entries {extra}')
    members.append(flat)
  first = members[0]
  feature_dim, _ = first['params/linear0/weight'].shape
  num_classes = first['params/linear2/bias'].shape[0]
  arch = interpreter.InterpreterArch(feature_dim=feature_dim, num_classes=num_classes,
                                     num_members=len(members))
  h1, h2 = first['params/linear0/weight'].shape[1], first['params/linear1/weight'].shape[1]
  if (h1, h2) != arch.hidden:
    raise CheckpointError(f'{sources[0]}: hidden sizes ({h1}, {h2}) but the original uses '
                          f'{arch.hidden} for {num_classes} classes')
  stacked = {}
  expected = arch.param_shapes()
  for name in _NAME_MAP:
    for member, source in zip(members, sources):
      if member[name].shape != expected[name][1:]:
        raise CheckpointError(f'{source}: {name} has shape {member[name].shape}, member 0 '
                              f'implies {expected[name][1:]}')
    stacked[name] = np.stack([member[name] for member in members])
  tree = unflatten(stacked)
  return arch, tree['params'], tree['batch_stats']


def convert(src: str, dst: str) -> dict:
  """Reads the member files of `src` (see member_files) and writes the ensemble to dst."""
  files = member_files(src)
  state_dicts = [safe_load.load_torch_state_dict(path) for path in files]
  arch, params, batch_stats = from_state_dicts(state_dicts, files)
  info = {'source': [os.path.basename(p) for p in files], 'source_format': 'datasetgan_pth'}
  interpreter.save(dst, arch, params, batch_stats, info)
  return {'members': arch.num_members, 'feature_dim': arch.feature_dim,
          'num_classes': arch.num_classes}


OUTPUT_META = 'interpreter.json'
HELP = "DatasetGAN's model_{i}.pth pixel classifiers -> one stacked ensemble"


def add_arguments(parser) -> None:
  parser.add_argument('src', help='folder with model_0.pth, model_1.pth, ... or a '
                      'comma-separated list of .pth files')
  parser.add_argument('dst')


def run(args) -> str:
  info = convert(args.src, args.dst)
  return (f'wrote {args.dst} ({info["members"]} members, {info["feature_dim"]} features, '
          f'{info["num_classes"]} classes)')
