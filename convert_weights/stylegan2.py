"""StyleGAN2 / StyleGAN2-ADA weights -> dgan_jax generator directory, from three formats,
each read as data (nothing stored in the file runs):

  * a stylegan2-ada-pytorch pickle (`network-snapshot-*.pkl`, NVIDIA's NGC models): its
    networks are `torch_utils.persistence` objects carrying their class's source code,
    which NVIDIA's loader executes. Here they become inert `PersistentRecord`s (class
    name + state), tensors are rebuilt from their bytes with numpy, and every other
    global is refused. `G_ema` is converted; its state dict names are ours with '/'.
  * an NVIDIA TensorFlow StyleGAN2 pickle (`stylegan2-car-config-f.pkl`, ...): Gs's
    variables, TF layouts ([in, out] dense, [kh, kw, in, out] conv; `mod_bias` stored
    without its +1; `Conv0_up` spatially flipped; `fmap_base` half of `channel_base`).
  * a rosinality stylegan2-pytorch `.pt` (EditGAN's and HandsOff's generators): the
    converted `{'g_ema', 'latent_avg'}` form or a training checkpoint (`args` is an
    argparse.Namespace, allowed as data); equalised-lr scales applied at run time, as ours.
"""

import argparse
import dataclasses
import io
import os
import pickle
import re
import struct

import numpy as np

from dgan_jax.generators import checkpoint
from dgan_jax.generators import style
from dgan_jax.generators import stylegan2
from dgan_jax.generators.checkpoint import CheckpointError
from convert_weights import safe_load
from convert_weights import style as style_converter

WHAT = 'StyleGAN2 checkpoint'


# ----------------------------------------------------------------------------------------
# stylegan2-ada-pytorch pickles, as data.

@dataclasses.dataclass
class PersistentRecord:
  """An unpickled `torch_utils.persistence` object: its class name and `__dict__`; its
  stored source (`module_src`) is dropped unread."""
  class_name: str
  state: dict


def _persistent_record(meta):
  if not (isinstance(meta, dict) and meta.get('type') == 'class'
          and isinstance(meta.get('class_name'), str) and isinstance(meta.get('state'), dict)):
    raise pickle.UnpicklingError('a persistent object that is not a (class, state) record')
  return PersistentRecord(meta['class_name'], meta['state'])


_STORAGE_DTYPES = {'FloatStorage': np.float32, 'HalfStorage': np.float16,
                   'DoubleStorage': np.float64, 'LongStorage': np.int64,
                   'IntStorage': np.int32, 'ShortStorage': np.int16, 'CharStorage': np.int8,
                   'ByteStorage': np.uint8, 'BoolStorage': np.bool_}


class _StorageRef:
  """A storage named by a legacy torch.save stream, filled from its trailing bytes."""

  def __init__(self, dtype, numel: int):
    self.dtype, self.numel, self.array = np.dtype(dtype), numel, None


class _StorageUnpickler(pickle.Unpickler):
  """The pickles inside a legacy torch.save stream of one storage: torch.<X>Storage names
  a dtype, persistent ids name storages; nothing else is allowed."""

  def __init__(self, f):
    super().__init__(f)
    self.storages: dict[str, _StorageRef] = {}

  def find_class(self, module, name):
    if module == 'torch' and name in _STORAGE_DTYPES:
      return _STORAGE_DTYPES[name]
    raise pickle.UnpicklingError(f'refusing to load class {module}.{name} inside a tensor')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == 'storage'
            and isinstance(pid[2], str) and isinstance(pid[4], int) and pid[4] >= 0):
      raise pickle.UnpicklingError('a tensor storage with an unreadable header')
    return self.storages.setdefault(pid[2], _StorageRef(pid[1], pid[4]))


