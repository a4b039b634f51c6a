"""`python -m convert_weights stylegan2` on checkpoints written here from random weights
(no golden files needed): an ADA pickle's tensors are bounds-checked, a TF pickle's
LabelEmbed is read and LabelConcat refused, a 1024 px network converts and runs, and the
pipeline refuses a class-conditional one. What docs/formats.md says of each."""

import collections
import io
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import test_sg2
from conftest import _TFNetwork, tf_network
from stylegan2_formats import ada_record, tf_variables
from convert_weights import __main__ as convert_cli
from dgan_jax import generators
from dgan_jax import stages
from dgan_jax.errors import InputError
from dgan_jax.generators import checkpoint
from dgan_jax.generators import stylegan2


def random_state_dict(arch: stylegan2.StyleGAN2Arch, seed: int = 0) -> dict[str, np.ndarray]:
  """Every weight drawn at random (none left at its initial value), in stylegan2-ada-
  pytorch's state-dict names and layouts (ours, with '.' for '/'), with each layer's
  noise_const and mapping.w_avg."""
  rng = np.random.default_rng(seed)
  sd = {name.replace('/', '.'): (rng.normal(0, 0.5, shape) + (1 if name.endswith('affine/bias')
                                                               else 0)).astype(np.float32)
        for name, shape in stylegan2.param_shapes(arch).items()}
  for r, name in arch.layers:
    sd[f'synthesis.b{r}.{name}.noise_const'] = rng.standard_normal((r, r)).astype(np.float32)
  sd['mapping.w_avg'] = rng.normal(0, 0.3, arch.w_dim).astype(np.float32)
  return sd


def ada_kwargs(arch: stylegan2.StyleGAN2Arch) -> dict:
  return {'z_dim': arch.z_dim, 'c_dim': arch.c_dim, 'w_dim': arch.w_dim,
          'img_resolution': arch.resolution, 'img_channels': 3,
          'mapping_kwargs': {'num_layers': arch.mapping_layers},
          'synthesis_kwargs': {'channel_base': arch.channel_base,
                               'channel_max': arch.channel_max, 'num_fp16_res': 0,
                               'conv_clamp': arch.conv_clamp, 'architecture': 'skip'}}


def write_ada(path, arch, sd, replace: dict | None = None) -> None:
  """An ADA snapshot of `sd`; `replace` (state-dict name -> object) puts other objects in
  place of some parameters."""
  g_ema = ada_record(sd, ada_kwargs(arch))
  for name, value in (replace or {}).items():
    *modules, leaf = name.split('.')
    record = g_ema
    for module in modules:
      record = record.state['_modules'][module]
    record.state['_parameters'][leaf] = value
  with open(path, 'wb') as f:
    pickle.dump({'G_ema': g_ema, 'augment_pipe': None}, f, protocol=3)


def convert(src, dst, capsys) -> tuple[int, str]:
  code = convert_cli.main(['stylegan2', str(src), str(dst)])
  return code, capsys.readouterr().err


def assert_refused(src, dst, capsys, *words) -> None:
  """One line naming the file and `words`; nothing written."""
  code, err = convert(src, dst, capsys)
  assert code == 1 and err.count('\n') == 1 and err.startswith('error: '), err
  for word in (str(src), *words):
    assert word in err, (word, err)
  assert not dst.exists() and not any(dst.parent.glob(f'{dst.name}*'))


SMALL = stylegan2.StyleGAN2Arch(resolution=8, z_dim=4, w_dim=4, channel_base=32,
                                channel_max=4, mapping_layers=2)


# ----------------------------------------------------------------------------------------
# ADA pickles: tensors rebuilt from their bytes, bounds-checked.

def _float_storage(values) -> torch.storage.TypedStorage:
  """The typed storage a float32 tensor pickles (as torch.storage._load_from_bytes)."""
  return torch.storage.TypedStorage(
      wrap_storage=torch.from_numpy(np.asarray(values, np.float32)).untyped_storage(),
      dtype=torch.float32, _internal=True)


class _BadTensor:
  """Pickles as torch does a tensor (torch._utils._rebuild_tensor_v2 over a storage), with
  the layout given here instead of the storage's own."""

  def __init__(self, values, offset, size, stride):
    self.storage = _float_storage(values)
    self.layout = (offset, tuple(size), tuple(stride))

  def __reduce__(self):
    return (torch._utils._rebuild_tensor_v2, (self.storage, *self.layout, False,   # pylint: disable=protected-access
                                              collections.OrderedDict()))


