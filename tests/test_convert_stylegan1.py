"""Conversion of DatasetGAN .pt files and NVIDIA TF pickles, and their failure modes."""

import os
import pickle

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import golden_path, rebuild_stylegan1_state_dict, relative_error, tf_network
from convert_weights import __main__ as convert_cli
from dgan_jax import generators
from dgan_jax.generators import style
from test_stylegan1 import PARITY_BOUNDS

# The golden file's row of the README's StyleGAN (v1) table, through each format.
BOUND = PARITY_BOUNDS['stylegan1_r64_seed0.npz']
# NVIDIA's TF code normalises with epsilon 1e-8, DatasetGAN's port (the golden) with 1e-5:
# the image differs by that, measured 4.1e-05 of its range (feature3 2.3e-05), not by
# float error. 10x that.
TF_EPSILON_BOUND = 4e-4


@pytest.fixture(scope='module')
def golden():
  return np.load(golden_path('stylegan1_r64_seed0.npz'))


@pytest.fixture(scope='module')
def state_dict(golden):
  return rebuild_stylegan1_state_dict(golden, 0)


def _torch_save(state, path):
  torch = pytest.importorskip('torch')
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)


def test_pt_with_dataparallel_prefix_round_trip(tmp_path, golden, state_dict, capsys):
  src, dst, avg = tmp_path / 'g.for_g_all.pt', tmp_path / 'converted', tmp_path / 'avg.npy'
  state = {f'module.{k}': v for k, v in state_dict.items()}
  state['module.g_synthesis.blocks.8x8.conv0_up.intermediate.kernel'] = np.ones((1, 1, 3, 3))
  _torch_save(state, src)
  np.save(avg, golden['avg_latent'])
  assert convert_cli.main(['stylegan1', str(src), str(dst), '--avg-latent', str(avg)]) == 0
  assert 'wrote' in capsys.readouterr().out
  g = generators.load(str(dst))
  assert (g.resolution, g.num_ws) == (64, 10)
  w = g.truncate(g.map(golden['z']))
  assert relative_error(w, golden['w_truncated']) < BOUND['w_truncated']
  noise = [golden[f'noise{j}'] for j in range(10)]
  image, _ = g.synthesize(golden['w_truncated'], noise=noise)
  assert relative_error(np.asarray(image).transpose(0, 3, 1, 2), golden['image']) < BOUND['image']
  # The .pt file has no noise: the converter stores N(0,1) from RandomState(0), so
  # the default noise='const' is deterministic and equals that draw.
  const_image, _ = g.synthesize(golden['w_truncated'])
  drawn = style.draw_const_noise(g.arch, 0)
  np.testing.assert_allclose(const_image, g.synthesize(golden['w_truncated'], drawn)[0],
                             atol=1e-5)
  np.testing.assert_allclose(drawn[0][0, :, :, 0],
                             np.random.RandomState(0).standard_normal((4, 4)), atol=1e-6)


def _to_tf_variables(state):
  """DatasetGAN names/layouts -> NVIDIA TF names/layouts, written out by hand."""
  mapping, synthesis = {}, {}
  for i in range(8):
    mapping[f'Dense{i}/weight'] = state[f'g_mapping.dense{i}.weight'].T
    mapping[f'Dense{i}/bias'] = state[f'g_mapping.dense{i}.bias']
  conv = lambda w: w.transpose(2, 3, 1, 0)
  for res in (4, 8, 16, 32, 64):
    p = f'g_synthesis.blocks.{res}x{res}'
    layers = ([('Const', None, 'epi1'), ('Conv', 'conv', 'epi2')] if res == 4 else
              [('Conv0_up', 'conv0_up', 'epi1'), ('Conv1', 'conv1', 'epi2')])
    for tf_name, torch_conv, epi in layers:
      t = f'{res}x{res}/{tf_name}'
      if torch_conv:
        synthesis[f'{t}/weight'] = conv(state[f'{p}.{torch_conv}.weight'])
        synthesis[f'{t}/bias'] = state[f'{p}.{torch_conv}.bias']
      else:
        synthesis[f'{t}/const'] = state[f'{p}.const']
        synthesis[f'{t}/bias'] = state[f'{p}.bias']
      synthesis[f'{t}/Noise/weight'] = state[f'{p}.{epi}.top_epi.noise.weight']
      synthesis[f'{t}/StyleMod/weight'] = state[f'{p}.{epi}.style_mod.lin.weight'].T
      synthesis[f'{t}/StyleMod/bias'] = state[f'{p}.{epi}.style_mod.lin.bias']
  synthesis['ToRGB_lod0/weight'] = conv(state['g_synthesis.torgb.weight'])
  synthesis['ToRGB_lod0/bias'] = state['g_synthesis.torgb.bias']
  synthesis['ToRGB_lod1/weight'] = np.zeros((1, 1, 32, 3), np.float32)  # unused lods
  synthesis['lod'] = np.float32(0)
  return mapping, synthesis


