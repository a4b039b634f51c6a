"""DatasetGAN's model_{i}.pth members -> one stacked ensemble with the same logits."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from convert_weights import __main__ as convert_main
from convert_weights import interpreter as convert_interpreter
from dgan_jax import interpreter
from dgan_jax.generators.checkpoint import CheckpointError


def original_classifier(dim, num_classes, seed):
  """The original's pixel_classifier layers, with non-trivial BatchNorm state."""
  torch.manual_seed(seed)
  h1, h2 = (128, 32) if num_classes < 32 else (256, 128)
  layers = torch.nn.Sequential(
      torch.nn.Linear(dim, h1), torch.nn.ReLU(), torch.nn.BatchNorm1d(h1),
      torch.nn.Linear(h1, h2), torch.nn.ReLU(), torch.nn.BatchNorm1d(h2),
      torch.nn.Linear(h2, num_classes))
  with torch.no_grad():
    for bn in (layers[2], layers[5]):
      bn.weight.uniform_(0.5, 1.5)
      bn.bias.normal_()
      bn.running_mean.normal_()
      bn.running_var.uniform_(0.5, 2.0)
      bn.num_batches_tracked.fill_(123)
  return layers.eval()


def save_members(folder, dim, num_classes, count):
  """As the original saves them: nn.DataParallel's state dict under model_state_dict."""
  nets = []
  for i in range(count):
    net = original_classifier(dim, num_classes, seed=i)
    state = {f'module.layers.{k}': v for k, v in net.state_dict().items()}
    torch.save({'model_state_dict': state}, folder / f'model_{i}.pth')
    nets.append(net)
  return nets


@pytest.mark.parametrize('num_classes', [20, 34])
def test_converted_ensemble_logits_match_pytorch(tmp_path, num_classes):
  nets = save_members(tmp_path, dim=40, num_classes=num_classes, count=3)
  assert convert_main.main(['interpreter', str(tmp_path), str(tmp_path / 'out')]) == 0
  arch, params, stats, meta = interpreter.load(str(tmp_path / 'out'))
  assert (arch.feature_dim, arch.num_classes, arch.num_members) == (40, num_classes, 3)
  assert meta['source'] == ['model_0.pth', 'model_1.pth', 'model_2.pth']
  x = np.random.RandomState(0).standard_normal((64, 40)).astype(np.float32)
  ours = np.asarray(interpreter.logits(params, stats, jnp.asarray(x)))
  for m, net in enumerate(nets):
    with torch.no_grad():
      expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours[m], expected, rtol=1e-4, atol=1e-4)


def test_missing_member_and_bad_keys_are_named(tmp_path):
  save_members(tmp_path, dim=8, num_classes=3, count=3)
  (tmp_path / 'model_1.pth').unlink()
  with pytest.raises(CheckpointError, match='model_1.pth missing'):
    convert_interpreter.convert(str(tmp_path), str(tmp_path / 'out'))
  net = original_classifier(8, 3, 0)
  state = {f'module.layers.{k}': v for k, v in net.state_dict().items()}
  del state['module.layers.5.running_var']
  torch.save({'model_state_dict': state}, tmp_path / 'model_1.pth')
  with pytest.raises(CheckpointError, match=r'model_1.pth: missing module.layers.5.running_var'):
    convert_interpreter.convert(str(tmp_path), str(tmp_path / 'out'))
  state['module.layers.5.running_var'] = torch.ones(32)
  state['module.extra.weight'] = torch.ones(2)
  torch.save({'model_state_dict': state}, tmp_path / 'model_1.pth')
  with pytest.raises(CheckpointError, match='unexpected entry'):
    convert_interpreter.convert(str(tmp_path), str(tmp_path / 'out'))
  assert convert_main.main(['interpreter', str(tmp_path / 'nothing'), str(tmp_path / 'o')]) == 1
