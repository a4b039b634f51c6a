"""Readers that treat checkpoint files as data, never as programs."""

import os
import pickle
import re
import zipfile

import numpy as np

from dgan_jax.generators.checkpoint import CheckpointError


def check_file(path: str) -> None:
  """CheckpointError unless `path` is a regular file."""
  if os.path.isdir(path):
    raise CheckpointError(f'{path}: a folder; give the checkpoint file')
  if not os.path.isfile(path):
    raise CheckpointError(f'{path}: no such file')


def check_zip_crcs(path: str) -> None:
  """A zip-format `.pt` whose stored CRCs do not match its bytes is refused (torch itself
  does not check them: a flipped tensor byte would load silently)."""
  try:
    with zipfile.ZipFile(path) as archive:
      bad = archive.testzip()
  except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
    raise CheckpointError(f'{path}: corrupt or truncated zip archive ({e})') from None
  if bad is not None:
    raise CheckpointError(f'{path}: corrupt: the bytes of {bad} do not match their CRC')


def load_torch_object(path: str, safe_globals: tuple = (), class_references: bool = False):
  """A PyTorch `.pt`/`.pth`/`.ckpt` file -> the object it holds, through torch's
  weights-only unpickler (tensors, containers and the classes in `safe_globals`; nothing
  executes). Zip-format files have their CRCs checked first.

  class_references: where the weights-only unpickler refuses a class, read the file again
  with `_TensorUnpickler`, which admits the same tensors and containers and keeps any other
  class that is only named (PyTorch Lightning 1.0 keys its callbacks' states by their
  class) as its name; one the file would construct is refused by name."""
  check_file(path)
  if zipfile.is_zipfile(path):
    check_zip_crcs(path)
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise CheckpointError(f'{path}: reading PyTorch files needs torch '
                          '(pip install torch); nothing else in dgan_jax does') from None
  try:
    with torch.serialization.safe_globals(list(safe_globals)):
      return torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    refused = re.search(r'Unsupported global: GLOBAL ([\w.]+)', str(e))
    if refused and class_references:
      return _load_with_class_references(torch, path)
    if refused:
      raise CheckpointError(f'{path}: refusing to load class {refused.group(1)}: a checkpoint '
                            'is read as tensors and plain containers only') from None
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise CheckpointError(f'{path}: refused or unreadable as a weights-only PyTorch file '
                          f'({first})') from None
  except Exception as e:  # torch raises RuntimeError/EOFError/zip errors for damaged files
    raise _corrupt(path, e) from None


def _corrupt(path: str, e: Exception) -> CheckpointError:
  return CheckpointError(f'{path}: corrupt or truncated PyTorch file '
                         f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})')


class ClassReference(str):
  """A class a checkpoint names only as data, kept as its dotted name and never imported;
  constructing one is refused."""

  def __call__(self, *args, **kwargs):
    raise pickle.UnpicklingError(f'refusing to load class {self}')


# What a tensor checkpoint's pickle may call: torch's tensor and parameter rebuilders,
# OrderedDict, torch.Size, sets (storages are resolved by torch's own loader).
_TENSOR_GLOBALS = {
    ('torch._utils', '_rebuild_tensor'), ('torch._utils', '_rebuild_tensor_v2'),
    ('torch._utils', '_rebuild_parameter'), ('torch._utils', '_rebuild_parameter_with_state'),
    ('torch._tensor', '_rebuild_from_type_v2'), ('torch.nn.parameter', 'Parameter'),
    ('torch', 'Tensor'), ('torch', 'Size'), ('collections', 'OrderedDict'),
    ('builtins', 'set'), ('builtins', 'frozenset'),
}


