"""taming-transformers checkpoints -> a vqgan generator directory.

SRC is a taming log folder (`configs/*-project.yaml` and `checkpoints/last.ckpt`), or a
`.ckpt` with `--config project.yaml`. Two kinds of model:

  cin_transformer  `Net2NetTransformer` (its state dict: `transformer.*` (minGPT),
                   `first_stage_model.*` (the VQGAN); the `Labelator` conditioning has no
                   weights): a generator that samples.
  VQModel          a VQGAN alone (`encoder.*`, `decoder.*`, `quantize.embedding.weight`,
                   `quant_conv.*`, `post_quant_conv.*`; `loss.*` dropped): encodes and
                   decodes, cannot sample.

The name map: '.' -> '/', a VQGAN alone's names under `first_stage_model/`; conv kernels
OIHW -> HWIO, minGPT's Linear weights [out, in] -> [in, out]; the attention masks
(`transformer.blocks.*.attn.mask`, a constant buffer) and `loss.*` are dropped. The
architecture comes from the YAML (read with yaml.safe_load) and is checked against every
shape. The checkpoint is read as data: torch.load(weights_only=True), and where that
refuses a class (Lightning 1.0, which taming used, keys callback states by their class), a
restricted unpickler that admits the same tensors and containers, keeps a class that is
only named as its name, and refuses by name any class the file would construct.
"""

import dataclasses
import glob
import os

import numpy as np
import yaml

from convert_weights import safe_load
from dgan_jax.generators import checkpoint
from dgan_jax.generators import vqgan
from dgan_jax.generators.checkpoint import CheckpointError

OUTPUT_META = 'generator.json'
HELP = "VQGAN: a taming-transformers log folder or .ckpt (cin_transformer or VQModel)"

CIN_TRANSFORMER = 'taming.models.cond_transformer.Net2NetTransformer'
VQMODEL = 'taming.models.vqgan.VQModel'
GPT = 'taming.modules.transformer.mingpt.GPT'
LABELATOR = 'taming.modules.util.Labelator'
IDENTITY = 'taming.modules.transformer.permuter.Identity'


def add_arguments(parser) -> None:
  parser.add_argument('src', help='taming log folder, or its checkpoints/last.ckpt')
  parser.add_argument('dst')
  parser.add_argument('--config', help='the project.yaml (default: SRC/configs/*-project.yaml)')


def run(args) -> str:
  info = convert(args.src, args.dst, args.config)
  return f'wrote {args.dst} ({info["model"]}; {info["summary"]})'


def find_files(src: str, config: str | None) -> tuple[str, str]:
  """SRC (a log folder or a .ckpt) and --config -> (the checkpoint, the YAML)."""
  if os.path.isdir(src):
    ckpt = os.path.join(src, 'checkpoints', 'last.ckpt')
    if not os.path.isfile(ckpt):
      raise CheckpointError(f'{src}: a taming log folder holds checkpoints/last.ckpt; '
                            'it is missing')
    if config is None:
      found = sorted(glob.glob(os.path.join(glob.escape(src), 'configs', '*-project.yaml')))
      if not found:
        raise CheckpointError(f'{src}/configs: no *-project.yaml (or pass --config)')
      config = found[-1]
    return ckpt, config
  safe_load.check_file(src)
  if config is None:
    raise CheckpointError(f'{src}: a .ckpt needs its --config project.yaml')
  return src, config


