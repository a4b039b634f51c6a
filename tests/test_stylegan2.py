"""StyleGAN2: the three checkpoint formats, written here from the official outputs of
../shared/golden (stylegan2-ada-pytorch and rosinality's code), converted, and matched to
those outputs; pickles that would run code are refused or read without running it."""

import argparse
import json
import os
import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

import bounds
from configs import test_sg2
from conftest import relative_error, run_main, tf_network
from stylegan2_formats import (ada_init_kwargs, ada_record, load_golden, write_ada_pickle,
                               write_tf_pickle)
from convert_weights import __main__ as convert_cli
from convert_weights import stylegan2 as convert_stylegan2
from dgan_jax import generators
from dgan_jax.generators import base, stylegan2

# Max |ours - reference| / (reference max - min) per array: 10x the README's StyleGAN2
# parity table (w, w truncated, image, worst b{r}.conv* map), or 10x this CPU's
# measurement where that is smaller (in brackets).
PARITY_BOUNDS = {
    # README 2.4e-08, 7.8e-08, 2.9e-07, 7.0e-07 [measured 2.4e-08, 7.8e-08, 2.9e-07, 6.5e-07]
    'stylegan2ada_r32_seed0': {'w': 2.4e-7, 'w_truncated': 7.8e-7, 'image': 2.9e-6,
                               'features': 6.5e-6},
    # README 8.0e-09, 7.6e-08, 4.2e-07, 1.1e-06 [measured 8.0e-09, 7.6e-08, 3.2e-07, 9.9e-07]
    'stylegan2ada_r64_seed1': {'w': 8e-8, 'w_truncated': 7.6e-7, 'image': 3.3e-6,
                               'features': 9.9e-6},
    # README 6.4e-08, 6.4e-08, 2.9e-07, 7.2e-07 [measured 6.4e-08, 6.4e-08, 2.9e-07, 5.4e-07]
    'rosinality_r32_seed0': {'w': 6.4e-7, 'w_truncated': 6.4e-7, 'image': 2.9e-6,
                             'features': 5.5e-6},
}


ADA = ['stylegan2ada_r32_seed0', 'stylegan2ada_r64_seed1']


# ----------------------------------------------------------------------------------------
# Writing the official formats (stand-ins for NVIDIA's and rosinality's classes).

# ----------------------------------------------------------------------------------------
# Parity with the official outputs.

def assert_matches_golden(g, golden, bound, cutoff=8):
  """bound: the golden file's PARITY_BOUNDS (README, the StyleGAN2 parity table)."""
  w = golden['w'] if golden['w'].ndim == 2 else golden['w'][:, 0]   # rosinality: [B, D]
  assert relative_error(g.map(golden['z'])[:, 0], w) < bound['w']
  w_truncated = g.truncate(g.map(golden['z']), 0.7, cutoff)
  assert relative_error(w_truncated, golden['w_truncated']) < bound['w_truncated']
  image, maps = g.synthesize(golden['w_truncated'], noise='const')
  assert relative_error(np.asarray(image).transpose(0, 3, 1, 2), golden['image']) < bound['image']
  return maps


@pytest.mark.parametrize('name', ADA)
@pytest.mark.parametrize('fmt', ['ada', 'tf'])
def test_pickle_parity(tmp_path, name, fmt, fake_dnnlib):
  """README, the StyleGAN2 parity table: the row of this golden file (both formats)."""
  meta, sd, golden = load_golden(name)
  src = tmp_path / f'{name}.pkl'
  if fmt == 'ada':
    write_ada_pickle(src, meta, sd)
  else:
    write_tf_pickle(src, meta, sd)
  assert convert_cli.main(['stylegan2', str(src), str(tmp_path / 'g')]) == 0
  g = generators.load(str(tmp_path / 'g'))
  assert g.arch.conv_clamp == meta['conv_clamp']
  assert g.arch.channel_base == meta['channel_base'] and not g.arch.channels
  maps = assert_matches_golden(g, golden, PARITY_BOUNDS[name])
  expected_names = [k[len('feature/'):] for k in golden
                    if k.startswith('feature/') and '.conv' in k]
  assert g.feature_names == expected_names
  for spec, fmap in zip(g.feature_specs, maps):
    reference = golden[f'feature/{spec.name}']
    assert relative_error(np.asarray(fmap).transpose(0, 3, 1, 2),
                          reference) < PARITY_BOUNDS[name]['features'], spec.name
    assert (spec.channels, spec.height) == reference.shape[1:3]
  if meta['conv_clamp'] is not None:   # the clamp is reached, so it is exercised
    assert max(float(np.abs(golden[f'feature/{n}']).max()) for n in expected_names) == \
        pytest.approx(meta['conv_clamp'])