class _TensorUnpickler(pickle.Unpickler):
  """Admits `_TENSOR_GLOBALS`, torch dtypes and numpy arrays and scalars; any other global
  becomes a ClassReference (its name, inert)."""
  referenced: list

  def find_class(self, module, name):
    import torch  # pylint: disable=import-outside-toplevel
    if ((module, name) in _TENSOR_GLOBALS
        or (module == 'torch' and isinstance(getattr(torch, name, None), torch.dtype))
        or (module in _NUMPY_MODULES and name in _NUMPY_NAMES)):
      return super().find_class(module, name)
    type(self).referenced.append(f'{module}.{name}')
    return ClassReference(f'{module}.{name}')


def _load_with_class_references(torch, path: str):
  unpickler = type('TensorUnpickler', (_TensorUnpickler,), {'referenced': []})
  module = type(pickle)('tensor_pickle')
  module.Unpickler, module.load = unpickler, pickle.load
  try:
    return torch.load(path, map_location='cpu', weights_only=False, pickle_module=module)
  except (pickle.UnpicklingError, TypeError, AttributeError) as e:
    named = unpickler.referenced[-1] if unpickler.referenced else type(e).__name__
    raise CheckpointError(f'{path}: refusing to load class {named}: a checkpoint is read as '
                          'tensors and plain containers only') from None
  except Exception as e:  # pylint: disable=broad-except
    raise _corrupt(path, e) from None


def to_numpy(tensors: dict, source: str) -> dict[str, np.ndarray]:
  """{name: torch tensor or numeric array} -> {name: float32 numpy array}; CheckpointError
  naming `source` and the entry for anything else (a string, a nested object)."""
  out = {}
  for name, value in tensors.items():
    if hasattr(value, 'detach'):   # a torch tensor
      out[name] = value.detach().cpu().float().numpy()
      continue
    array = np.asarray(value) if isinstance(value, (int, float, np.ndarray, np.number)) else None
    if array is None or not np.issubdtype(array.dtype, np.number):
      raise CheckpointError(f'{source}: entry {name!r} is a {type(value).__name__}, not a '
                            'numeric tensor')
    out[name] = array.astype(np.float32)
  return out


def load_torch_state_dict(path: str, class_references: bool = False) -> dict[str, np.ndarray]:
  """A PyTorch `.pt`/`.pth` state dict -> {name: float32 array} via weights_only loading
  (with `class_references`, see `load_torch_object`).

  A dict wrapping the state dict under 'state_dict' (a Lightning checkpoint) or
  'model_state_dict' is unwrapped.
  """
  obj = load_torch_object(path, class_references=class_references)
  for wrapper in ('state_dict', 'model_state_dict'):
    if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
      obj = obj[wrapper]
  if not isinstance(obj, dict):
    raise CheckpointError(f'{path}: expected a state dict, found {type(obj).__name__}')
  return to_numpy(obj, path)


class TFNetworkStub:
  """Stands in for `dnnlib.tflib.network.Network`: keeps the pickled state as data."""

  def __setstate__(self, state):
    self.state = state   # checked by tf_generator_variables


def tf_generator_variables(gs, source: str) -> tuple[dict[str, np.ndarray],
                                                     dict[str, np.ndarray], dict]:
  """Gs of a TF StyleGAN pickle -> ({'mapping/<name>' | 'synthesis/<name>': float32
  array}, Gs's own variables ('dlatent_avg', ...), static kwargs of Gs merged with its
  networks'). CheckpointError naming `source` for every structural fault."""
  def network_state(net, what):
    if not isinstance(net, TFNetworkStub) or not isinstance(net.state, dict):
      raise CheckpointError(f'{source}: {what} is not a TF network record (its state is '
                            f'{type(getattr(net, "state", net)).__name__})')
    pairs = net.state.get('variables', [])
    if not isinstance(pairs, list) or not all(
        isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[0], str) for p in pairs):
      raise CheckpointError(f'{source}: {what} variables are not a list of (name, array)')
    arrays = {}
    for name, value in pairs:
      array = np.asarray(value)
      if not np.issubdtype(array.dtype, np.number):
        raise CheckpointError(f'{source}: {what} variable {name} is not numeric')
      arrays[name] = array.astype(np.float32)
    kwargs = net.state.get('static_kwargs') or {}
    return arrays, kwargs if isinstance(kwargs, dict) else {}

  own, kwargs = network_state(gs, 'Gs')
  variables = {}
  components = gs.state.get('components')
  if not isinstance(components, dict) or not all(
      part in components for part in ('mapping', 'synthesis')):
    raise CheckpointError(f'{source}: Gs has no mapping/synthesis networks (components '
                          f'{type(components).__name__})')
  for part in ('mapping', 'synthesis'):
    arrays, part_kwargs = network_state(components[part], f'Gs/{part}')
    variables.update({f'{part}/{name}': value for name, value in arrays.items()})
    kwargs = {**kwargs, **part_kwargs}
  return variables, own, kwargs


