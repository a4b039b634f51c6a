"""BigGAN weights -> dgan_jax generator directory.

Two layouts, one name map each:
  * BigGAN-PyTorch's `Generator` state dict (BigDatasetGAN's `biggan-512.pth`):
    `shared.weight`, `linear.*`, `blocks.{i}.0.*` (residual block i), `blocks.{i}.1.*`
    (its attention), `output_layer.{0,2}.*`. Spectral norm keeps the raw weight and
    the singular-vector buffer `u0`; eval mode runs one power iteration from u0
    (without storing the result) and divides by the singular value it yields.
  * BigGAN-deep of the `pytorch-pretrained-biggan` package (`pytorch_model.bin`, with
    `config.json` beside it): `embeddings.weight`, `generator.*`, spectral norm as
    torch.nn.utils.spectral_norm's `weight_orig`, `weight_u`, `weight_v`; eval mode
    divides by u . (W v) with the stored vectors.
Both fold W / sigma at conversion, as eval mode computes it.
"""

import dataclasses
import json
import os
import re
from typing import Callable

import numpy as np

from dgan_jax.generators import biggan
from dgan_jax.generators import biggan_deep
from dgan_jax.generators import checkpoint
from dgan_jax.generators.checkpoint import CheckpointError
import convert_weights
from convert_weights import safe_load

# Spectral-norm epsilon of BigDatasetGAN's BigGAN config (SN_eps); it only matters when
# a singular vector is (nearly) zero.
DEFAULT_SN_EPS = 1e-4
DEFAULT_BN_EPS = 1e-4  # BN_eps of BigDatasetGAN's config; the BigGANConfig default too
DEEP_WEIGHTS_NAME = 'pytorch_model.bin'
DEEP_CONFIG_NAME = 'config.json'

# our name -> (source names, function of those arrays giving ours)
NameMap = dict[str, tuple[tuple[str, ...], Callable[..., np.ndarray]]]


def fold_power_iteration(weight: np.ndarray, u0: np.ndarray, eps: float) -> np.ndarray:
  """BigGAN-PyTorch's SN in eval mode: weight / sigma, sigma from one power iteration
  on weight viewed as [out, -1], starting at u0 [1, out]."""
  matrix = weight.reshape(weight.shape[0], -1).astype(np.float64)
  u = u0.reshape(1, -1).astype(np.float64)
  v = u @ matrix
  v = v / max(np.linalg.norm(v), eps)
  u = v @ matrix.T
  u = u / max(np.linalg.norm(u), eps)
  sigma = (v @ matrix.T @ u.T).item()
  return (weight / sigma).astype(np.float32)


