"""Shared test helpers: golden reference files and their weights."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import types

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One persistent compilation cache per test session, shared with the subprocesses the
# tests start: the many tests that compile the same tiny steps (each stage run through the
# CLI, a resumed run) compile each once. A fresh folder, so no run trusts an older one.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE_DIR = tempfile.mkdtemp(prefix='dgan_jax_test_xla_cache_')
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE_DIR,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')


def run_main(*args, timeout: int = 600) -> subprocess.CompletedProcess:
  """`python -m dgan_jax.main *args` from the repository root, output captured."""
  return subprocess.run([sys.executable, '-m', 'dgan_jax.main', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


# Workdirs made once per session through the CLI and shared by the tests that read them
# (none may change them: copy one first).
LABEL_STAGES = '--stages=sample,train_interpreter,generate'


@pytest.fixture(scope='session')
def stylegan_workdir(tmp_path_factory):
  """configs/test.py (tiny StyleGAN, MLP ensemble, brightness masks) through sample,
  train_interpreter and generate."""
  workdir = tmp_path_factory.mktemp('stylegan') / 'work'
  result = run_main('--config=configs/test.py', f'--workdir={workdir}', LABEL_STAGES)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.fixture(scope='session')
def biggan_config():
  """configs/test_biggan.py: a tiny random-weight BigGAN (32 px, 1000 classes)."""
  import importlib  # pylint: disable=import-outside-toplevel
  return importlib.import_module('configs.test_biggan').get_config()


@pytest.fixture(scope='session')
def tiny_biggan(biggan_config):
  from dgan_jax import generators  # pylint: disable=import-outside-toplevel
  return generators.from_config(biggan_config.generator, biggan_config.seed)


@pytest.fixture(scope='session')
def biggan_workdir(tmp_path_factory):
  """configs/test_biggan.py (tiny BigGAN, two segmentation heads, brightness masks)
  through every stage: foreground/background downstream, stand-in test images. The
  workdir is given relative to the repository, as users type it (orbax, which writes
  the downstream checkpoints, refuses relative paths unless main resolves them)."""
  workdir = tmp_path_factory.mktemp('biggan') / 'work'
  relative = os.path.relpath(workdir, REPO)
  assert not os.path.isabs(relative)
  result = run_main('--config=configs/test_biggan.py', f'--workdir={relative}', timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir
if REPO not in sys.path:
  sys.path.insert(0, REPO)

DATA_DIR = os.path.join(REPO, 'tests', 'data')
SHARED_GOLDEN = os.path.join(os.path.dirname(REPO), 'shared', 'golden')


def import_torchvision():
  """torchvision for its pure-PyTorch models, or a skip without it.

  The package index's torchvision 0.28.0 wheel (the release for torch 2.13) is the CUDA
  build: its C++ ops (nms, roi_align, ...) cannot load beside the CPU torch, and its
  `_meta_registrations` module, which registers fake kernels for those ops at import,
  then fails. That module is stubbed out in that case; the models (ResNet, DeepLabV3)
  use none of the ops."""
  pytest.importorskip('torch')
  try:
    import torchvision  # pylint: disable=import-outside-toplevel
  except ImportError:
    pytest.skip('torchvision is not installed')
  except RuntimeError as e:
    if 'torchvision::' not in str(e):
      raise
    for name in [n for n in sys.modules if n == 'torchvision' or n.startswith('torchvision.')]:
      del sys.modules[name]
    sys.modules['torchvision._meta_registrations'] = types.ModuleType(
        'torchvision._meta_registrations')
    import torchvision  # pylint: disable=import-outside-toplevel
  return torchvision


def golden_path(name: str, required: str = '') -> str:
  """tests/data/<name> if shipped, else ../shared/golden/<name>. When neither has it the
  test fails under CI (environment CI=true, as .ci/run sets) or when `required` (why no
  other test covers what this golden checks), and is skipped otherwise."""
  for folder in (DATA_DIR, SHARED_GOLDEN):
    path = os.path.join(folder, name)
    if os.path.exists(path):
      return path
  message = f'{name} not available (neither tests/data nor {SHARED_GOLDEN})'
  if required:
    pytest.fail(f'{message}: {required}')
  if os.environ.get('CI', '').lower() in ('true', '1'):
    pytest.fail(f'{message}: CI runs every golden comparison (CI=true)')
  pytest.skip(message)


def golden_keys(golden) -> list[tuple[str, tuple[int, ...]]]:
  out = []
  for entry in golden['keys']:
    name, dims = str(entry).rsplit(':', 1)
    out.append((name, tuple(int(d) for d in dims.split('x'))))
  return out


def rebuild_stylegan1_state_dict(golden, seed: int) -> dict[str, np.ndarray]:
  """The reference network's weights, drawn as ../shared/golden/README.md prescribes."""
  rng = np.random.RandomState(seed)
  state = {}
  for name, shape in golden_keys(golden):
    if name.endswith('intermediate.kernel'):
      continue
    if name.endswith('noise.weight'):
      value = rng.normal(0, 0.2, shape)
    elif name.endswith('bias'):
      value = rng.normal(0, 0.1, shape)
    else:
      value = rng.normal(0, 1, shape)
    state[name] = value.astype(np.float32)
  return state


