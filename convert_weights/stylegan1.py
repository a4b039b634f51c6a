"""StyleGAN (v1) weights -> dgan_jax generator directory.

Two sources, one name map each:
  * DatasetGAN's PyTorch port (`*.for_g_all.pt`): `g_mapping.*`, `g_synthesis.*`,
    PyTorch layouts ([out, in] linear, [out, in, kh, kw] conv, NCHW const);
  * NVIDIA's TF pickle (`karras2019stylegan-*.pkl`): Gs's `mapping`/`synthesis`
    variables, TF layouts ([in, out] dense, [kh, kw, in, out] conv, NCHW const).
"""

import math
import os
import re

import numpy as np

from dgan_jax.generators import checkpoint
from dgan_jax.generators import style
from dgan_jax.generators import stylegan1
from dgan_jax.generators.checkpoint import CheckpointError
from convert_weights import safe_load
from convert_weights import style as style_converter

NVIDIA_FMAP_BASE = 8192


def _linear(w):  # PyTorch [out, in] -> [in, out]
  return w.T


def _conv(w):  # PyTorch [out, in, kh, kw] -> [kh, kw, in, out]
  return w.transpose(2, 3, 1, 0)


def _const(w):  # [1, C, 4, 4] -> [4, 4, C]
  return w[0].transpose(1, 2, 0)


def _same(w):
  return w