def test_tf_pickle(tmp_path, golden, state_dict, fake_dnnlib):
  mapping, synthesis = _to_tf_variables(state_dict)
  for j in range(10):
    synthesis[f'noise{j}'] = golden[f'noise{j}'][:1]  # [1, 1, r, r]: sample 0's noise
  gs = tf_network(fake_dnnlib, 'G', {'dlatent_avg': golden['avg_latent'][0]}, {
      'mapping': tf_network(fake_dnnlib, 'G_mapping', mapping),
      'synthesis': tf_network(fake_dnnlib, 'G_synthesis', synthesis, resolution=64)})
  discriminator = tf_network(fake_dnnlib, 'D', {'4x4/Dense0/weight': np.zeros((2, 2))})
  src = tmp_path / 'karras2019stylegan-test-64x64.pkl'
  with open(src, 'wb') as f:
    pickle.dump((gs, discriminator, gs), f, protocol=2)
  dst = tmp_path / 'converted'
  assert convert_cli.main(['stylegan1', str(src), str(dst)]) == 0
  g = generators.load(str(dst))
  assert g.arch.instance_norm_eps == 1e-8  # NVIDIA's own epsilon
  assert relative_error(g.map(golden['z']), golden['w']) < BOUND['w']
  # The pickle's noise0.. become the constant noise.
  image, features = g.synthesize(golden['w_truncated'][:1])
  assert relative_error(np.asarray(image).transpose(0, 3, 1, 2),
                        golden['image'][:1]) < TF_EPSILON_BOUND
  assert relative_error(np.asarray(features[3]).transpose(0, 3, 1, 2),
                        golden['feature3'][:1]) < TF_EPSILON_BOUND
  # Gs's dlatent_avg [512] is the truncation average.
  w = np.asarray(g.map(golden['z']))
  expected = w.copy()
  expected[:, :8] = golden['avg_latent'][0] + 0.7 * (w[:, :8] - golden['avg_latent'][0])
  np.testing.assert_allclose(g.truncate(w, psi=0.7, cutoff=8), expected, atol=1e-6)