class _TruncatedStorage:
  """A storage's torch.save bytes cut short, as torch.storage._load_from_bytes reads them."""

  def __init__(self, values, keep: int):
    stream = io.BytesIO()
    torch.save(_float_storage(values), stream, _use_new_zipfile_serialization=False)
    self.data = stream.getvalue()[:keep]

  def __reduce__(self):
    return (torch.storage._load_from_bytes, (self.data,))   # pylint: disable=protected-access


class _TensorOverTruncatedStorage(_BadTensor):

  def __init__(self, values, keep):
    self.storage = _TruncatedStorage(values, keep)
    self.layout = (0, (len(values),), (1,))


def test_ada_pickle_tensors_are_bounds_checked(tmp_path, fake_dnnlib, capsys):
  """A tensor whose storage is too short for its size and strides, or whose offset lies
  outside its storage, or whose storage's bytes stop short, is refused in one line naming
  the file, before anything is written; the same pickle with the true tensor converts to
  exactly its weights."""
  sd = random_state_dict(SMALL)
  name = 'synthesis.b8.conv1.bias'     # [4]
  values = sd[name]
  good = tmp_path / 'good.pkl'
  write_ada(good, SMALL, sd)
  code, err = convert(good, tmp_path / 'g', capsys)
  assert code == 0, err
  converted = checkpoint.flatten(generators.load(str(tmp_path / 'g')).params)
  np.testing.assert_array_equal(converted['synthesis/b8/conv1/bias'], values)
  cases = {
      'short.pkl': (_BadTensor(values[:3], 0, (4,), (1,)), 'outside its storage'),
      'strided.pkl': (_BadTensor(values, 0, (4,), (2,)), 'outside its storage'),
      'offset.pkl': (_BadTensor(values, 4, (4,), (1,)), 'outside its storage'),
      'offset_far.pkl': (_BadTensor(values, 2 ** 40, (4,), (1,)), 'outside its storage'),
      'negative_offset.pkl': (_BadTensor(values, -1, (4,), (1,)), 'outside its storage'),
      'negative_stride.pkl': (_BadTensor(values, 3, (4,), (-1,)), 'unreadable layout'),
      'truncated_storage.pkl': (_TensorOverTruncatedStorage(values, -6),
                                'a truncated tensor storage'),
  }
  for file_name, (tensor, words) in cases.items():
    src = tmp_path / file_name
    write_ada(src, SMALL, sd, {name: tensor})
    assert_refused(src, tmp_path / f'out_{file_name}', capsys, words)


# ----------------------------------------------------------------------------------------
# NVIDIA's TF pickles: a conditional model with LabelEmbed (ADA's TF code) is read, one
# with LabelConcat (the original stylegan2 repository) is refused.

CONDITIONAL = stylegan2.StyleGAN2Arch(resolution=8, z_dim=4, w_dim=4, c_dim=3, channel_base=32,
                                      channel_max=4, mapping_layers=2)


def write_tf(path, arch, sd, label_layer: str | None) -> None:
  meta = {'mapping_layers': arch.mapping_layers, 'img_resolution': arch.resolution}
  mapping, synthesis = tf_variables(meta, sd)
  if label_layer == 'LabelEmbed':   # ADA's TF mapping: Dense [in, out]
    mapping['LabelEmbed/weight'] = sd['mapping.embed.weight'].T
    mapping['LabelEmbed/bias'] = sd['mapping.embed.bias']
  elif label_layer == 'LabelConcat':   # the original repo: a [c_dim, latent] matrix
    mapping['LabelConcat/weight'] = np.ones((arch.c_dim, arch.z_dim), np.float32)
  kwargs = dict(resolution=arch.resolution, fmap_base=arch.channel_base // 2,
                fmap_max=arch.channel_max, architecture='skip', conv_clamp=None)
  gs = tf_network(_TFNetwork, 'G', {'dlatent_avg': sd['mapping.w_avg']}, {
      'mapping': tf_network(_TFNetwork, 'G_mapping', mapping, mapping_lrmul=0.01),
      'synthesis': tf_network(_TFNetwork, 'G_synthesis', synthesis, **kwargs)}, **kwargs)
  with open(path, 'wb') as f:
    pickle.dump((gs, gs, gs), f, protocol=2)