def _storage_from_bytes(data: bytes) -> np.ndarray:
  """torch.storage._load_from_bytes without torch: a legacy torch.save stream (magic,
  protocol, system info, the storage's pickle, its key list, then per key an int64 count
  and the raw little-endian elements) -> 1-D numpy array."""
  f = io.BytesIO(data)
  unpickler = _StorageUnpickler(f)
  for _ in range(3):   # magic number, protocol version, system info
    unpickler.load()
  ref = unpickler.load()
  keys = unpickler.load()
  if not isinstance(ref, _StorageRef) or not isinstance(keys, list):
    raise pickle.UnpicklingError('a tensor storage stream without its storage')
  for key in keys:
    target = unpickler.storages.get(key)
    (count,) = struct.unpack('<q', f.read(8))
    if target is None or count != target.numel:
      raise pickle.UnpicklingError('a tensor storage whose size does not match its header')
    raw = f.read(count * target.dtype.itemsize)
    if len(raw) != count * target.dtype.itemsize:
      raise pickle.UnpicklingError('a truncated tensor storage')
    target.array = np.frombuffer(raw, target.dtype.newbyteorder('<')).astype(target.dtype)
  if ref.array is None:
    raise pickle.UnpicklingError('a tensor storage without its data')
  return ref.array


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """torch._utils._rebuild_tensor_v2 -> numpy array (a bounds-checked strided view)."""
  del unused
  if not (isinstance(storage, np.ndarray) and isinstance(offset, int)
          and all(isinstance(v, int) and v >= 0 for v in (*size, *stride))
          and len(size) == len(stride)):
    raise pickle.UnpicklingError('a tensor with an unreadable layout')
  if 0 in size:
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if offset < 0 or last >= storage.size:
    raise pickle.UnpicklingError('a tensor that reaches outside its storage')
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], shape=tuple(size),
      strides=tuple(s * storage.itemsize for s in stride), writeable=False)
  return np.array(view)


ADA_GLOBALS = {
    ('torch_utils.persistence', '_reconstruct_persistent_obj'): _persistent_record,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): lambda data, *unused: data,
    ('torch._utils', '_rebuild_parameter_with_state'): lambda data, *unused: data,
    ('torch.storage', '_load_from_bytes'): _storage_from_bytes,
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
}


def module_state_dict(record: PersistentRecord, prefix: str = '') -> dict[str, np.ndarray]:
  """A module record -> its state dict (parameters and buffers of it and its submodules)."""
  out = {}
  for group in ('_parameters', '_buffers'):
    for name, value in (record.state.get(group) or {}).items():
      if value is not None:
        out[prefix + name] = value
  for name, sub in (record.state.get('_modules') or {}).items():
    if isinstance(sub, PersistentRecord):
      out.update(module_state_dict(sub, f'{prefix}{name}.'))
  return out


def _resample_filter_ok(f) -> bool:
  taps = np.asarray(stylegan2.RESAMPLE_TAPS)
  expected = np.outer(taps, taps) / np.outer(taps, taps).sum()
  return np.shape(f) == expected.shape and np.allclose(f, expected, atol=1e-6)


def from_ada_generator(g_ema: PersistentRecord, source: str):
  """G_ema record -> (flat params, avg_latent, noise list, arch hints)."""
  as_dict = lambda value: value if isinstance(value, dict) else {}
  kwargs = as_dict(g_ema.state.get('_init_kwargs'))
  synthesis_kwargs = as_dict(kwargs.get('synthesis_kwargs'))
  mapping_kwargs = as_dict(kwargs.get('mapping_kwargs'))
  architecture = synthesis_kwargs.get('architecture', 'skip')
  if architecture != 'skip':
    raise CheckpointError(f"{source}: G_ema uses the '{architecture}' synthesis "
                          "architecture; only 'skip' (every published StyleGAN2) is supported")
  state = module_state_dict(g_ema)
  flat, noise = {}, {}
  for name, value in state.items():
    if not (isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.number)):
      raise CheckpointError(f'{source}: G_ema.{name} is not a numeric tensor')
    value = value.astype(np.float32)
    if name.endswith('resample_filter'):
      if not _resample_filter_ok(value):
        raise CheckpointError(f'{source}: {name} is not the [1,3,3,1] filter')
    elif name.endswith('.noise_const'):
      noise[name[:-len('.noise_const')].replace('synthesis.', '')] = value[None, :, :, None]
    elif name != 'mapping.w_avg':
      flat[name.replace('.', '/')] = value
  hints = {'conv_clamp': synthesis_kwargs.get('conv_clamp'),
           'mapping_lr_multiplier': mapping_kwargs.get('lr_multiplier', 0.01),
           'channel_base': synthesis_kwargs.get('channel_base'),
           'channel_max': synthesis_kwargs.get('channel_max')}
  return flat, state.get('mapping.w_avg'), noise, hints