def test_pickle_with_code_is_refused(tmp_path):
  class Exploit:
    def __reduce__(self):
      return (os.system, ('echo pwned',))
  src = tmp_path / 'evil.pkl'
  src.write_bytes(pickle.dumps((Exploit(), 1, 2)))
  assert convert_cli.main(['stylegan1', str(src), str(tmp_path / 'out')]) == 1
  with pytest.raises(generators.CheckpointError, match=r'refusing to load class (posix|os)\.system'):
    from convert_weights import stylegan1 as convert_stylegan1
    convert_stylegan1.convert(str(src), str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()


def test_missing_and_unexpected_keys_are_named(tmp_path, state_dict, capsys):
  state = dict(state_dict)
  del state['g_synthesis.blocks.8x8.conv1.weight']
  state['g_synthesis.blocks.8x8.conv2.weight'] = np.zeros((1,), np.float32)
  src = tmp_path / 'bad.pt'
  _torch_save(state, src)
  assert convert_cli.main(['stylegan1', str(src), str(tmp_path / 'out')]) == 1
  message = capsys.readouterr().err.strip()
  assert len(message.splitlines()) == 1
  assert 'missing key(s): g_synthesis.blocks.8x8.conv1.weight' in message
  assert 'unexpected key(s): g_synthesis.blocks.8x8.conv2.weight' in message
  assert str(src) in message
  assert not (tmp_path / 'out').exists()


def test_truncated_files(tmp_path, state_dict, capsys):
  src = tmp_path / 'g.pt'
  _torch_save(state_dict, src)
  truncated = tmp_path / 'truncated.pt'
  truncated.write_bytes(src.read_bytes()[:5000])
  assert convert_cli.main(['stylegan1', str(truncated), str(tmp_path / 'out')]) == 1
  assert 'truncated.pt' in capsys.readouterr().err
  pkl = tmp_path / 'truncated.pkl'
  pkl.write_bytes(pickle.dumps({'a': np.zeros(100)}, protocol=2)[:60])
  assert convert_cli.main(['stylegan1', str(pkl), str(tmp_path / 'out')]) == 1
  assert 'corrupt or truncated' in capsys.readouterr().err

  dst = tmp_path / 'ok'
  assert convert_cli.main(['stylegan1', str(src), str(dst)]) == 0
  params = dst / 'params.npz'
  params.write_bytes(params.read_bytes()[:1000])
  with pytest.raises(generators.CheckpointError, match='params.npz: corrupt or truncated'):
    generators.load(str(dst))
  (dst / 'generator.json').unlink()
  with pytest.raises(generators.CheckpointError, match='generator.json: missing'):
    generators.load(str(dst))
  with pytest.raises(generators.CheckpointError, match='no such checkpoint directory'):
    generators.load(str(tmp_path / 'nowhere'))


def test_converted_checkpoint_with_wrong_shapes_is_rejected(tmp_path, state_dict):
  src, dst = tmp_path / 'g.pt', tmp_path / 'out'
  _torch_save(state_dict, src)
  assert convert_cli.main(['stylegan1', str(src), str(dst)]) == 0
  with np.load(dst / 'params.npz') as npz:
    arrays = dict(npz)
  arrays['synthesis/b8/conv1/weight'] = arrays['synthesis/b8/conv1/weight'][:, :, :5]
  np.savez(dst / 'params.npz', **arrays)
  with pytest.raises(generators.CheckpointError, match=r'wrong shape: synthesis/b8/conv1/weight'):
    generators.load(str(dst))


def test_bad_average_latent(tmp_path, state_dict):
  src, avg = tmp_path / 'g.pt', tmp_path / 'avg.npy'
  _torch_save(state_dict, src)
  np.save(avg, np.zeros((3, 512), np.float32))
  assert convert_cli.main(['stylegan1', str(src), str(tmp_path / 'o'), '--avg-latent',
                           str(avg)]) == 1
  assert not (tmp_path / 'o').exists()


def test_generator_bfloat16_load(tmp_path, state_dict, golden):
  src, dst = tmp_path / 'g.pt', tmp_path / 'out'
  _torch_save(state_dict, src)
  assert convert_cli.main(['stylegan1', str(src), str(dst)]) == 0
  g = generators.load(str(dst), dtype=jnp.bfloat16)
  image, features = g.synthesize(golden['w_truncated'])
  assert features[-1].dtype == jnp.bfloat16 and image.shape == (2, 64, 64, 3)
  # Within bfloat16's rounding: 2**-8 relative per op over 10 modulated layers measured
  # 2.7% of the float32 image's range on this network.
  image32, features32 = generators.load(str(dst)).synthesize(golden['w_truncated'])
  assert relative_error(image, image32) < 0.04
  assert relative_error(np.asarray(features[-1], np.float32), features32[-1]) < 0.04


def test_avg_latent_of_shape_512(tmp_path, state_dict, golden):
  """--avg-latent [512]: one average for every layer; truncation computed by hand."""
  src, dst, avg_path = tmp_path / 'g.pt', tmp_path / 'out', tmp_path / 'avg.npy'
  _torch_save(state_dict, src)
  avg = golden['avg_latent'][3]
  np.save(avg_path, avg)
  assert convert_cli.main(['stylegan1', str(src), str(dst), '--avg-latent',
                           str(avg_path)]) == 0
  g = generators.load(str(dst))
  assert g.avg_latent.shape == (512,)
  w = np.asarray(golden['w'])
  expected = w.copy()
  expected[:, :8] = avg + 0.7 * (w[:, :8] - avg)
  np.testing.assert_allclose(g.truncate(w, 0.7, 8), expected, atol=1e-5)