def rosinality_state_dict():
  meta, sd, golden = load_golden('rosinality_r32_seed0')
  return meta, {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, golden


@pytest.mark.parametrize('layout', ['converted', 'training'])
def test_rosinality_parity(tmp_path, layout):
  """README, the StyleGAN2 parity table's rosinality row ("the golden outputs match to
  1e-6" under Converting checkpoints)."""
  meta, sd, golden = rosinality_state_dict()
  latent_avg = torch.from_numpy(golden['latent_avg'])
  if layout == 'converted':
    obj = {'g_ema': sd, 'latent_avg': latent_avg}
  else:   # train.py's checkpoint: the args Namespace is refused by plain weights_only
    obj = {'g': sd, 'd': {}, 'g_ema': sd, 'g_optim': {}, 'd_optim': {},
           'args': argparse.Namespace(size=32, latent=64, n_mlp=2, channel_multiplier=2)}
  src = tmp_path / 'rosinality.pt'
  torch.save(obj, src)
  avg = []
  if layout == 'training':
    np.save(tmp_path / 'avg.npy', golden['latent_avg'])
    avg = ['--avg-latent', str(tmp_path / 'avg.npy')]
  assert convert_cli.main(['stylegan2', str(src), str(tmp_path / 'g'), *avg]) == 0
  g = generators.load(str(tmp_path / 'g'))
  assert [g.arch.channels_at(r) for r in (4, 8, 16, 32)] == [meta['channels'][r] for r in
                                                             (4, 8, 16, 32)]
  bound = PARITY_BOUNDS['rosinality_r32_seed0']
  maps = assert_matches_golden(g, golden, bound, cutoff=g.num_ws)   # no cutoff there
  names = ['conv1'] + [f'convs.{k}' for k in range(6)]
  for name, fmap in zip(names, maps, strict=True):
    assert relative_error(np.asarray(fmap).transpose(0, 3, 1, 2),
                          golden[f'feature/{name}']) < bound['features'], name


# ----------------------------------------------------------------------------------------
# Files that would run code, and files that are wrong.

class _RunsACommand:
  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


def test_pickle_calling_os_system_is_refused(tmp_path, fake_dnnlib, capsys):
  meta, sd, _ = load_golden(ADA[0])
  marker = tmp_path / 'ran'
  g_ema = ada_record(sd, ada_init_kwargs(meta))
  src = tmp_path / 'evil.pkl'
  with open(src, 'wb') as f:
    pickle.dump({'G_ema': g_ema, 'augment_pipe': _RunsACommand(f'touch {marker}')}, f,
                protocol=3)
  assert convert_cli.main(['stylegan2', str(src), str(tmp_path / 'g')]) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and str(src) in err and 'system' in err and 'refusing' in err
  assert not marker.exists() and not (tmp_path / 'g').exists()


def test_persistent_source_is_never_executed(tmp_path, fake_dnnlib):
  meta, sd, golden = load_golden(ADA[0])
  marker = tmp_path / 'ran'
  evil_source = f'import pathlib\npathlib.Path({str(marker)!r}).write_text("ran")\n'
  src = tmp_path / 'snapshot.pkl'
  write_ada_pickle(src, meta, sd, g_ema_src=evil_source)
  with open(src, 'rb') as f:
    assert evil_source.encode() in f.read()   # the source is really stored in the file
  convert_stylegan2.convert(str(src), str(tmp_path / 'g'))
  assert not marker.exists()
  assert_matches_golden(generators.load(str(tmp_path / 'g')), golden, PARITY_BOUNDS[ADA[0]])


def test_persistent_object_that_is_not_a_class_record(tmp_path, fake_dnnlib, capsys):
  class Module:
    def __reduce__(self):
      return (sys.modules['torch_utils.persistence']._reconstruct_persistent_obj,
              ({'type': 'function', 'module_src': 'print(1)'},))
  src = tmp_path / 'odd.pkl'
  with open(src, 'wb') as f:
    pickle.dump({'G_ema': Module()}, f, protocol=3)
  assert convert_cli.main(['stylegan2', str(src), str(tmp_path / 'g')]) == 1
  assert 'not a (class, state) record' in capsys.readouterr().err


def test_bad_files_get_one_line(tmp_path, fake_dnnlib, capsys):
  meta, sd, _ = load_golden(ADA[0])
  good = tmp_path / 'good.pkl'
  write_ada_pickle(good, meta, sd)
  data = good.read_bytes()
  cases = {'truncated.pkl': data[:len(data) // 2], 'empty.pkl': b'',
           'foreign.pkl': pickle.dumps({'weights': [1, 2, 3]})}
  missing = dict(sd)
  del missing['synthesis.b16.conv1.affine.weight']
  write_ada_pickle(tmp_path / 'missing.pkl', meta, missing)
  nan = dict(sd, **{'synthesis.b8.conv0.weight': np.full_like(sd['synthesis.b8.conv0.weight'],
                                                               np.nan)})
  write_ada_pickle(tmp_path / 'nan.pkl', meta, nan)
  for name, content in cases.items():
    (tmp_path / name).write_bytes(content)
  kwargs = ada_init_kwargs(meta)
  kwargs['synthesis_kwargs']['architecture'] = 'resnet'
  with open(tmp_path / 'resnet.pkl', 'wb') as f:
    pickle.dump({'G_ema': ada_record(sd, kwargs)}, f, protocol=3)
  gs = tf_network(fake_dnnlib, 'G', {}, {'mapping': tf_network(fake_dnnlib, 'G_mapping', {})})
  with open(tmp_path / 'tf_without_synthesis.pkl', 'wb') as f:
    pickle.dump((gs, gs, gs), f, protocol=2)
  torch.save({'generator': {'w': torch.ones(2)}}, tmp_path / 'foreign.pt')
  (tmp_path / 'folder.pkl').mkdir()
  expected = {'truncated.pkl': 'corrupt or truncated', 'empty.pkl': 'corrupt or truncated',
              'foreign.pkl': 'neither a stylegan2-ada-pytorch pickle',
              'missing.pkl': 'synthesis/b16/conv1/affine/weight',
              'nan.pkl': 'NaN or Inf', 'absent.pkl': 'no such file',
              'resnet.pkl': "'resnet' synthesis architecture",
              'tf_without_synthesis.pkl': 'no mapping/synthesis networks',
              'foreign.pt': 'not a rosinality stylegan2-pytorch checkpoint',
              'folder.pkl': 'a folder'}
  for name, words in expected.items():
    dst = tmp_path / f'out_{name}'
    assert convert_cli.main(['stylegan2', str(tmp_path / name), str(dst)]) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and name in err and words in err, (name, err)
    assert not dst.exists()


# ----------------------------------------------------------------------------------------
# The generator in the pipeline.

def test_batching_and_feature_specs():
  """Sample i's image and maps do not depend on the batch it is in (per-sample noise)."""
  arch = stylegan2.StyleGAN2Arch(resolution=16, z_dim=8, w_dim=8, channel_base=64,
                                 channel_max=8, mapping_layers=2)
  g = stylegan2.StyleGAN2Generator.random({'resolution': 16, 'z_dim': 8, 'w_dim': 8,
                                           'channel_base': 64, 'channel_max': 8,
                                           'mapping_layers': 2}, seed=0, dtype=jnp.float32)
  assert g.arch == arch
  assert [(s.name, s.height, s.channels) for s in g.feature_specs] == [
      ('b4.conv1', 4, 8), ('b8.conv0', 8, 8), ('b8.conv1', 8, 8), ('b16.conv0', 16, 4),
      ('b16.conv1', 16, 4)]
  sampling = base.StyleSampling(0, 8, g.num_ws, 0.7, 8, 'per_sample')
  variables = g.variables(sampling)
  inputs = sampling.draw('generate', np.arange(5, dtype=np.uint32))
  apply = jax.jit(lambda v, x: g.apply(v, x, sampling))   # eager flax is slow op by op
  whole, whole_maps, _ = apply(variables, inputs)
  part, part_maps, _ = apply(variables, jax.tree.map(lambda a: a[3:4], inputs))
  np.testing.assert_allclose(part[0], whole[3], atol=1e-5)
  np.testing.assert_allclose(part_maps[-1][0], whole_maps[-1][3], atol=1e-5)
  bf16 = stylegan2.StyleGAN2Generator(g.arch, g.params, g.avg_latent, g.const_noise,
                                      dtype=jnp.bfloat16)
  image16 = jax.jit(lambda z: bf16.synthesize(bf16.truncate(bf16.map(z)))[0])(inputs['z'])
  image32 = jax.jit(lambda z: g.synthesize(g.truncate(g.map(z)))[0])(inputs['z'])
  assert image16.dtype == jnp.float32 and relative_error(image16, image32) < 0.05


def test_conditional_mapping_matches_a_hand_computation():
  """c_dim > 0: the embedded label is normalised and concatenated to the normalised z."""
  arch = stylegan2.StyleGAN2Arch(resolution=4, z_dim=3, w_dim=4, c_dim=2, channel_base=16,
                                 channel_max=4, mapping_layers=1, mapping_lr_multiplier=0.5)
  params = stylegan2.init_params(arch, jax.random.key(1))
  z = np.array([[1., -2., 0.5]], np.float32)
  c = np.array([[0., 1.]], np.float32)
  w = np.asarray(stylegan2.mapping(params, arch, z, c))
  m = jax.tree.map(np.asarray, params['mapping'])
  embed = c @ m['embed']['weight'].T / np.sqrt(2) + m['embed']['bias']
  norm = lambda v: v / np.sqrt(np.mean(v ** 2, axis=1, keepdims=True) + 1e-8)
  x = np.concatenate([norm(z), norm(embed)], 1)
  x = x @ (m['fc0']['weight'] * 0.5 / np.sqrt(7)).T + m['fc0']['bias'] * 0.5
  x = np.where(x >= 0, x, 0.2 * x) * np.sqrt(2)
  np.testing.assert_allclose(w[:, 0], x, rtol=1e-5, atol=1e-6)
  assert w.shape == (1, arch.num_ws, 4)


def test_every_stage_runs_on_the_tiny_config(tmp_path):
  """configs/test_sg2.py through all stages (CLI). Independent checks: the interpreter reads
  NVIDIA's channel rule min(256 // r, 32) over b4.conv1 .. b32.conv1, and the sample
  stage's images are what the library API draws from the stored latents, within one level
  (the stage's compiled batches of config.sample.batch_size and this one call of the API
  are two programs: on an AVX-512 EPYC one pixel differed by one level)."""
  workdir = tmp_path / 'work'
  result = run_main('--config=configs/test_sg2.py', f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-3000:]
  interpreter = json.loads((workdir / 'interpreter' / 'interpreter.json').read_text())
  assert interpreter['layout']['channels'] == [32, 32, 32, 16, 16, 8, 8]
  assert interpreter['arch']['feature_dim'] == 144
  generation = json.loads((workdir / 'dataset' / 'generation.json').read_text())
  assert (generation['num_samples'], generation['num_kept']) == (20, 18)
  assert set(json.loads((workdir / 'eval.json').read_text())['runs']) >= {'synthetic'}
  assert (workdir / 'report.md').exists()
  config = test_sg2.get_config()
  g = generators.from_config(config.generator, config.seed)
  z = np.load(workdir / 'annotate' / 'latents.npy')
  image, _ = g(z, psi=config.generator.truncation_psi, cutoff=config.generator.truncation_cutoff)
  expected = np.clip(np.floor(np.asarray(image) * 127.5 + 128), 0, 255).astype(np.uint8)
  top, bottom = config.data.crop_rows
  for i in range(len(z)):
    bounds.assert_images_within_one_level(
        np.asarray(Image.open(workdir / 'annotate' / f'image_{i}.png')), expected[i, top:bottom])