def _apply_name_map(present: dict[str, np.ndarray], names: dict, source: str) -> dict:
  """Source arrays -> our flat params through `names` (source name -> (ours, transform));
  CheckpointError naming every missing and unexpected key, or a misshapen array."""
  checkpoint.check_source_keys([k for k in names if k not in present],
                               [k for k in present if k not in names], source, WHAT)
  try:
    return {dst: np.asarray(transform(np.asarray(present[src])), np.float32)
            for src, (dst, transform) in names.items()}
  except (ValueError, IndexError) as e:
    raise CheckpointError(f'{source}: a weight of the wrong rank ({e})') from None


# ----------------------------------------------------------------------------------------
# NVIDIA's TF StyleGAN2 pickles.

def _tf_conv(w):      # [kh, kw, in, out] -> [out, in, kh, kw]
  return w.transpose(3, 2, 0, 1)


def _tf_conv_up(w):   # Conv0_up is stored spatially flipped
  return w[::-1, ::-1].transpose(3, 2, 0, 1)


def _plus_one(b):     # TF adds the +1 of the style bias at run time
  return b + 1


def _same(w):
  return w


def _tf_name_map(resolutions: list[int], mapping_layers: int, conditional: bool) -> dict:
  """TF variable name ('mapping/...', 'synthesis/...') -> (our name, transform)."""
  names = {}
  if conditional:
    names['mapping/LabelEmbed/weight'] = ('mapping/embed/weight', np.transpose)
    names['mapping/LabelEmbed/bias'] = ('mapping/embed/bias', _same)
  for i in range(mapping_layers):
    names[f'mapping/Dense{i}/weight'] = (f'mapping/fc{i}/weight', np.transpose)
    names[f'mapping/Dense{i}/bias'] = (f'mapping/fc{i}/bias', _same)
  for r in resolutions:
    src, dst = f'synthesis/{r}x{r}', f'synthesis/b{r}'
    if r == 4:
      names[f'{src}/Const/const'] = (f'{dst}/const', lambda c: c[0])
      layers = (('Conv', 'conv1', _tf_conv),)
    else:
      layers = (('Conv0_up', 'conv0', _tf_conv_up), ('Conv1', 'conv1', _tf_conv))
    for tf_layer, ours, conv in layers + (('ToRGB', 'torgb', _tf_conv),):
      names[f'{src}/{tf_layer}/weight'] = (f'{dst}/{ours}/weight', conv)
      names[f'{src}/{tf_layer}/bias'] = (f'{dst}/{ours}/bias', _same)
      names[f'{src}/{tf_layer}/mod_weight'] = (f'{dst}/{ours}/affine/weight', np.transpose)
      names[f'{src}/{tf_layer}/mod_bias'] = (f'{dst}/{ours}/affine/bias', _plus_one)
      if tf_layer != 'ToRGB':
        names[f'{src}/{tf_layer}/noise_strength'] = (f'{dst}/{ours}/noise_strength', _same)
  return names