def infer_arch(resolution: int, channels: dict[int, int], latent_size: int,
               dlatent_size: int, mapping_layers: int, mapping_fmaps: int,
               instance_norm_eps: float, source: str) -> stylegan1.StyleGAN1Arch:
  """Finds fmap_base/fmap_max reproducing the per-resolution channel counts."""
  fmap_max = max(channels.values())
  smaller = [r for r in sorted(channels) if channels[r] < fmap_max]
  if smaller:
    fmap_base = channels[smaller[0]] * 2 ** (int(math.log2(smaller[0])) - 1)
  else:
    fmap_base = max(NVIDIA_FMAP_BASE, fmap_max * resolution // 2)
  arch = stylegan1.StyleGAN1Arch(
      resolution=resolution, fmap_base=fmap_base, fmap_max=fmap_max, latent_size=latent_size,
      dlatent_size=dlatent_size, mapping_layers=mapping_layers, mapping_fmaps=mapping_fmaps,
      instance_norm_eps=instance_norm_eps)
  got = {r: arch.channels(r) for r in channels}
  if got != channels:
    raise CheckpointError(f'{source}: channel counts per resolution {channels} do not follow '
                          'min(fmap_base / 2**stage, fmap_max)')
  return arch


def _torch_name_map(arch: stylegan1.StyleGAN1Arch) -> dict[str, tuple[str, callable]]:
  """DatasetGAN PyTorch name -> (our name, layout transform)."""
  names = {}
  for i in range(arch.mapping_layers):
    names[f'g_mapping.dense{i}.weight'] = (f'mapping/dense{i}/weight', _linear)
    names[f'g_mapping.dense{i}.bias'] = (f'mapping/dense{i}/bias', _same)
  for res in arch.resolutions:
    src, dst = f'g_synthesis.blocks.{res}x{res}', f'synthesis/b{res}'
    if res == 4:
      names[f'{src}.const'] = (f'{dst}/const', _const)
      names[f'{src}.bias'] = (f'{dst}/bias', _same)
      convs = {'conv': 'conv'}
    else:
      convs = {'conv0_up': 'conv0_up', 'conv1': 'conv1'}
    for conv in convs:
      names[f'{src}.{conv}.weight'] = (f'{dst}/{conv}/weight', _conv)
      names[f'{src}.{conv}.bias'] = (f'{dst}/{conv}/bias', _same)
    for epi in ('epi1', 'epi2'):
      names[f'{src}.{epi}.top_epi.noise.weight'] = (f'{dst}/{epi}/noise_strength', _same)
      names[f'{src}.{epi}.style_mod.lin.weight'] = (f'{dst}/{epi}/style/weight', _linear)
      names[f'{src}.{epi}.style_mod.lin.bias'] = (f'{dst}/{epi}/style/bias', _same)
  names['g_synthesis.torgb.weight'] = ('synthesis/torgb/weight', _conv)
  names['g_synthesis.torgb.bias'] = ('synthesis/torgb/bias', _same)
  return names


def _tf_name_map(arch: stylegan1.StyleGAN1Arch) -> dict[str, tuple[str, callable]]:
  """NVIDIA TF variable name ('mapping/...' or 'synthesis/...') -> (our name, transform)."""
  names = {}
  for i in range(arch.mapping_layers):
    for leaf in ('weight', 'bias'):
      names[f'mapping/Dense{i}/{leaf}'] = (f'mapping/dense{i}/{leaf}', _same)
  for res in arch.resolutions:
    src, dst = f'synthesis/{res}x{res}', f'synthesis/b{res}'
    if res == 4:
      names[f'{src}/Const/const'] = (f'{dst}/const', _const)
      layers = (('Const', None, 'epi1'), ('Conv', 'conv', 'epi2'))
    else:
      layers = (('Conv0_up', 'conv0_up', 'epi1'), ('Conv1', 'conv1', 'epi2'))
    for tf_layer, conv, epi in layers:
      if conv:
        names[f'{src}/{tf_layer}/weight'] = (f'{dst}/{conv}/weight', _same)
      names[f'{src}/{tf_layer}/bias'] = (f'{dst}/{conv}/bias' if conv else f'{dst}/bias', _same)
      names[f'{src}/{tf_layer}/Noise/weight'] = (f'{dst}/{epi}/noise_strength', _same)
      names[f'{src}/{tf_layer}/StyleMod/weight'] = (f'{dst}/{epi}/style/weight', _same)
      names[f'{src}/{tf_layer}/StyleMod/bias'] = (f'{dst}/{epi}/style/bias', _same)
  names['synthesis/ToRGB_lod0/weight'] = ('synthesis/torgb/weight', _same)
  names['synthesis/ToRGB_lod0/bias'] = ('synthesis/torgb/bias', _same)
  return names


def _apply_name_map(source_arrays: dict[str, np.ndarray], names: dict, source: str,
                    ignore=lambda name: False) -> dict:
  present = {k: v for k, v in source_arrays.items() if not ignore(k)}
  checkpoint.check_source_keys([k for k in names if k not in present],
                               [k for k in present if k not in names], source,
                               'StyleGAN (v1) checkpoint')
  try:
    return {dst: np.asarray(transform(present[src]), np.float32)
            for src, (dst, transform) in names.items()}
  except (ValueError, IndexError) as e:
    raise CheckpointError(f'{source}: a weight of the wrong rank ({e})') from None


def from_torch_state_dict(state_dict: dict[str, np.ndarray], source: str = 'state dict'):
  """DatasetGAN `g_all` state dict -> (arch, flat params, avg_latent or None).

  Accepts `module.` prefixes (DataParallel); ignores the fixed blur kernels.
  """
  state_dict = {re.sub(r'^(module\.)+', '', k): np.asarray(v) for k, v in state_dict.items()}
  blocks = {int(m.group(1)): k for k in state_dict
            if (m := re.match(r'g_synthesis\.blocks\.(\d+)x\1\.', k))}
  missing = [what for what, found in (('g_mapping.dense0.weight',
                                        'g_mapping.dense0.weight' in state_dict),
                                       ('g_synthesis.blocks.{r}x{r}.*', bool(blocks)))
             if not found]
  if missing:
    raise CheckpointError(f'{source}: not a DatasetGAN StyleGAN (v1) state dict: no '
                          f'{" and no ".join(missing)} keys (first keys: '
                          f'{list(state_dict)[:4]})')
  resolution = max(blocks)
  channels = {}
  for res in blocks:
    prefix = f'g_synthesis.blocks.{res}x{res}.'
    for name, axis in (('epi2.top_epi.noise.weight', 0), ('epi1.top_epi.noise.weight', 0),
                       ('conv1.weight', 0), ('conv.weight', 0), ('conv0_up.weight', 0),
                       ('const', 1)):
      if prefix + name in state_dict:
        channels[res] = int(state_dict[prefix + name].shape[axis])
        break
    else:
      raise CheckpointError(f'{source}: block {res}x{res} has none of its weights')
  dense = sorted(int(m.group(1)) for k in state_dict
                 if (m := re.match(r'g_mapping\.dense(\d+)\.weight$', k)))
  arch = infer_arch(resolution, channels,
                    latent_size=state_dict['g_mapping.dense0.weight'].shape[1],
                    dlatent_size=state_dict[f'g_mapping.dense{dense[-1]}.weight'].shape[0],
                    mapping_layers=len(dense),
                    mapping_fmaps=state_dict['g_mapping.dense0.weight'].shape[0],
                    instance_norm_eps=1e-5, source=source)
  ignore = lambda k: k.endswith('intermediate.kernel') or k == 'truncation.avg_latent'
  flat = _apply_name_map(state_dict, _torch_name_map(arch), source, ignore)
  checkpoint.check_names_and_shapes(flat, stylegan1.param_shapes(arch), source)
  avg = state_dict.get('truncation.avg_latent')
  if avg is not None:
    style.check_extras(arch, avg, None, source)
  return arch, flat, avg


def from_tf_networks(gs: safe_load.TFNetworkStub, source: str = 'Gs'):
  """Gs network (TF pickle) -> (arch, flat params, avg_latent, const noise list)."""
  variables, own, kwargs = safe_load.tf_generator_variables(gs, source)
  blocks = {int(m.group(1)) for k in variables
            if (m := re.match(r'synthesis/(\d+)x\1/', k))}
  dense = sorted(int(m.group(1)) for k in variables
                 if (m := re.match(r'mapping/Dense(\d+)/weight$', k)))
  if not blocks or not dense:
    raise CheckpointError(f'{source}: no synthesis blocks or mapping Dense layers found')
  resolution = max(blocks)
  try:
    channels = {4: int(variables['synthesis/4x4/Const/const'].shape[1])}
    for res in blocks - {4}:
      channels[res] = int(variables[f'synthesis/{res}x{res}/Conv1/weight'].shape[-1])
    sizes = dict(latent_size=variables['mapping/Dense0/weight'].shape[0],
                 dlatent_size=variables[f'mapping/Dense{dense[-1]}/weight'].shape[1],
                 mapping_fmaps=variables['mapping/Dense0/weight'].shape[1])
  except KeyError as e:
    raise CheckpointError(f'{source}: not a StyleGAN (v1) Gs; no variable {e}') from None
  except IndexError:
    raise CheckpointError(f'{source}: a StyleGAN (v1) weight of the wrong rank') from None
  arch = infer_arch(resolution, channels, mapping_layers=len(dense), instance_norm_eps=1e-8,
                    source=source, **sizes)
  if kwargs.get('resolution', resolution) != resolution:
    raise CheckpointError(f'{source}: static_kwargs resolution {kwargs["resolution"]} != '
                          f'{resolution} found in the variables')
  num_noise = arch.num_ws
  ignore = lambda k: (k == 'synthesis/lod' or re.match(r'synthesis/ToRGB_lod[1-9]', k)
                      or re.match(r'synthesis/noise\d+$', k))
  flat = _apply_name_map(variables, _tf_name_map(arch), source, ignore)
  checkpoint.check_names_and_shapes(flat, stylegan1.param_shapes(arch), source)
  noise = None
  if all(f'synthesis/noise{j}' in variables for j in range(num_noise)):
    noise = [variables[f'synthesis/noise{j}'].transpose(0, 2, 3, 1) for j in range(num_noise)]
  avg = own.get('dlatent_avg')
  if avg is not None:
    style.check_extras(arch, avg, None, source)
  return arch, flat, avg, noise


def convert(src: str, dst: str, avg_latent_path: str | None = None, noise_seed: int = 0) -> dict:
  """Converts SRC (.pt state dict or TF .pkl) into the generator directory DST.

  Returns the info record written to DST/generator.json.
  """
  safe_load.check_file(src)
  if src.endswith('.pkl') and not safe_load.is_zip(src):
    _, _, gs = safe_load.load_tf_pickle(src)
    arch, flat, avg, noise = from_tf_networks(gs, source=src)
    source_format = 'nvidia-tf-pickle'
  else:
    arch, flat, avg = from_torch_state_dict(safe_load.load_torch_state_dict(src), source=src)
    noise = None
    source_format = 'datasetgan-pytorch'
  info = {'source': os.path.abspath(src), 'source_format': source_format}
  return style_converter.save(dst, arch, flat, avg, noise, info, avg_latent_path, noise_seed)


OUTPUT_META = 'generator.json'
HELP = 'StyleGAN (v1): DatasetGAN .pt or NVIDIA TF .pkl'


def add_arguments(parser) -> None:
  style_converter.add_arguments(parser, '.npy average W, [512] or [num_ws, 512] '
                                "(DatasetGAN's avg_latent_stylegan1.npy); TF pickles carry "
                                'their own')


def run(args) -> str:
  info = convert(args.src, args.dst, args.avg_latent, args.noise_seed)
  return (f'wrote {args.dst} ({info["source_format"]}; const noise {info["const_noise"]}; '
          f'avg_latent {info["avg_latent"]})')
