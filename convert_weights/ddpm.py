"""openai guided-diffusion checkpoints (a UNetModel's state dict) -> a ddpm generator
directory.

openai's released models (lsun_bedroom.pt, lsun_cat.pt, lsun_horse.pt, ffhq.pt as
ddpm-segmentation uses them, 256x256_diffusion_uncond.pt, ...) are plain state dicts,
read with torch.load(weights_only=True); float16 tensors are read as float32. The
architecture is not in the file: it comes from the MODEL_FLAGS the model was trained
and is sampled with (--flags "--attention_resolutions 32,16,8 --image_size 256 ...", as
in guided-diffusion's README and ddpm-segmentation's scripts), or a JSON object of the
same keys (inline, or a .json file). Flags not given take guided-diffusion's
`model_and_diffusion_defaults`; an empty channel_mult takes `create_model`'s per-size
table. Every key and shape of the file is checked against that architecture before
anything is written; a mismatch names the key.

The name map: '.' -> '/'; 3x3 and 1x1 convolution kernels OIHW -> HWIO; the attention's
1-d convolutions (qkv, proj_out) [out, in, 1] and Linear weights [out, in] -> [in, out];
label_emb (an Embedding) as stored.
"""

import dataclasses
import json
import os
import shlex

import numpy as np

from convert_weights import safe_load
from dgan_jax.generators import checkpoint
from dgan_jax.generators import ddpm
from dgan_jax.generators.checkpoint import CheckpointError

OUTPUT_META = 'generator.json'
HELP = 'DDPM: an openai guided-diffusion UNet state dict (.pt) with its MODEL_FLAGS'

# guided-diffusion's script_util.model_and_diffusion_defaults() (the flags' defaults)
FLAG_DEFAULTS = {
    'image_size': 64, 'num_channels': 128, 'num_res_blocks': 2, 'num_heads': 4,
    'num_heads_upsample': -1, 'num_head_channels': -1, 'attention_resolutions': '16,8',
    'channel_mult': '', 'dropout': 0.0, 'class_cond': False, 'use_checkpoint': False,
    'use_scale_shift_norm': True, 'resblock_updown': False, 'use_fp16': False,
    'use_new_attention_order': False, 'learn_sigma': False, 'diffusion_steps': 1000,
    'noise_schedule': 'linear', 'timestep_respacing': '', 'use_kl': False,
    'predict_xstart': False, 'rescale_timesteps': False, 'rescale_learned_sigmas': False,
}
# create_model's channel_mult for an empty flag
CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                64: (1, 2, 3, 4)}
NUM_CLASSES = 1000   # script_util.NUM_CLASSES: class_cond models are ImageNet's
_TRUE, _FALSE = ('yes', 'true', 't', 'y', '1'), ('no', 'false', 'f', 'n', '0')


def add_arguments(parser) -> None:
  parser.add_argument('src', help="the model's state dict, e.g. lsun_bedroom.pt")
  parser.add_argument('dst')
  parser.add_argument('--flags', required=True,
                      help='MODEL_FLAGS ("--image_size 256 --num_channels 256 ..."), or a JSON '
                           'object of the same keys, inline or a .json file')


def run(args) -> str:
  info = convert(args.src, args.dst, args.flags)
  return f'wrote {args.dst} ({info["summary"]})'


def _value(name: str, raw, default):
  """One flag's value, typed as guided-diffusion's argparser types it (bools: str2bool)."""
  if isinstance(default, bool):
    if isinstance(raw, bool):
      return raw
    if str(raw).lower() in _TRUE + _FALSE:
      return str(raw).lower() in _TRUE
    raise CheckpointError(f'--flags: {name} must be a boolean (True/False), got {raw!r}')
  if isinstance(default, int):
    try:
      if isinstance(raw, bool) or float(raw) != int(float(raw)):
        raise ValueError
      return int(float(raw))
    except (TypeError, ValueError):
      raise CheckpointError(f'--flags: {name} must be an integer, got {raw!r}') from None
  if isinstance(default, float):
    try:
      return float(raw)
    except (TypeError, ValueError):
      raise CheckpointError(f'--flags: {name} must be a number, got {raw!r}') from None
  if isinstance(raw, (list, tuple)):
    return ','.join(str(v) for v in raw)
  return str(raw)


def parse_flags(text: str) -> dict:
  """MODEL_FLAGS text, a JSON object or a .json file -> every flag of FLAG_DEFAULTS,
  typed; CheckpointError naming an unknown flag or a bad value."""
  given: dict = {}
  stripped = text.strip()
  if stripped.endswith('.json') and not stripped.startswith(('{', '-')):
    safe_load.check_file(stripped)
    with open(stripped) as f:
      stripped = f.read()
    source = text.strip()
  else:
    source = '--flags'
  if stripped.startswith('{'):
    try:
      given = json.loads(stripped)
    except json.JSONDecodeError as e:
      raise CheckpointError(f'{source}: not valid JSON ({e})') from None
    if not isinstance(given, dict):
      raise CheckpointError(f'{source}: not a JSON object')
  else:
    words = shlex.split(stripped)
    i = 0
    while i < len(words):
      word = words[i]
      if not word.startswith('--'):
        raise CheckpointError(f'--flags: expected --name value, got {word!r}')
      name, eq, value = word[2:].partition('=')
      if not eq:
        if i + 1 >= len(words):
          raise CheckpointError(f'--flags: {word} has no value')
        value, i = words[i + 1], i + 1
      given[name] = value
      i += 1
  unknown = sorted(set(given) - set(FLAG_DEFAULTS))
  if unknown:
    raise CheckpointError(f'{source}: unknown flag(s) {unknown} (guided-diffusion model '
                          f'flags: {sorted(FLAG_DEFAULTS)})')
  return {name: _value(name, given.get(name, default), default)
          for name, default in FLAG_DEFAULTS.items()}