def from_tf_networks(gs: safe_load.TFNetworkStub, source: str):
  """Gs (TF pickle) -> (flat params, avg_latent, noise list, arch hints)."""
  variables, own, kwargs = safe_load.tf_generator_variables(gs, source)
  if any(re.match(r'synthesis/ToRGB_lod\d+/', k) for k in variables) or kwargs.get(
      'architecture', 'skip') != 'skip':
    raise CheckpointError(f"{source}: a TF StyleGAN2 of the 'orig' or 'resnet' synthesis "
                          "architecture; only 'skip' (every published model) is supported")
  if any(k.startswith('mapping/LabelConcat/') for k in variables):
    raise CheckpointError(f'{source}: a conditional TF StyleGAN2 with LabelConcat (the '
                          'original stylegan2 repo); only LabelEmbed (stylegan2-ada) is read')
  resolutions = sorted({int(m.group(1)) for k in variables
                        if (m := re.match(r'synthesis/(\d+)x\1/', k))})
  dense = [int(m.group(1)) for k in variables if (m := re.match(r'mapping/Dense(\d+)/weight$', k))]
  if not resolutions or resolutions[0] != 4 or not dense:
    raise CheckpointError(f'{source}: no synthesis/4x4 block or mapping Dense layers found')
  noise_names = {k for k in variables if re.match(r'synthesis/noise\d+$', k)}
  names = _tf_name_map(resolutions, len(dense), 'mapping/LabelEmbed/weight' in variables)
  flat = _apply_name_map({k: v for k, v in variables.items() if k not in noise_names},
                         names, source)
  noise = {f'b{r}.{name}': variables[f'synthesis/noise{j}'].transpose(0, 2, 3, 1)
           for j, (r, name) in enumerate(stylegan2.synthesis_layers(resolutions))
           if f'synthesis/noise{j}' in variables}
  hints = {'conv_clamp': kwargs.get('conv_clamp'),
           'mapping_lr_multiplier': kwargs.get('mapping_lrmul', 0.01),
           'channel_base': 2 * kwargs['fmap_base'] if 'fmap_base' in kwargs else None,
           'channel_max': kwargs.get('fmap_max')}
  return flat, own.get('dlatent_avg'), noise, hints


# ----------------------------------------------------------------------------------------
# rosinality's stylegan2-pytorch.

def _rosinality_name_map(resolutions: list[int], mapping_layers: int) -> dict:
  """rosinality g_ema name -> (our name, transform)."""
  names = {}
  for i in range(mapping_layers):   # style.0 is the PixelNorm
    for leaf in ('weight', 'bias'):
      names[f'style.{i + 1}.{leaf}'] = (f'mapping/fc{i}/{leaf}', _same)
  names['input.input'] = ('synthesis/b4/const', lambda c: c[0])

  def styled_conv(src, dst):
    names[f'{src}.conv.weight'] = (f'{dst}/weight', lambda w: w[0])
    names[f'{src}.conv.modulation.weight'] = (f'{dst}/affine/weight', _same)
    names[f'{src}.conv.modulation.bias'] = (f'{dst}/affine/bias', _same)
    names[f'{src}.noise.weight'] = (f'{dst}/noise_strength', lambda s: s.reshape(()))
    names[f'{src}.activate.bias'] = (f'{dst}/bias', _same)

  def to_rgb(src, dst):
    names[f'{src}.conv.weight'] = (f'{dst}/weight', lambda w: w[0])
    names[f'{src}.conv.modulation.weight'] = (f'{dst}/affine/weight', _same)
    names[f'{src}.conv.modulation.bias'] = (f'{dst}/affine/bias', _same)
    names[f'{src}.bias'] = (f'{dst}/bias', lambda b: b.reshape(-1))

  styled_conv('conv1', 'synthesis/b4/conv1')
  to_rgb('to_rgb1', 'synthesis/b4/torgb')
  for j, r in enumerate(resolutions[1:]):
    styled_conv(f'convs.{2 * j}', f'synthesis/b{r}/conv0')
    styled_conv(f'convs.{2 * j + 1}', f'synthesis/b{r}/conv1')
    to_rgb(f'to_rgbs.{j}', f'synthesis/b{r}/torgb')
  return names