def test_tf_label_embed_is_read_and_label_concat_refused(tmp_path, fake_dnnlib, capsys):
  sd = random_state_dict(CONDITIONAL, seed=1)
  src = tmp_path / 'embed.pkl'
  write_tf(src, CONDITIONAL, sd, 'LabelEmbed')
  code, err = convert(src, tmp_path / 'g', capsys)
  assert code == 0, err
  g = generators.load(str(tmp_path / 'g'))
  assert g.arch.c_dim == 3 and g.arch.z_dim == 4
  flat = checkpoint.flatten(g.params)
  np.testing.assert_array_equal(flat['mapping/embed/weight'], sd['mapping.embed.weight'])
  np.testing.assert_array_equal(flat['mapping/embed/bias'], sd['mapping.embed.bias'])
  np.testing.assert_array_equal(flat['mapping/fc0/weight'], sd['mapping.fc0.weight'])
  # The labels condition the mapping: W from the converted weights equals W from the
  # source weights, and another label gives another W.
  reference = stylegan2.StyleGAN2Generator(
      CONDITIONAL, checkpoint.unflatten({k.replace('.', '/'): v for k, v in sd.items()
                                          if k in {n.replace('/', '.') for n in flat}}))
  z = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
  c = np.eye(3, dtype=np.float32)[[0, 2]]
  np.testing.assert_allclose(g.map(z, c), reference.map(z, c), rtol=1e-6, atol=1e-6)
  w = np.asarray(g.map(z, c))
  assert np.abs(w - np.asarray(g.map(z, c[::-1]))).max() > 1e-3 * np.abs(w).max()
  concat = tmp_path / 'concat.pkl'
  write_tf(concat, CONDITIONAL, sd, 'LabelConcat')
  assert_refused(concat, tmp_path / 'g_concat', capsys, 'LabelConcat', 'LabelEmbed')


# ----------------------------------------------------------------------------------------
# The pipeline refuses a class-conditional StyleGAN2 and says so.

def test_conditional_stylegan2_is_refused_by_the_pipeline(tmp_path, fake_dnnlib, capsys):
  sd = random_state_dict(CONDITIONAL, seed=3)
  src = tmp_path / 'conditional.pkl'
  write_ada(src, CONDITIONAL, sd)
  assert convert(src, tmp_path / 'g', capsys)[0] == 0
  config = test_sg2.get_config()
  with config.unlocked():
    config.generator.random_init.type = ''
    config.generator.checkpoint = str(tmp_path / 'g')
  workdir = tmp_path / 'work'
  with pytest.raises(InputError, match=r'^config.generator: this StyleGAN2 is class-'
                     r'conditional \(c_dim 3\); the pipeline draws unconditional samples only '
                     r'\(the library API takes labels: g.map\(z, c\)\)$'):
    stages.sample(config, str(workdir))
  assert not (workdir / 'annotate').exists()
  g = generators.load(str(tmp_path / 'g'))   # the library API takes labels
  assert g.map(np.zeros((1, 4), np.float32), np.eye(3, dtype=np.float32)[:1]).shape == (1, 4, 4)


# ----------------------------------------------------------------------------------------
# 1024 px (tiny channels): converts, runs, and names its maps as docs/formats.md says.

def test_a_1024_px_network_converts_and_runs(tmp_path, fake_dnnlib, capsys):
  arch = stylegan2.StyleGAN2Arch(resolution=1024, z_dim=4, w_dim=4, channel_base=2048,
                                 channel_max=4, mapping_layers=1)
  sd = random_state_dict(arch, seed=4)
  src = tmp_path / 'g1024.pkl'
  write_ada(src, arch, sd)
  code, err = convert(src, tmp_path / 'g', capsys)
  assert code == 0, err
  g = generators.load(str(tmp_path / 'g'))
  assert g.resolution == 1024 and g.num_ws == 18
  resolutions = [4, 8, 16, 32, 64, 128, 256, 512, 1024]
  assert g.feature_names == ['b4.conv1'] + [f'b{r}.{n}' for r in resolutions[1:]
                                            for n in ('conv0', 'conv1')]
  w = g.truncate(g.map(np.ones((1, 4), np.float32)), psi=0.7, cutoff=8)
  image, maps = jax.jit(g.synthesize)(w)
  assert image.shape == (1, 1024, 1024, 3) and np.isfinite(np.asarray(image)).all()
  channels = {r: min(2048 // r, 4) for r in resolutions}     # NVIDIA's rule: 2 at 1024 px
  assert [m.shape for m in maps] == [(1, s.height, s.width, channels[s.height])
                                     for s in g.feature_specs]
  assert [(s.height, s.channels) for s in g.feature_specs][-2:] == [(1024, 2), (1024, 2)]
  assert float(jnp.std(image)) > 1e-3   # weights that do something


def test_config_f_channels():
  """docs/formats.md: 5,504 feature channels at 512 px config-f (channel_base 32768, max
  512: 512 channels up to 64 px, then 256, 128, 64), every SynthesisLayer's output."""
  arch = stylegan2.StyleGAN2Arch(resolution=512)
  per_layer = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64}
  assert [arch.channels_at(r) for r, _ in arch.layers] == [per_layer[r] for r, _ in arch.layers]
  assert sum(per_layer[r] for r, _ in arch.layers) == 5504 == sum(
      arch.channels_at(r) for r, _ in arch.layers)