def relative_error(actual, expected) -> float:
  """max |actual - expected| / (max - min of expected)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  return float(np.abs(actual - expected).max() / (expected.max() - expected.min()))


def as_golden_grid(feature_nhwc) -> np.ndarray:
  """[B, H, W, C] -> NCHW, strided like the golden files for maps wider than 32."""
  x = np.asarray(feature_nhwc).transpose(0, 3, 1, 2)
  width = x.shape[-1]
  return x[:, :, 1::width // 32, 1::width // 32] if width > 32 else x


class _TFNetwork:
  """Stands in for `dnnlib.tflib.network.Network` so pickle writes the official name."""

  def __init__(self, state):
    self._state = state

  def __getstate__(self):
    return self._state


def _reconstruct_persistent_obj(meta):
  raise AssertionError('the official loader would execute meta["module_src"] here')


class Persistent:
  """A stylegan2-ada-pytorch `torch_utils.persistence` object as it pickles: a call of
  `_reconstruct_persistent_obj(meta)` with its class name, stored source and state."""

  def __init__(self, class_name, state, module_src='# the network source'):
    self.class_name, self.state, self.module_src = class_name, state, module_src

  def __reduce__(self):
    return (_reconstruct_persistent_obj, (dict(
        type='class', version=6, module_src=self.module_src, class_name=self.class_name,
        state=self.state),))


def stand_in_modules() -> dict[str, types.ModuleType]:
  """sys.modules entries under which pickle finds the stand-ins by their official names
  (dnnlib.tflib.network.Network, torch_utils.persistence._reconstruct_persistent_obj)."""
  modules = {name: types.ModuleType(name) for name in (
      'dnnlib', 'dnnlib.tflib', 'dnnlib.tflib.network', 'torch_utils',
      'torch_utils.persistence')}
  for obj, module, name in ((_TFNetwork, 'dnnlib.tflib.network', 'Network'),
                            (_reconstruct_persistent_obj, 'torch_utils.persistence',
                             '_reconstruct_persistent_obj')):
    obj.__module__, obj.__qualname__ = module, name
    setattr(modules[module], name, obj)
  return modules


@pytest.fixture
def fake_dnnlib(monkeypatch):
  """The stand-ins of stand_in_modules(), registered for this test; -> the TF Network class."""
  for name, module in stand_in_modules().items():
    monkeypatch.setitem(sys.modules, name, module)
  return _TFNetwork


def tf_network(Network, name, variables, components=None, **kwargs):
  return Network({'version': 4, 'name': name, 'static_kwargs': kwargs,
                  'components': components or {}, 'build_module_src': 'source code',
                  'build_func_name': f'G_{name}', 'variables': list(variables.items())})