class EasyDictStub(dict):
  """`dnnlib.util.EasyDict` is a plain dict with attribute access; a dict is enough."""


_ALLOWED = {
    ('dnnlib.tflib.network', 'Network'): TFNetworkStub,
    ('dnnlib.util', 'EasyDict'): EasyDictStub,
    ('collections', 'OrderedDict'): dict,
}
# Protocol-2 pickles from Python 3 spell bytes as _codecs.encode(str, 'latin1').
_SAFE_FUNCTIONS = {('_codecs', 'encode')}
_NUMPY_MODULES = ('numpy', 'numpy.core.multiarray', 'numpy._core.multiarray',
                  'numpy.core.numeric', 'numpy._core.numeric')
_NUMPY_NAMES = ('_reconstruct', 'ndarray', 'dtype', 'scalar', '_frombuffer')


class _DataOnlyUnpickler(pickle.Unpickler):

  def __init__(self, f, extra_globals: dict, **kwargs):
    super().__init__(f, **kwargs)
    self.extra_globals = extra_globals

  def find_class(self, module, name):
    if (module, name) in self.extra_globals:
      return self.extra_globals[(module, name)]
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if (module in _NUMPY_MODULES and name in _NUMPY_NAMES) or (module, name) in _SAFE_FUNCTIONS:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f'refusing to load class {module}.{name}: '
                                 'a checkpoint may only hold networks and arrays')


def load_pickle(path: str, extra_globals: dict | None = None):
  """A pickle read as data: TF `Network`s become TFNetworkStub, numpy arrays stay arrays,
  `extra_globals` ((module, name) -> inert stand-in) add what a format needs; every other
  global is refused by name. CheckpointError naming the file otherwise."""
  check_file(path)
  try:
    with open(path, 'rb') as f:
      return _DataOnlyUnpickler(f, extra_globals or {}, encoding='latin1').load()
  except pickle.UnpicklingError as e:
    if str(e).startswith('refusing'):
      raise CheckpointError(f'{path}: {e}') from None
    raise CheckpointError(f'{path}: corrupt or truncated pickle ({e})') from None
  except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
          MemoryError, OverflowError) as e:
    raise CheckpointError(f'{path}: corrupt or truncated pickle ({type(e).__name__}: {e})'
                          ) from None


def load_tf_pickle(path: str):
  """An official NVIDIA StyleGAN pickle -> its (G, D, Gs) tuple of TFNetworkStub, no TF."""
  obj = load_pickle(path)
  if not is_tf_networks(obj):
    raise CheckpointError(f'{path}: expected the (G, D, Gs) tuple of an official StyleGAN pickle')
  return obj


def is_tf_networks(obj) -> bool:
  """Whether an unpickled object is the (G, D, Gs) tuple of NVIDIA's TF pickles."""
  return (isinstance(obj, tuple) and len(obj) == 3
          and all(isinstance(n, TFNetworkStub) for n in obj))


def is_zip(path: str) -> bool:
  return zipfile.is_zipfile(path)