def arch_from_flags(flags: dict) -> ddpm.DDPMArch:
  """Typed flags -> the architecture `create_model_and_diffusion` builds."""
  size = flags['image_size']
  try:
    if flags['channel_mult']:
      mult = tuple(float(m) if '.' in m else int(m) for m in flags['channel_mult'].split(','))
    elif size in CHANNEL_MULT:
      mult = CHANNEL_MULT[size]
    else:
      raise CheckpointError(f'--flags: image_size {size} has no default channel_mult '
                            f'(sizes {sorted(CHANNEL_MULT)}); give --channel_mult')
    resolutions = tuple(int(r) for r in flags['attention_resolutions'].split(','))
  except ValueError:
    raise CheckpointError('--flags: channel_mult and attention_resolutions are comma-'
                          f'separated numbers, got {flags["channel_mult"]!r}, '
                          f'{flags["attention_resolutions"]!r}') from None
  try:
    return ddpm.DDPMArch(
        image_size=size, model_channels=flags['num_channels'],
        num_res_blocks=flags['num_res_blocks'], channel_mult=mult,
        attention_resolutions=resolutions, num_heads=flags['num_heads'],
        num_head_channels=flags['num_head_channels'],
        num_heads_upsample=flags['num_heads_upsample'],
        use_scale_shift_norm=flags['use_scale_shift_norm'],
        resblock_updown=flags['resblock_updown'],
        use_new_attention_order=flags['use_new_attention_order'],
        learn_sigma=flags['learn_sigma'], num_classes=NUM_CLASSES if flags['class_cond'] else 0,
        diffusion_steps=flags['diffusion_steps'], noise_schedule=flags['noise_schedule'],
        predict_xstart=flags['predict_xstart'], rescale_timesteps=flags['rescale_timesteps'])
  except ValueError as e:
    raise CheckpointError(f'--flags: {e}') from None


def _is_conv1d(name: str) -> bool:
  return name.endswith(('qkv/weight', 'proj_out/weight'))


def source_shapes(arch: ddpm.DDPMArch) -> dict[str, tuple[int, ...]]:
  """The state dict's keys and shapes for `arch` (guided-diffusion's layouts)."""
  out = {}
  for name, shape in ddpm.param_shapes(arch).items():
    if len(shape) == 4:
      shape = (shape[3], shape[2], shape[0], shape[1])
    elif len(shape) == 2 and name != 'label_emb/weight':
      shape = (shape[1], shape[0], 1) if _is_conv1d(name) else (shape[1], shape[0])
    out[name.replace('/', '.')] = tuple(shape)
  return out


def to_params(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A checked state dict -> flat params in our names and layouts."""
  flat = {}
  for key, value in state.items():
    name = key.replace('.', '/')
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)
    elif value.ndim == 3:
      value = value[:, :, 0].T
    elif value.ndim == 2 and name != 'label_emb/weight':
      value = value.T
    flat[name] = np.ascontiguousarray(value, np.float32)
  return flat


def check_state(state: dict[str, np.ndarray], arch: ddpm.DDPMArch, source: str) -> None:
  """CheckpointError naming every missing, unexpected and misshapen key."""
  expected = source_shapes(arch)
  missing = [k for k in expected if k not in state]
  unexpected = [k for k in state if k not in expected]
  misshapen = [f'{k}: {tuple(state[k].shape)} != {expected[k]}' for k in expected
               if k in state and tuple(state[k].shape) != expected[k]]
  problems = [checkpoint.describe_names(label, names) for label, names in
              (('missing key(s)', missing), ('unexpected key(s)', unexpected),
               ('wrong shape', misshapen)) if names]
  if problems:
    raise CheckpointError(f'{source}: does not fit the flags\' UNet (image_size '
                          f'{arch.image_size}, num_channels {arch.model_channels}, channel_mult '
                          f'{arch.channel_mult}, ...): ' + '; '.join(problems))


def convert(src: str, dst: str, flags_text: str) -> dict:
  flags = parse_flags(flags_text)
  arch = arch_from_flags(flags)
  state = safe_load.load_torch_state_dict(src)
  if state and all(k.startswith('module.') for k in state):
    state = {k[len('module.'):]: v for k, v in state.items()}
  check_state(state, arch, src)
  params = to_params(state)
  count = sum(v.size for v in params.values())
  summary = (f'{arch.image_size} px, {count / 1e6:.1f} M parameters, '
             f'{"learned" if arch.learn_sigma else "fixed"} variance, '
             f'{arch.diffusion_steps} {arch.noise_schedule} steps'
             + (', class-conditional' if arch.num_classes else ''))
  info = {'source': os.path.abspath(src), 'model_flags': flags, 'summary': summary}
  checkpoint.save(dst, {'type': 'ddpm', **dataclasses.asdict(arch)},
                  checkpoint.unflatten(params), {}, info)
  return info