def read_yaml(path: str) -> dict:
  safe_load.check_file(path)
  try:
    with open(path) as f:
      record = yaml.safe_load(f)
  except (yaml.YAMLError, UnicodeDecodeError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise CheckpointError(f'{path}: not readable YAML ({first})') from None
  if not isinstance(record, dict) or not isinstance(record.get('model'), dict):
    raise CheckpointError(f'{path}: not a taming config (no model: section)')
  return record


def _section(record, path: str, where: str) -> dict:
  node = record
  for key in where.split('.'):
    node = node.get(key) if isinstance(node, dict) else None
  if not isinstance(node, dict):
    raise CheckpointError(f'{path}: {where} is missing or not a mapping')
  return node


def arch_from_yaml(record: dict, path: str) -> tuple[str, vqgan.VQGANArch]:
  """A project.yaml -> ('cin_transformer' or 'VQModel', the architecture)."""
  model = record['model']
  target = model.get('target')
  if target == CIN_TRANSFORMER:
    params = _section(record, path, 'model.params')
    for where, expected in (('cond_stage_config', LABELATOR), ('transformer_config', GPT),
                            ('first_stage_config', VQMODEL)):
      got = params.get(where, {}).get('target') if isinstance(params.get(where), dict) else (
          params.get(where))
      if got != expected:
        raise CheckpointError(f'{path}: model.params.{where} is {got!r}; only the class-'
                              f'conditional cin_transformer ({expected}) is supported')
    permuter = (params.get('permuter_config') or {}).get('target', IDENTITY)
    if permuter != IDENTITY:
      raise CheckpointError(f'{path}: permuter {permuter!r}; only the identity is supported')
    first_where = 'model.params.first_stage_config.params'
    gpt = _section(record, path, 'model.params.transformer_config.params')
    labels = _section(record, path, 'model.params.cond_stage_config.params')
    # minGPT's defaults where the YAML leaves a field out
    transformer = {'vocab_size': gpt.get('vocab_size'), 'block_size': gpt.get('block_size'),
                   'n_layer': gpt.get('n_layer', 12), 'n_head': gpt.get('n_head', 8),
                   'n_embd': gpt.get('n_embd', 256), 'num_classes': labels.get('n_classes')}
    kind = 'cin_transformer'
  elif target == VQMODEL:
    first_where = 'model.params'
    transformer, kind = {'n_layer': 0, 'num_classes': 0}, 'VQModel'
  else:
    raise CheckpointError(f'{path}: model.target {target!r} is neither {CIN_TRANSFORMER} nor '
                          f'{VQMODEL}')
  first = _section(record, path, first_where)
  dd = _section(record, path, f'{first_where}.ddconfig')
  if dd.get('double_z', True) or not dd.get('resamp_with_conv', True):
    raise CheckpointError(f'{path}: ddconfig needs double_z: false and resampling convs, '
                          "as taming's VQGANs have")
  fields = {k: dd.get(k) for k in ('resolution', 'ch', 'num_res_blocks', 'attn_resolutions',
                                   'in_channels', 'out_ch', 'z_channels')}
  fields.update(ch_mult=dd.get('ch_mult', (1, 2, 4, 8)), n_embed=first.get('n_embed'),
                embed_dim=first.get('embed_dim'), **transformer)
  missing = sorted(k for k, v in fields.items() if v is None)
  if missing:
    raise CheckpointError(f'{path}: the model config lacks {", ".join(missing)}')
  try:
    return kind, vqgan.VQGANArch(**fields)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f'{path}: bad architecture ({e})') from None


def converted_name(name: str, kind: str) -> str | None:
  """A taming state-dict key -> its dgan_jax name, or None for what is dropped."""
  if kind == 'VQModel':
    if name.startswith('loss.'):
      return None
    name = f'first_stage_model.{name}'
  if name.startswith('first_stage_model.loss.') or name.endswith('.attn.mask'):
    return None
  return name.replace('.', '/')


def convert_array(name: str, value: np.ndarray) -> np.ndarray:
  """Kernels to dgan_jax's layout: conv OIHW -> HWIO; minGPT Linear [out, in] -> [in, out]."""
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if name.startswith('transformer/') and value.ndim == 2 and name != 'transformer/tok_emb/weight':
    return value.T
  return value


def convert(src: str, dst: str, config: str | None = None) -> dict:
  ckpt, yaml_path = find_files(src, config)
  kind, arch = arch_from_yaml(read_yaml(yaml_path), yaml_path)
  state = safe_load.load_torch_state_dict(ckpt, class_references=True)
  flat = {}
  for name, value in state.items():
    new = converted_name(name, kind)
    if new is not None:
      flat[new] = convert_array(new, value)
  checkpoint.check_names_and_shapes(flat, vqgan.generator_param_shapes(arch), ckpt)
  record = {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(arch).items()}
  count = sum(int(np.prod(v.shape)) for v in flat.values())
  summary = (f'{arch.resolution} px, {arch.code_resolution}x{arch.code_resolution} codes of '
             f'{arch.n_embed}' + (f', {arch.n_layer}-layer transformer, {arch.num_classes} '
                                  'classes' if arch.n_layer else ', no transformer')
             + f', {count / 1e6:.1f}M parameters')
  info = {'source': os.path.abspath(ckpt), 'config': os.path.abspath(yaml_path),
          'model': kind, 'summary': summary}
  checkpoint.save(dst, {'type': 'vqgan', **record}, checkpoint.unflatten(flat), {}, info)
  return info
