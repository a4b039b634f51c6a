"""`python -m convert_weights biggan`: both layouts, checked against the PyTorch modules
(the pytorch-pretrained-biggan package's BigGAN-deep, the golden BigGAN-PyTorch file)."""

import json
import os

import numpy as np
import pytest

from conftest import golden_path, relative_error
from convert_weights import biggan as convert_biggan
from convert_weights.__main__ import main as convert_main
from dgan_jax import generators
from dgan_jax.generators import checkpoint
from test_biggan import GOLDEN, PARITY_BOUNDS, SEED, rebuild_biggan_state_dict

torch = pytest.importorskip('torch')
pretrained_biggan = pytest.importorskip('pytorch_pretrained_biggan')

# Tiny BigGAN-deep models (64 px, 4 channels wide at the output, 10 classes).
ALTERNATING_LAYERS = [(False, 16, 16), (True, 16, 8), (False, 8, 8), (True, 8, 4),
                      (False, 4, 4), (True, 4, 2), (False, 2, 2), (True, 2, 1)]
# Not the released pattern: only a config.json can say which blocks upsample.
IRREGULAR_LAYERS = [(True, 16, 8), (True, 8, 8), (False, 8, 4), (True, 4, 2), (True, 2, 1)]
# Truncation -> bounds on max |ours - package| / (package max - min) of the image and the
# worst feature map: 10x the README's BigGAN-deep rows, or 10x this CPU's measurement
# where that is smaller. README (image / map): 0.43: 3.4e-07 / 4.7e-07, 1.0: 2.6e-07 /
# 3.6e-07 (alternating blocks); 0.6: 1.7e-07 / 2.4e-07 (irregular, config.json).
# Measured: 2.7e-07 / 3.5e-07, 3.3e-07 / 2.7e-07, 1.9e-07 / 1.8e-07.
DEEP_BOUNDS = {0.43: (2.8e-6, 3.6e-6), 1.0: (2.6e-6, 2.7e-6), 0.6: (1.7e-6, 1.8e-6)}


def tiny_deep_model(layers, attention_position, seed=0):
  """A package BigGAN-deep with every weight and statistic drawn at random, spectral
  norm vectors from one training-mode power iteration, in eval mode."""
  config = pretrained_biggan.BigGANConfig(
      output_dim=4 * 2 ** sum(up for up, _, _ in layers), z_dim=8, class_embed_dim=8,
      channel_width=4, num_classes=10, layers=layers,
      attention_layer_position=attention_position, n_stats=5)
  torch.manual_seed(seed)
  model = pretrained_biggan.BigGAN(config)
  rng = np.random.RandomState(seed)
  with torch.no_grad():
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
      if name.endswith(('weight_u', 'weight_v')):
        continue
      if name.endswith('running_vars'):
        value = 0.5 + rng.uniform(0, 1, tensor.shape)
      elif name.endswith('running_means'):
        value = rng.normal(0, 0.1, tensor.shape)
      elif name.endswith('gamma'):
        value = rng.normal(0, 0.5, tensor.shape)
      elif name.endswith('bias'):
        value = rng.normal(0, 0.05, tensor.shape)
      else:
        value = rng.normal(0, 0.3, tensor.shape)
      tensor.copy_(torch.from_numpy(np.asarray(value, np.float32)))
    model.train()
    model(torch.zeros(1, 8), torch.eye(10)[:1], 1.0)
  return model.eval(), config


def run_package(model, z, class_ids, truncation):
  """-> (image NCHW, [output of every generator.layers module])."""
  outputs = []
  hooks = [layer.register_forward_hook(lambda m, i, out: outputs.append(out.numpy()))
           for layer in model.generator.layers]
  with torch.no_grad():
    image = model(torch.from_numpy(z), torch.eye(10)[class_ids], truncation).numpy()
  for hook in hooks:
    hook.remove()
  return image, outputs


def save_package_dir(model, config, directory, with_config):
  os.makedirs(directory)
  torch.save(model.state_dict(), os.path.join(directory, 'pytorch_model.bin'))
  if with_config:
    with open(os.path.join(directory, 'config.json'), 'w', encoding='utf-8') as f:
      f.write(config.to_json_string())


def assert_matches_package(g, model, truncations):
  rng = np.random.RandomState(1)
  z = rng.normal(0, 1, (3, 8)).astype(np.float32)
  class_ids = np.array([1, 4, 9])
  for truncation in truncations:
    image_bound, feature_bound = DEEP_BOUNDS[truncation]
    expected_image, expected_features = run_package(model, z, class_ids, truncation)
    image, features = g.synthesize(z, class_ids, truncation=truncation)
    assert relative_error(np.asarray(image).transpose(0, 3, 1, 2), expected_image) < image_bound
    assert len(features) == len(expected_features) == len(g.feature_channels)
    for i, (ours, theirs) in enumerate(zip(features, expected_features)):
      assert relative_error(np.asarray(ours).transpose(0, 3, 1, 2), theirs) < feature_bound, i


def test_deep_layout_inferred_matches_package(tmp_path):
  """README, Correctness: the BigGAN table's tiny pytorch-pretrained-biggan row."""
  model, _ = tiny_deep_model(ALTERNATING_LAYERS, attention_position=4)
  save_package_dir(model, None, tmp_path / 'src', with_config=False)
  assert convert_main(['biggan', str(tmp_path / 'src'), str(tmp_path / 'dst')]) == 0
  g = generators.load(str(tmp_path / 'dst'))
  assert g.kind == 'biggan_deep'
  assert (g.resolution, g.dim_z, g.num_classes) == (64, 8, 10)
  assert g.arch.attention_position == 4 and g.arch.n_stats == 5
  # 0.43 interpolates between stored statistics 1 and 2; 1.0 uses the last entry only.
  assert_matches_package(g, model, truncations=(0.43, 1.0))