def fold_stored_vectors(weight_orig: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """torch.nn.utils.spectral_norm in eval mode: weight / (u . (W v)), W = weight [out, -1]."""
  matrix = weight_orig.reshape(weight_orig.shape[0], -1).astype(np.float64)
  sigma = float(u.astype(np.float64) @ (matrix @ v.astype(np.float64)))
  return (weight_orig / sigma).astype(np.float32)


def _same(x):
  return x


def _linear(w):  # PyTorch [out, in] -> [in, out]
  return w.T


def _conv(w):  # PyTorch [out, in, kh, kw] -> [kh, kw, in, out]
  return w.transpose(2, 3, 1, 0)


def _scalar(x):
  return np.asarray(x).reshape(())


def _strip_module_prefix(state_dict: dict) -> dict:
  return {re.sub(r'^(module\.)+', '', k): np.asarray(v) for k, v in state_dict.items()}


def _require(state_dict: dict, names, source: str, what: str) -> None:
  missing = [n for n in names if n not in state_dict]
  if missing:
    raise CheckpointError(f'{source}: not a {what} state dict; missing {", ".join(missing)} '
                          f'(first keys are {list(state_dict)[:4]})')


def _apply_name_map(state_dict: dict, names: NameMap, source: str, what: str,
                    ignore=lambda name: False) -> dict[str, np.ndarray]:
  """Builds our flat params; CheckpointError naming every missing/unexpected source key."""
  wanted = [src for sources, _ in names.values() for src in sources]
  missing = [k for k in wanted if k not in state_dict]
  used = set(wanted)
  unexpected = [k for k in state_dict if k not in used and not ignore(k)]
  checkpoint.check_source_keys(missing, unexpected, source, f'{what} checkpoint')
  flat = {}
  for dst, (sources, transform) in names.items():
    try:
      flat[dst] = np.asarray(transform(*(state_dict[s] for s in sources)), np.float32)
    except ValueError as e:  # a reshape of an array with the wrong size
      raise CheckpointError(f'{source}: {", ".join(sources)}: unexpected shape '
                            f'{[tuple(state_dict[s].shape) for s in sources]} ({e})') from None
  return flat


# BigGAN-PyTorch.

BIGGAN_PYTORCH = 'BigGAN-PyTorch Generator'


def infer_biggan_arch(state_dict: dict, source: str, bn_eps: float) -> biggan.BigGANArch:
  """Resolution, G_ch, dim_z, hier, shared_dim, classes and attention from the shapes."""
  _require(state_dict, ('shared.weight', 'linear.weight', 'blocks.0.0.bn1.gain.weight'),
           source, BIGGAN_PYTORCH + ' (G_shared=True)')
  num_classes, shared_dim = state_dict['shared.weight'].shape
  blocks = sorted({int(m.group(1)) for k in state_dict
                   if (m := re.match(r'blocks\.(\d+)\.0\.', k))})
  if blocks != list(range(len(blocks))):
    raise CheckpointError(f'{source}: residual blocks are not numbered 0..n-1: {blocks}')
  resolution = biggan.BOTTOM_WIDTH * 2 ** len(blocks)
  if resolution not in biggan.CHANNEL_MULTIPLIERS:
    raise CheckpointError(f'{source}: {len(blocks)} blocks make {resolution} px; BigGAN-PyTorch '
                          f'has architectures for {sorted(biggan.CHANNEL_MULTIPLIERS)} px')
  last_conv = f'blocks.{len(blocks) - 1}.0.conv2.weight'
  _require(state_dict, (last_conv,), source, BIGGAN_PYTORCH)
  ch = state_dict[last_conv].shape[0] // biggan.CHANNEL_MULTIPLIERS[resolution][1][-1]
  attention = [biggan.BOTTOM_WIDTH * 2 ** (i + 1) for i in blocks
               if any(k.startswith(f'blocks.{i}.1.') for k in state_dict)]
  cond_dim = state_dict['blocks.0.0.bn1.gain.weight'].shape[1]
  linear_in = state_dict['linear.weight'].shape[1]
  hier = cond_dim != shared_dim
  if hier:
    dim_z = linear_in * (len(blocks) + 1)
    if cond_dim != shared_dim + linear_in:
      raise CheckpointError(f'{source}: batch-norm input width {cond_dim} is neither the '
                            f'class embedding ({shared_dim}) nor embedding + z chunk '
                            f'({shared_dim} + {linear_in})')
  else:
    dim_z = linear_in
  try:
    return biggan.BigGANArch(resolution=resolution, ch=ch, dim_z=dim_z, shared_dim=shared_dim,
                             num_classes=num_classes, attention_resolutions=tuple(attention),
                             hier=hier, bn_eps=bn_eps)
  except ValueError as e:
    raise CheckpointError(f'{source}: inconsistent architecture ({e})') from None


def _linear_to_hwc(channels: int):
  # BigGAN-PyTorch views the first linear layer's output as NCHW [B, C, 4, 4]; reorder
  # its output units to (h, w, c) so that it reshapes straight to NHWC.
  width = biggan.BOTTOM_WIDTH

  def weight(w):
    return w.T.reshape(-1, channels, width, width).transpose(0, 2, 3, 1).reshape(w.shape[1], -1)

  def bias(b):
    return b.reshape(channels, width, width).transpose(1, 2, 0).reshape(-1)

  return weight, bias


def biggan_name_map(arch: biggan.BigGANArch, sn_eps: float) -> NameMap:
  """BigGAN-PyTorch state-dict names -> ours."""
  def sn(prefix, layout):
    return ((f'{prefix}.weight', f'{prefix}.u0'),
            lambda w, u: layout(fold_power_iteration(w, u, sn_eps)))

  linear_weight, linear_bias = _linear_to_hwc(arch.block_channels[0][0])
  names = {'shared/embedding': (('shared.weight',), _same),
           'linear/weight': sn('linear', linear_weight),
           'linear/bias': (('linear.bias',), linear_bias)}
  for i in range(arch.num_blocks):
    src, dst = f'blocks.{i}.0', f'block{i}'
    for bn in ('bn1', 'bn2'):
      names[f'{dst}/{bn}/mean'] = ((f'{src}.{bn}.stored_mean',), _same)
      names[f'{dst}/{bn}/var'] = ((f'{src}.{bn}.stored_var',), _same)
      names[f'{dst}/{bn}/gain_kernel'] = sn(f'{src}.{bn}.gain', _linear)
      names[f'{dst}/{bn}/bias_kernel'] = sn(f'{src}.{bn}.bias', _linear)
    for conv in ('conv1', 'conv2', 'conv_sc'):
      names[f'{dst}/{conv}/weight'] = sn(f'{src}.{conv}', _conv)
      names[f'{dst}/{conv}/bias'] = ((f'{src}.{conv}.bias',), _same)
    if arch.has_attention(i):
      src, dst = f'blocks.{i}.1', f'attention{i}'
      for conv in ('theta', 'phi', 'g', 'o'):
        names[f'{dst}/{conv}/weight'] = sn(f'{src}.{conv}', _conv)
      names[f'{dst}/gamma'] = ((f'{src}.gamma',), _scalar)
  names['output/bn/mean'] = (('output_layer.0.stored_mean',), _same)
  names['output/bn/var'] = (('output_layer.0.stored_var',), _same)
  names['output/bn/gain'] = (('output_layer.0.gain',), _same)
  names['output/bn/bias'] = (('output_layer.0.bias',), _same)
  names['output/conv/weight'] = sn('output_layer.2', _conv)
  names['output/conv/bias'] = (('output_layer.2.bias',), _same)
  return names


def _ignored_biggan_buffer(name: str) -> bool:
  # sv{i}: logged singular values (BigDatasetGAN's biggan-512.pth omits them);
  # u{i}, i >= 1: further singular vectors, which do not change the first one's sigma.
  return bool(re.search(r'\.(sv\d+|u[1-9]\d*)$', name))


def from_biggan_state_dict(state_dict: dict, source: str = 'state dict',
                           sn_eps: float = DEFAULT_SN_EPS, bn_eps: float = DEFAULT_BN_EPS):
  """BigGAN-PyTorch `Generator` state dict -> (arch, flat params)."""
  state_dict = _strip_module_prefix(state_dict)
  arch = infer_biggan_arch(state_dict, source, bn_eps)
  flat = _apply_name_map(state_dict, biggan_name_map(arch, sn_eps), source, BIGGAN_PYTORCH,
                         ignore=_ignored_biggan_buffer)
  checkpoint.check_names_and_shapes(flat, biggan.param_shapes(arch), source)
  return arch, flat


# BigGAN-deep (pytorch-pretrained-biggan).

BIGGAN_DEEP = 'pytorch-pretrained-biggan BigGAN-deep'


def _deep_arch_from_config(config: dict, source: str) -> biggan_deep.BigGANDeepArch:
  try:
    return biggan_deep.BigGANDeepArch(
        ch=config['channel_width'], z_dim=config['z_dim'], num_classes=config['num_classes'],
        layers=tuple(tuple(layer) for layer in config['layers']),
        attention_position=(config['attention_layer_position']
                            if config['attention_layer_position'] < len(config['layers'])
                            else None),
        n_stats=config['n_stats'], eps=config['eps'])
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f'{source}: not a usable BigGANConfig ({type(e).__name__}: {e})'
                          ) from None


