"""The converted-generator directory: `generator.json` (architecture) + `params.npz`.

`params.npz` holds flat '/'-joined parameter names (`synthesis/b8/conv1/weight`), and
optionally `avg_latent` (the truncation average W) and `noise/{j}` (constant noise
inputs, [1, h, w, 1], layer order). It is read with allow_pickle=False: data only.
"""

import dataclasses
import json
import os
import zipfile
from typing import Any

import numpy as np

from dgan_jax import io
from dgan_jax.errors import InputError

FORMAT = 'dgan_jax.generator'
FORMAT_VERSION = 1


class CheckpointError(InputError):
  """A checkpoint file is missing, corrupt or does not match the architecture."""


def flatten(tree: dict, prefix: str = '') -> dict[str, Any]:
  """Nested dict -> {'a/b/c': leaf}."""
  flat = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      flat.update(flatten(v, f'{prefix}{k}/'))
    else:
      flat[f'{prefix}{k}'] = v
  return flat


def unflatten(flat: dict[str, Any]) -> dict:
  """{'a/b/c': leaf} -> nested dict."""
  tree: dict = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split('/')
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def describe_names(label: str, names: list[str], shown: int = 6) -> str:
  """'3 missing key(s): a, b, c' with at most `shown` names listed."""
  more = f' (+{len(names) - shown} more)' if len(names) > shown else ''
  return f'{len(names)} {label}: ' + ', '.join(names[:shown]) + more


def check_source_keys(missing: list[str], unexpected: list[str], source: str,
                      what: str) -> None:
  """CheckpointError naming every missing and unexpected key of a source checkpoint."""
  if missing or unexpected:
    parts = [describe_names(label, keys) for label, keys in
             (('missing key(s)', missing), ('unexpected key(s)', unexpected)) if keys]
    raise CheckpointError(f'{source}: not a {what} of the expected layout; ' + '; '.join(parts))


def build_arch(arch_class, arch_json: dict, source: str):
  """generator.json's 'arch' record (minus its 'type') -> arch_class; CheckpointError
  naming `source` when the record does not fit."""
  if not isinstance(arch_json, dict):
    raise CheckpointError(f'{source}: generator.json arch is not a record')
  fields = {k: v for k, v in arch_json.items() if k != 'type'}
  if 'resolution' in {f.name for f in dataclasses.fields(arch_class)} and (
      'resolution' not in fields):
    raise CheckpointError(f'{source}: generator.json arch has no resolution')
  try:
    return arch_class(**fields)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f'{source}: bad architecture record ({e})') from None


def check_names_and_shapes(arrays: dict[str, np.ndarray], expected: dict[str, tuple],
                           source: str) -> None:
  """Raises CheckpointError listing missing, unexpected and misshapen entries."""
  missing = [k for k in expected if k not in arrays]
  unexpected = [k for k in arrays if k not in expected]
  misshapen = [f'{k}: {tuple(arrays[k].shape)} != {tuple(s)}' for k, s in expected.items()
               if k in arrays and tuple(arrays[k].shape) != tuple(s)]
  problems = [describe_names(label, names) for label, names in
              (('missing', missing), ('unexpected', unexpected), ('wrong shape', misshapen))
              if names]
  if problems:
    raise CheckpointError(f'{source}: ' + '; '.join(problems))


def check_finite(arrays: dict[str, np.ndarray], source: str) -> None:
  """CheckpointError naming `source` and the arrays that hold NaN or Inf."""
  bad = [k for k, v in arrays.items()
         if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.all(np.isfinite(v))]
  if bad:
    raise CheckpointError(f'{source}: ' + describe_names('array(s) holding NaN or Inf', bad))


def save(directory: str, arch: dict, params: dict, extras: dict[str, np.ndarray],
         info: dict | None = None) -> None:
  """Writes the checkpoint to a temporary sibling directory, then renames it into place."""
  directory = os.path.abspath(directory)
  os.makedirs(os.path.dirname(directory), exist_ok=True)
  arrays = {k: np.asarray(v, np.float32) for k, v in flatten(params).items()}
  arrays.update({k: np.asarray(v, np.float32) for k, v in extras.items()})
  check_finite(arrays, (info or {}).get('source', directory))
  with io.atomic_dir(directory) as tmp:
    np.savez(os.path.join(tmp, 'params.npz'), **arrays)
    with open(os.path.join(tmp, 'generator.json'), 'w') as f:
      json.dump({'format': FORMAT, 'format_version': FORMAT_VERSION, 'arch': arch,
                 **(info or {})}, f, indent=2)


def write_arrays_and_meta(directory: str, meta_name: str, arrays: dict[str, np.ndarray],
                          meta: dict) -> None:
  """`params.npz` then `meta_name` (JSON) into `directory`, each under a temporary name
  first; the JSON last, so a directory holding it holds complete arrays."""
  arrays = {k: np.asarray(v, np.float32) for k, v in arrays.items()}
  check_finite(arrays, meta.get('source', directory))
  os.makedirs(directory, exist_ok=True)
  io.save_npz(os.path.join(directory, 'params.npz'), **arrays)
  io.write_json(os.path.join(directory, meta_name), meta)


def read_arrays_and_meta(directory: str, meta_name: str,
                         missing_hint: str) -> tuple[dict, dict[str, np.ndarray]]:
  """-> (meta_name's JSON, params.npz's flat arrays), read as data (allow_pickle=False).
  CheckpointError naming the file when one is missing, not JSON, corrupt or truncated."""
  meta_path = os.path.join(directory, meta_name)
  params_path = os.path.join(directory, 'params.npz')
  for path in (meta_path, params_path):
    if not os.path.isfile(path):
      raise CheckpointError(f'{path}: missing; {missing_hint}')
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f'{meta_path}: not valid JSON ({e})') from None
  if not isinstance(meta, dict):
    raise CheckpointError(f'{meta_path}: not a JSON object')
  try:
    with np.load(params_path, allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in npz.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
    raise CheckpointError(f'{params_path}: corrupt or truncated ({e})') from None
  check_finite(arrays, params_path)
  return meta, arrays


def read(directory: str) -> tuple[dict, dict[str, np.ndarray]]:
  """A converted generator directory -> (generator.json contents, flat arrays)."""
  if not os.path.isdir(directory):
    raise CheckpointError(f'{directory}: no such checkpoint directory (convert one with '
                          '`python -m convert_weights stylegan1 SRC DST`)')
  meta, arrays = read_arrays_and_meta(
      directory, 'generator.json', f'{directory} is not a complete converted checkpoint')
  if meta.get('format') != FORMAT or 'arch' not in meta:
    raise CheckpointError(f'{os.path.join(directory, "generator.json")}: not a {FORMAT} file')
  return meta, arrays