def test_deep_layout_with_config_json_matches_package(tmp_path):
  """README, Correctness: the BigGAN table's irregular-upsampling row."""
  model, config = tiny_deep_model(IRREGULAR_LAYERS, attention_position=2, seed=3)
  save_package_dir(model, config, tmp_path / 'src', with_config=True)
  info = convert_biggan.convert(str(tmp_path / 'src'), str(tmp_path / 'dst'))
  assert info['architecture_from'].endswith('config.json')
  g = generators.load(str(tmp_path / 'dst'))
  assert [up for up, _, _ in g.arch.layers] == [up for up, _, _ in IRREGULAR_LAYERS]
  assert_matches_package(g, model, truncations=(0.6,))
  with pytest.raises(ValueError, match=r'truncation must be in \(0, 1\]'):
    g.synthesize(np.zeros((1, 8)), [0], truncation=0)


def test_deep_missing_keys_are_listed(tmp_path):
  model, _ = tiny_deep_model(ALTERNATING_LAYERS, attention_position=4)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  del state['generator.layers.3.bn_1.scale.weight_u']
  del state['generator.conv_to_rgb.bias']
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'2 missing key\(s\): generator.layers.3.bn_1.scale.weight_u, '
                           r'generator.conv_to_rgb.bias'):
    convert_biggan.from_deep_state_dict(state, 'tiny')


@pytest.fixture(scope='module')
def golden_state():
  return rebuild_biggan_state_dict(np.load(golden_path(GOLDEN)), SEED)


def save_pth(state, path):
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
  return str(path)


def test_biggan_pytorch_file_round_trip(tmp_path, golden_state, capsys):
  golden = np.load(golden_path(GOLDEN))
  # BigDatasetGAN's biggan-512.pth has no sv0 buffers; DataParallel adds `module.`.
  state = {f'module.{k}': v for k, v in golden_state.items() if not k.endswith('sv0')}
  src = save_pth(state, tmp_path / 'biggan-128.pth')
  assert convert_main(['biggan', src, str(tmp_path / 'dst')]) == 0
  assert 'biggan-pytorch' in capsys.readouterr().out
  g = generators.load(str(tmp_path / 'dst'))
  assert g.kind == 'biggan'
  with open(tmp_path / 'dst' / 'generator.json', encoding='utf-8') as f:
    assert json.load(f)['arch']['attention_resolutions'] == [64]
  image, _ = g.synthesize(golden['z'], golden['y'], return_features=False)
  assert relative_error(np.asarray(image).transpose(0, 3, 1, 2),
                        golden['image']) < PARITY_BOUNDS['image']


def test_biggan_missing_and_unexpected_keys_are_listed(golden_state):
  state = dict(golden_state)
  del state['blocks.2.0.conv1.u0']
  del state['output_layer.2.bias']
  state['blocks.0.0.extra.weight'] = np.zeros(3, np.float32)
  with pytest.raises(checkpoint.CheckpointError) as error:
    convert_biggan.from_biggan_state_dict(state, 'biggan.pth')
  message = str(error.value)
  assert '2 missing key(s): blocks.2.0.conv1.u0, output_layer.2.bias' in message
  assert '1 unexpected key(s): blocks.0.0.extra.weight' in message
  with pytest.raises(checkpoint.CheckpointError, match='missing shared.weight'):
    convert_biggan.from_biggan_state_dict(
        {k: v for k, v in golden_state.items() if k != 'shared.weight'}, 'biggan.pth')


def test_unreadable_or_foreign_files(tmp_path, golden_state, capsys):
  src = save_pth(golden_state, tmp_path / 'full.pth')
  with open(src, 'rb') as f:
    data = f.read()
  truncated = tmp_path / 'truncated.pth'
  truncated.write_bytes(data[:len(data) // 2])
  assert convert_main(['biggan', str(truncated), str(tmp_path / 'dst')]) == 1
  assert 'corrupt or truncated' in capsys.readouterr().err
  assert not os.path.exists(tmp_path / 'dst')
  foreign = save_pth({'g_mapping.dense0.weight': np.zeros((2, 2), np.float32)},
                     tmp_path / 'foreign.pth')
  with pytest.raises(checkpoint.CheckpointError, match='neither a BigGAN-PyTorch generator'):
    convert_biggan.convert(foreign, str(tmp_path / 'dst'))
  with pytest.raises(checkpoint.CheckpointError, match='no such file'):
    convert_biggan.convert(str(tmp_path / 'absent.pth'), str(tmp_path / 'dst'))


def test_damaged_converted_directory(tmp_path, golden_state):
  dst = tmp_path / 'dst'
  convert_biggan.convert(save_pth(golden_state, tmp_path / 'g.pth'), str(dst))
  params = dst / 'params.npz'
  with np.load(params) as npz:
    arrays = {k: npz[k] for k in npz.files}
  del arrays['block1/conv2/weight']
  np.savez(params, **arrays)
  with pytest.raises(checkpoint.CheckpointError, match='1 missing: block1/conv2/weight'):
    generators.load(str(dst))
  data = params.read_bytes()
  params.write_bytes(data[:len(data) // 3])
  with pytest.raises(checkpoint.CheckpointError, match='corrupt or truncated'):
    generators.load(str(dst))