def infer_deep_arch(state_dict: dict, source: str, eps: float) -> biggan_deep.BigGANDeepArch:
  """The architecture from the shapes, assuming the released models' pattern: every
  second block (1, 3, 5, ...) upsamples."""
  _require(state_dict, ('embeddings.weight', 'generator.gen_z.weight_orig',
                        'generator.bn.running_means'), source, BIGGAN_DEEP)
  z_dim, num_classes = state_dict['embeddings.weight'].shape
  ch = state_dict['generator.gen_z.weight_orig'].shape[0] // (4 * 4 * 16)
  indices = sorted({int(m.group(1)) for k in state_dict
                    if (m := re.match(r'generator\.layers\.(\d+)\.', k))})
  attention = [k for k in indices if f'generator.layers.{k}.gamma' in state_dict]
  if len(attention) > 1:
    raise CheckpointError(f'{source}: attention at layers {attention}; the package builds one')
  blocks = [k for k in indices if k not in attention]
  layers = []
  reduction = None
  for i, k in enumerate(blocks):
    conv0 = f'generator.layers.{k}.conv_0.weight_orig'
    conv3 = f'generator.layers.{k}.conv_3.weight_orig'
    _require(state_dict, (conv0, conv3), source, BIGGAN_DEEP)
    c_mid, c_in = state_dict[conv0].shape[:2]
    c_out = state_dict[conv3].shape[0]
    if c_in % ch or c_out % ch:
      raise CheckpointError(f'{source}: block {k} channels {c_in} -> {c_out} are not '
                            f'multiples of the channel width {ch}')
    reduction = reduction or c_in // c_mid
    layers.append((i % 2 == 1, c_in // ch, c_out // ch))
  n_stats = state_dict['generator.bn.running_means'].shape[0]
  try:
    return biggan_deep.BigGANDeepArch(
        ch=ch, z_dim=z_dim, num_classes=num_classes, layers=tuple(layers),
        attention_position=attention[0] if attention else None, n_stats=n_stats, eps=eps,
        reduction_factor=reduction or 4)
  except ValueError as e:
    raise CheckpointError(f'{source}: inconsistent architecture ({e})') from None


def deep_name_map(arch: biggan_deep.BigGANDeepArch) -> NameMap:
  """pytorch-pretrained-biggan state-dict names -> ours."""
  def sn(prefix, layout):
    return ((f'{prefix}.weight_orig', f'{prefix}.weight_u', f'{prefix}.weight_v'),
            lambda w, u, v: layout(fold_stored_vectors(w, u, v)))

  names = {'embedding/weight': (('embeddings.weight',), _linear),
           'linear/weight': sn('generator.gen_z', _linear),
           'linear/bias': (('generator.gen_z.bias',), _same)}
  for k, (kind, i) in enumerate(arch.modules):
    src = f'generator.layers.{k}'
    if kind == 'attention':
      for ours, theirs in (('theta', 'theta'), ('phi', 'phi'), ('g', 'g'), ('o', 'o_conv')):
        names[f'attention/{ours}/weight'] = sn(f'{src}.snconv1x1_{theirs}', _conv)
      names['attention/gamma'] = ((f'{src}.gamma',), _scalar)
      continue
    for j in range(4):
      bn, dst = f'{src}.bn_{j}', f'block{i}/bn{j}'
      names[f'{dst}/means'] = ((f'{bn}.running_means',), _same)
      names[f'{dst}/vars'] = ((f'{bn}.running_vars',), _same)
      names[f'{dst}/gain_kernel'] = sn(f'{bn}.scale', _linear)
      names[f'{dst}/bias_kernel'] = sn(f'{bn}.offset', _linear)
      names[f'block{i}/conv{j}/weight'] = sn(f'{src}.conv_{j}', _conv)
      names[f'block{i}/conv{j}/bias'] = ((f'{src}.conv_{j}.bias',), _same)
  names['output/bn/means'] = (('generator.bn.running_means',), _same)
  names['output/bn/vars'] = (('generator.bn.running_vars',), _same)
  names['output/bn/gain'] = (('generator.bn.weight',), _same)
  names['output/bn/bias'] = (('generator.bn.bias',), _same)
  # conv_to_rgb has `ch` outputs of which the package keeps the first 3; sigma is
  # that of the whole kernel, so fold before slicing.
  names['output/conv/weight'] = sn('generator.conv_to_rgb', lambda w: _conv(w)[..., :3])
  names['output/conv/bias'] = (('generator.conv_to_rgb.bias',), lambda b: b[:3])
  return names


def from_deep_state_dict(state_dict: dict, source: str = 'state dict',
                         config: dict | None = None, eps: float | None = None):
  """pytorch-pretrained-biggan state dict (+ its config.json as a dict) -> (arch, flat).

  Without `config`, the architecture is inferred from the shapes (see infer_deep_arch)
  and the batch-norm epsilon is `eps` (default 1e-4, BigGANConfig's).
  """
  state_dict = _strip_module_prefix(state_dict)
  if config is not None:
    arch = _deep_arch_from_config(config, source)
    if eps is not None:
      arch = dataclasses.replace(arch, eps=eps)
    if 'output_dim' in config and config['output_dim'] != arch.resolution:
      raise CheckpointError(f'{source}: config output_dim {config["output_dim"]} but its '
                            f'layers upsample to {arch.resolution}')
  else:
    arch = infer_deep_arch(state_dict, source, DEFAULT_BN_EPS if eps is None else eps)
  flat = _apply_name_map(state_dict, deep_name_map(arch), source, BIGGAN_DEEP)
  checkpoint.check_names_and_shapes(flat, biggan_deep.param_shapes(arch), source)
  return arch, flat


def _read_config(path: str) -> dict:
  try:
    with open(path, encoding='utf-8') as f:
      config = json.load(f)
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f'{path}: cannot read the BigGANConfig JSON ({e})') from None
  if not isinstance(config, dict):
    raise CheckpointError(f'{path}: expected a JSON object (a BigGANConfig)')
  return config


def convert(src: str, dst: str, config_path: str | None = None, bn_eps: float | None = None,
            sn_eps: float = DEFAULT_SN_EPS) -> dict:
  """Converts SRC into the generator directory DST; the layout is detected from the keys.

  SRC: a BigGAN-PyTorch `.pth` state dict, a pytorch-pretrained-biggan `.bin`, or a
  directory holding `pytorch_model.bin` (+ `config.json`). config_path: the deep
  model's config.json (default: beside the weights in a directory SRC). bn_eps: batch
  norm epsilon (default 1e-4, or the config's). sn_eps: BigGAN-PyTorch's SN_eps.
  Returns the info record written to DST/generator.json.
  """
  weights = src
  if os.path.isdir(src):
    weights = os.path.join(src, DEEP_WEIGHTS_NAME)
    if config_path is None and os.path.isfile(os.path.join(src, DEEP_CONFIG_NAME)):
      config_path = os.path.join(src, DEEP_CONFIG_NAME)
  state_dict = _strip_module_prefix(safe_load.load_torch_state_dict(weights))
  info = {'source': os.path.abspath(weights)}
  if 'embeddings.weight' in state_dict or any(k.startswith('generator.') for k in state_dict):
    config = None if config_path is None else _read_config(config_path)
    arch, flat = from_deep_state_dict(state_dict, weights, config, bn_eps)
    info['source_format'] = 'pytorch-pretrained-biggan'
    info['architecture_from'] = (os.path.abspath(config_path) if config_path else
                                 'inferred from shapes; blocks 1, 3, 5, ... upsample')
    summary = (f'BigGAN-deep {arch.resolution} px, ch {arch.ch}, z {arch.z_dim}, '
               f'{len(arch.layers)} blocks, attention before block {arch.attention_position}')
  elif 'shared.weight' in state_dict or any(k.startswith('blocks.') for k in state_dict):
    if config_path:
      raise CheckpointError(f'{weights}: --config is for pytorch-pretrained-biggan weights; '
                            'BigGAN-PyTorch architectures are read from the shapes')
    arch, flat = from_biggan_state_dict(state_dict, weights, sn_eps,
                                        DEFAULT_BN_EPS if bn_eps is None else bn_eps)
    info['source_format'] = 'biggan-pytorch'
    info['spectral_norm'] = f'one power iteration from u0, eps {sn_eps}'
    summary = (f'BigGAN {arch.resolution} px, G_ch {arch.ch}, dim_z {arch.dim_z}'
               f'{" (hierarchical)" if arch.hier else ""}, attention at '
               f'{list(arch.attention_resolutions)} px')
  else:
    raise CheckpointError(
        f'{weights}: neither a BigGAN-PyTorch generator (shared.weight, linear.*, blocks.*) '
        f'nor a pytorch-pretrained-biggan BigGAN-deep (embeddings.weight, generator.*); '
        f'first keys are {list(state_dict)[:4]}')
  info['summary'] = summary
  checkpoint.save(dst, arch.to_json(), checkpoint.unflatten(flat), {}, info)
  return info


OUTPUT_META = 'generator.json'
HELP = 'BigGAN: BigGAN-PyTorch .pth or pytorch-pretrained-biggan BigGAN-deep .bin'


def add_arguments(parser) -> None:
  parser.add_argument('src')
  parser.add_argument('dst')
  parser.add_argument('--config', help="BigGAN-deep only: the package's config.json (default: "
                      'config.json in a directory SRC; else inferred, blocks 1, 3, ... '
                      'upsample)')
  parser.add_argument('--bn-eps', type=convert_weights.positive_float, default=None,
                      help='batch-norm epsilon (default 1e-4, or the config.json value)')
  parser.add_argument('--sn-eps', type=convert_weights.positive_float, default=1e-4,
                      help='BigGAN-PyTorch SN_eps of the folded power iteration (default 1e-4)')


def run(args) -> str:
  info = convert(args.src, args.dst, args.config, args.bn_eps, args.sn_eps)
  return f'wrote {args.dst} ({info["source_format"]}; {info["summary"]})'