def from_rosinality(obj, source: str):
  """rosinality checkpoint object -> (flat params, avg_latent, noise list, arch hints)."""
  if isinstance(obj, dict) and isinstance(obj.get('g_ema'), dict):
    state, avg = obj['g_ema'], obj.get('latent_avg')
  elif isinstance(obj, dict) and 'style.1.weight' in obj:
    state, avg = obj, None
  else:
    keys = list(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f'{source}: not a rosinality stylegan2-pytorch checkpoint (no '
                          f"'g_ema' state dict or style.1.weight; found {keys})")
  state = safe_load.to_numpy(state, source)
  mlp = sorted(int(m.group(1)) for k in state if (m := re.match(r'style\.(\d+)\.weight$', k)))
  convs = [int(m.group(1)) for k in state if (m := re.match(r'convs\.(\d+)\.conv\.weight$', k))]
  if not mlp or 'input.input' not in state:
    raise CheckpointError(f'{source}: g_ema has no style.*/input.input weights')
  resolutions = [2 ** k for k in range(2, 3 + (max(convs) + 1) // 2 if convs else 3)]
  noise_names = {k for k in state if re.match(r'noises\.noise_\d+$', k)}
  fixed = {k for k in state if k.endswith('blur.kernel') or k.endswith('upsample.kernel')}
  for k in fixed:
    if not _resample_filter_ok(state[k] / 4):
      raise CheckpointError(f'{source}: {k} is not the [1,3,3,1] filter (x4)')
  names = _rosinality_name_map(resolutions, len(mlp))
  flat = _apply_name_map({k: v for k, v in state.items() if k not in noise_names | fixed},
                         names, source)
  noise = {f'b{r}.{name}': state[f'noises.noise_{j}'].transpose(0, 2, 3, 1)
           for j, (r, name) in enumerate(stylegan2.synthesis_layers(resolutions))
           if f'noises.noise_{j}' in state}
  avg = None if avg is None else safe_load.to_numpy({'latent_avg': avg}, source)['latent_avg']
  return flat, avg, noise, {'conv_clamp': None, 'mapping_lr_multiplier': 0.01,
                            'channel_base': None, 'channel_max': None}


# ----------------------------------------------------------------------------------------
# Shared: the architecture from the shapes, checks, the converted directory.

def infer_arch(flat: dict[str, np.ndarray], hints: dict, source: str) -> stylegan2.StyleGAN2Arch:
  """Resolution, dims and channels from the weights' shapes; clamp and mapping lr from
  the source's settings (`hints`). Channels follow min(base // r, max) where they can."""
  resolutions = sorted(int(m.group(1)) for k in flat
                       if (m := re.match(r'synthesis/b(\d+)/conv1/weight$', k)))
  mapping_layers = sum(1 for k in flat if re.match(r'mapping/fc\d+/weight$', k))
  if not resolutions or 'mapping/fc0/weight' not in flat:
    raise CheckpointError(f'{source}: no synthesis.b*.conv1 or mapping.fc0 weights')
  resolution = max(resolutions)
  try:
    channels = {r: int(flat[f'synthesis/b{r}/conv1/weight'].shape[0]) for r in resolutions}
    c_dim = int(flat['mapping/embed/weight'].shape[1]) if 'mapping/embed/weight' in flat else 0
    w_dim = int(flat['mapping/fc0/weight'].shape[0])
    z_dim = int(flat['mapping/fc0/weight'].shape[1]) - (w_dim if c_dim else 0)
    fields = dict(resolution=resolution, z_dim=z_dim, w_dim=w_dim, c_dim=c_dim,
                  mapping_layers=mapping_layers, conv_clamp=hints['conv_clamp'],
                  mapping_lr_multiplier=float(hints['mapping_lr_multiplier']),
                  img_channels=int(flat[f'synthesis/b{resolution}/torgb/weight'].shape[0]))
    channel_max = hints['channel_max'] or max(channels.values())
    smaller = [r for r in resolutions if channels[r] < channel_max]
    channel_base = hints['channel_base'] or (channels[smaller[0]] * smaller[0] if smaller
                                             else channel_max * resolution)
    arch = stylegan2.StyleGAN2Arch(channel_base=int(channel_base),
                                   channel_max=int(channel_max), **fields)
    if [arch.channels_at(r) for r in resolutions] != [channels[r] for r in resolutions]:
      arch = stylegan2.StyleGAN2Arch(channels=tuple(channels[r] for r in resolutions), **fields)
  except (TypeError, ValueError, KeyError, IndexError) as e:
    raise CheckpointError(f'{source}: not a StyleGAN2 generator ({type(e).__name__}: {e})'
                          ) from None
  if arch.resolutions != resolutions:
    raise CheckpointError(f'{source}: synthesis blocks {resolutions} are not 4, 8, ... '
                          f'{resolution}')
  return arch


def read(src: str):
  """SRC in any of the three formats -> (format name, arch, flat params, avg_latent or
  None, const noise list or None)."""
  safe_load.check_file(src)
  if safe_load.is_zip(src):
    obj = safe_load.load_torch_object(src, safe_globals=(argparse.Namespace,))
    source_format, parts = 'rosinality-stylegan2-pytorch', from_rosinality(obj, src)
  else:
    obj = safe_load.load_pickle(src, ADA_GLOBALS)
    if safe_load.is_tf_networks(obj):
      source_format, parts = 'nvidia-tf-stylegan2-pickle', from_tf_networks(obj[2], src)
    elif isinstance(obj, dict) and isinstance(obj.get('G_ema'), PersistentRecord):
      source_format, parts = 'stylegan2-ada-pytorch-pickle', from_ada_generator(obj['G_ema'],
                                                                                src)
    else:
      raise CheckpointError(f'{src}: neither a stylegan2-ada-pytorch pickle (a dict with '
                            'G_ema) nor a TF (G, D, Gs) pickle')
  flat, avg, noise_by_layer, hints = parts
  arch = infer_arch(flat, hints, src)
  checkpoint.check_names_and_shapes(flat, stylegan2.param_shapes(arch), src)
  noise = None
  if noise_by_layer:
    missing = [f'b{r}.{n}' for r, n in arch.layers if f'b{r}.{n}' not in noise_by_layer]
    if missing:
      raise CheckpointError(f'{src}: ' + checkpoint.describe_names('layer(s) without '
                                                                   'constant noise', missing))
    noise = [np.asarray(noise_by_layer[f'b{r}.{n}'], np.float32) for r, n in arch.layers]
  avg = None if avg is None else np.asarray(avg, np.float32)
  style.check_extras(arch, avg, noise, src)
  return source_format, arch, flat, avg, noise


def convert(src: str, dst: str, avg_latent_path: str | None = None, noise_seed: int = 0) -> dict:
  """Converts SRC into the generator directory DST; returns the info record written to
  DST/generator.json."""
  source_format, arch, flat, avg, noise = read(src)
  info = {'source': os.path.abspath(src), 'source_format': source_format,
          'feature_names': [f'b{r}.{n}' for r, n in arch.layers]}
  if source_format.startswith('rosinality'):
    info['truncation'] = ("rosinality's truncation moves every layer: set "
                          f'config.generator.truncation_cutoff={arch.num_ws} to match it')
  return style_converter.save(dst, arch, flat, avg, noise, info, avg_latent_path, noise_seed)


OUTPUT_META = 'generator.json'
HELP = ('StyleGAN2 / StyleGAN2-ADA: stylegan2-ada-pytorch .pkl, NVIDIA TF .pkl or '
        'rosinality .pt')


def add_arguments(parser) -> None:
  style_converter.add_arguments(parser, '.npy average W, [w_dim] or [num_ws, w_dim], '
                                "replacing the checkpoint's (needed for truncation when it "
                                'has none)')


def run(args) -> str:
  info = convert(args.src, args.dst, args.avg_latent, args.noise_seed)
  return (f'wrote {args.dst} ({info["source_format"]}; {len(info["feature_names"])} '
          f'feature maps; const noise {info["const_noise"]}; avg_latent {info["avg_latent"]})')
