"""BigDatasetGAN: the segmentation head against a PyTorch module written here from the
head's description (grouped features, bias-free 1x1 projections, conditional-BN mixing
blocks with spectral norm, BN-ReLU-conv output), its training step against PyTorch's
loop, resume, the data layout reader, per-class sampling and the stages end to end."""

import importlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import conftest
from dgan_jax import factory as factory_lib
from dgan_jax import features
from dgan_jax import generators
from dgan_jax import io
from dgan_jax.bigdatasetgan import head as head_lib
from dgan_jax.bigdatasetgan import layout as layout_lib
from dgan_jax.bigdatasetgan import train as train_lib
from dgan_jax.data import annotated
from dgan_jax.errors import InputError
from dgan_jax.generators import base

torch = pytest.importorskip('torch')
nn = torch.nn
F = torch.nn.functional

# ----------------------------------------------------------------------------------------
# The reference: BigDatasetGAN's head as the issue describes it, in PyTorch (NCHW).

SN_EPS = 1e-4


def _sigma(weight, u, training):
  """BigGAN-PyTorch's spectral norm: one power iteration from u (updated in training)."""
  matrix = weight.reshape(weight.shape[0], -1)
  with torch.no_grad():
    v = F.normalize(u @ matrix, eps=SN_EPS)
    u_new = F.normalize(v @ matrix.t(), eps=SN_EPS)
    if training:
      u.copy_(u_new)
  return (v @ matrix.t() @ u_new.t()).squeeze()


class SNConv(nn.Conv2d):

  def __init__(self, c_in, c_out):
    super().__init__(c_in, c_out, 3, padding=1)
    self.register_buffer('u', torch.randn(1, c_out))

  def forward(self, x):
    return F.conv2d(x, self.weight / _sigma(self.weight, self.u, self.training), self.bias,
                    padding=1)


class SNLinear(nn.Linear):

  def __init__(self, c_in, c_out):
    super().__init__(c_in, c_out)
    self.register_buffer('u', torch.randn(1, c_out))

  def forward(self, x):
    return F.linear(x, self.weight / _sigma(self.weight, self.u, self.training), self.bias)


class CondBN(nn.Module):

  def __init__(self, channels, cond_dim):
    super().__init__()
    self.gain, self.bias = SNLinear(cond_dim, channels), SNLinear(cond_dim, channels)
    self.register_buffer('mean', torch.zeros(channels))
    self.register_buffer('var', torch.ones(channels))

  def forward(self, x, e):
    out = F.batch_norm(x, self.mean, self.var, None, None, self.training, 0.1, 1e-4)
    return out * (1 + self.gain(e))[:, :, None, None] + self.bias(e)[:, :, None, None]


class MixBlock(nn.Module):

  def __init__(self, channels, cond_dim):
    super().__init__()
    self.bn1, self.conv1 = CondBN(channels, cond_dim), SNConv(channels, channels)
    self.bn2, self.conv2 = CondBN(channels, cond_dim), SNConv(channels, channels)

  def forward(self, x, e):
    h = self.conv1(F.relu(self.bn1(x, e)))
    return x + self.conv2(F.relu(self.bn2(h, e)))


class TorchHead(nn.Module):
  """Maps resized to their group's size and concatenated, then projected (1x1, no bias);
  the running result resized, concatenated with the next group, mixed; BN-ReLU-conv."""

  def __init__(self, groups, sizes, in_channels, channels, cond_dim):
    super().__init__()
    self.groups, self.sizes = groups, sizes
    self.proj = nn.ModuleList([nn.Conv2d(c_in, c, 1, bias=False)
                               for c_in, c in zip(in_channels, channels)])
    self.mix = nn.ModuleList([MixBlock(sum(channels[:k + 1]), cond_dim)
                              for k in range(1, len(sizes))])
    total = sum(channels)
    self.out_gain = nn.Parameter(torch.ones(total))
    self.out_bias = nn.Parameter(torch.zeros(total))
    self.register_buffer('out_mean', torch.zeros(total))
    self.register_buffer('out_var', torch.ones(total))
    self.out_conv = SNConv(total, 1)

  def forward(self, maps, e):
    def resize(x, size):
      if x.shape[-1] == size:
        return x
      return F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False)
    grouped = [proj(torch.cat([resize(maps[l], size) for l in members], 1))
               for proj, members, size in zip(self.proj, self.groups, self.sizes)]
    x = grouped[0]
    for k in range(1, len(self.sizes)):
      x = self.mix[k - 1](torch.cat([resize(x, self.sizes[k]), grouped[k]], 1), e)
    x = F.batch_norm(x, self.out_mean, self.out_var, self.out_gain, self.out_bias,
                     self.training, 0.1, 1e-5)
    return self.out_conv(F.relu(x))


def torch_head(arch: head_lib.HeadArch) -> TorchHead:
  groups = [arch.group_maps(g) for g in range(arch.num_groups)]
  in_channels = [arch.group_in_channels(g) for g in range(arch.num_groups)]
  return TorchHead(groups, list(arch.group_sizes), in_channels, list(arch.group_channels),
                   arch.cond_dim)


def randomize_statistics(module: TorchHead, seed: int) -> None:
  """Running statistics and output BN affine away from their initial values."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, buffer in module.named_buffers():
      if name.endswith('mean'):
        buffer.copy_(0.1 * torch.randn(buffer.shape, generator=generator))
      elif name.endswith('var'):
        buffer.copy_(0.02 + 1.5 * torch.rand(buffer.shape, generator=generator))
    module.out_gain.copy_(1 + 0.2 * torch.randn(module.out_gain.shape, generator=generator))
    module.out_bias.copy_(0.1 * torch.randn(module.out_bias.shape, generator=generator))


def _np(t):
  return t.detach().numpy().astype(np.float32)


def torch_to_member(module: TorchHead) -> dict:
  """The PyTorch module's weights in the head's layout (one member)."""
  conv = lambda c: {'weight': _np(c.weight).transpose(2, 3, 1, 0), 'bias': _np(c.bias)}
  linear = lambda l: {'weight': _np(l.weight).T, 'bias': _np(l.bias)}
  params = {f'proj{g}': {'weight': _np(p.weight).transpose(2, 3, 1, 0)}
            for g, p in enumerate(module.proj)}
  sn, stats = {}, {}
  for k, block in enumerate(module.mix, start=1):
    params[f'mix{k}'] = {'bn1': {'gain': linear(block.bn1.gain), 'bias': linear(block.bn1.bias)},
                         'bn2': {'gain': linear(block.bn2.gain), 'bias': linear(block.bn2.bias)},
                         'conv1': conv(block.conv1), 'conv2': conv(block.conv2)}
    sn[f'mix{k}'] = {'bn1': {'gain': _np(block.bn1.gain.u)[0], 'bias': _np(block.bn1.bias.u)[0]},
                     'bn2': {'gain': _np(block.bn2.gain.u)[0], 'bias': _np(block.bn2.bias.u)[0]},
                     'conv1': _np(block.conv1.u)[0], 'conv2': _np(block.conv2.u)[0]}
    stats[f'mix{k}'] = {'bn1': {'mean': _np(block.bn1.mean), 'var': _np(block.bn1.var)},
                        'bn2': {'mean': _np(block.bn2.mean), 'var': _np(block.bn2.var)}}
  params['out'] = {'bn': {'scale': _np(module.out_gain), 'bias': _np(module.out_bias)},
                   'conv': conv(module.out_conv)}
  sn['out'] = {'conv': _np(module.out_conv.u)[0]}
  stats['out'] = {'bn': {'mean': _np(module.out_mean), 'var': _np(module.out_var)}}
  return {'params': params, 'sn': sn, 'batch_stats': stats}


def member_to_torch(member: dict, module: TorchHead) -> None:
  """Copies one member's variables (numpy, head layout) into the PyTorch module."""
  rebuilt = member
  with torch.no_grad():
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32))
    conv_w = lambda w: to_t(np.asarray(w).transpose(3, 2, 0, 1))
    for g, p in enumerate(module.proj):
      p.weight.copy_(conv_w(rebuilt['params'][f'proj{g}']['weight']))
    for k, block in enumerate(module.mix, start=1):
      p, u, s = (rebuilt[c][f'mix{k}'] for c in ('params', 'sn', 'batch_stats'))
      for bn_name in ('bn1', 'bn2'):
        bn = getattr(block, bn_name)
        for part in ('gain', 'bias'):
          lin = getattr(bn, part)
          lin.weight.copy_(to_t(np.asarray(p[bn_name][part]['weight']).T))
          lin.bias.copy_(to_t(p[bn_name][part]['bias']))
          lin.u.copy_(to_t(u[bn_name][part])[None])
        bn.mean.copy_(to_t(s[bn_name]['mean']))
        bn.var.copy_(to_t(s[bn_name]['var']))
      for conv_name in ('conv1', 'conv2'):
        c = getattr(block, conv_name)
        c.weight.copy_(conv_w(p[conv_name]['weight']))
        c.bias.copy_(to_t(p[conv_name]['bias']))
        c.u.copy_(to_t(u[conv_name])[None])
    out = rebuilt['params']['out']
    module.out_gain.copy_(to_t(out['bn']['scale']))
    module.out_bias.copy_(to_t(out['bn']['bias']))
    module.out_mean.copy_(to_t(rebuilt['batch_stats']['out']['bn']['mean']))
    module.out_var.copy_(to_t(rebuilt['batch_stats']['out']['bn']['var']))
    module.out_conv.weight.copy_(conv_w(out['conv']['weight']))
    module.out_conv.bias.copy_(to_t(out['conv']['bias']))
    module.out_conv.u.copy_(to_t(rebuilt['sn']['out']['conv'])[None])


def stack(members: list[dict]) -> dict:
  return jax.tree.map(lambda *leaves: jnp.asarray(np.stack(leaves)), *members)


def nchw(x) -> 'torch.Tensor':
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def relative_error(actual, expected) -> float:
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  return float(np.abs(actual - expected).max() / (np.abs(expected).max() + 1e-12))


# A BigGAN-512-like feature list scaled down 8x: 1, 2, 4 | 8, 8 (attention), 16 | 32, 64.
SMALL_ARCH = head_lib.HeadArch(
    feature_resolutions=(1, 2, 4, 8, 8, 16, 32, 64), feature_channels=(12, 8, 8, 6, 6, 5, 4, 4),
    cond_dim=7, group_sizes=(4, 16, 64), group_channels=(8, 6, 4), num_members=2)


def random_inputs(arch, batch, seed):
  rng = np.random.RandomState(seed)
  maps = [rng.standard_normal((batch, r, r, c)).astype(np.float32)
          for r, c in zip(arch.feature_resolutions, arch.feature_channels)]
  cond = rng.standard_normal((batch, arch.cond_dim)).astype(np.float32)
  return maps, cond


def test_groups_follow_biggan512_as_in_bigdatasetgan():
  g = generators.BigGANArch()   # BigGAN-512: blocks 8 .. 512 px, attention at 64
  arch = head_lib.HeadArch(tuple(g.feature_resolutions), tuple(g.feature_channels),
                           g.shared_dim)
  # BigDatasetGAN's head reads 3072, 960 and 192 channels at 32, 128 and 512 px.
  assert [arch.group_in_channels(k) for k in range(3)] == [3072, 960, 192]
  assert [arch.group_maps(k) for k in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7]]
  assert [arch.mix_channels(k) for k in (1, 2)] == [192, 224]
  with pytest.raises(ValueError, match='receive no feature map'):
    head_lib.HeadArch((8, 16, 32), (4, 4, 4), 8, group_sizes=(4, 32), group_channels=(2, 2))
  with pytest.raises(ValueError, match='largest feature resolution'):
    head_lib.HeadArch((8, 16, 32), (4, 4, 4), 8, group_sizes=(8, 16), group_channels=(2, 2))


def test_head_evaluation_matches_torch():
  modules = [torch_head(SMALL_ARCH) for _ in range(2)]
  torch.manual_seed(0)
  for seed, module in enumerate(modules):
    randomize_statistics(module, seed)
    module.eval()
  variables = stack([torch_to_member(m) for m in modules])
  maps, cond = random_inputs(SMALL_ARCH, 3, seed=1)
  logits, new = jax.jit(lambda v, m, c: head_lib.apply(SMALL_ARCH, v, m, c, train=False))(
      variables, maps, cond)
  assert logits.shape == (2, 3, 64, 64, 1)
  for member, module in enumerate(modules):
    with torch.no_grad():
      expected = module([nchw(m) for m in maps], torch.from_numpy(cond))
    assert relative_error(np.asarray(logits[member]).transpose(0, 3, 1, 2), _np(expected)) < 2e-5
  # Evaluation leaves the power-iteration vectors and statistics alone.
  jax.tree.map(np.testing.assert_array_equal, new['sn'], variables['sn'])
  jax.tree.map(np.testing.assert_array_equal, new['batch_stats'], variables['batch_stats'])


def test_head_training_mode_and_gradients_match_torch():
  torch.manual_seed(1)
  module = torch_head(SMALL_ARCH)
  randomize_statistics(module, 5)
  module.train()
  arch = head_lib.HeadArch(**{**SMALL_ARCH.to_json(), 'num_members': 1})
  variables = stack([torch_to_member(module)])
  maps, cond = random_inputs(arch, 4, seed=2)
  target = (np.random.RandomState(3).uniform(size=(4, 64, 64)) > 0.5).astype(np.float32)

  def loss_fn(params):
    logits, new = head_lib.apply(arch, {**variables, 'params': params}, maps, cond, train=True)
    bce = jnp.mean(jnp.maximum(logits[0, ..., 0], 0) - logits[0, ..., 0] * target
                   + jnp.log1p(jnp.exp(-jnp.abs(logits[0, ..., 0]))))
    return bce, (logits, new)

  (loss, (logits, new)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      variables['params'])
  out = module([nchw(m) for m in maps], torch.from_numpy(cond))
  torch_loss = F.binary_cross_entropy_with_logits(out[:, 0], torch.from_numpy(target))
  torch_loss.backward()
  assert relative_error(np.asarray(logits[0]).transpose(0, 3, 1, 2), _np(out)) < 2e-5
  np.testing.assert_allclose(float(loss), torch_loss.item(), rtol=1e-5)
  # Updated running statistics and power-iteration vectors.
  after = torch_to_member(module)
  for kind in ('sn', 'batch_stats'):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a)[0], b, atol=2e-5),
                 new[kind], after[kind])
  # Gradients of every parameter.
  torch_grads = {}
  for g, p in enumerate(module.proj):
    torch_grads[f'proj{g}/weight'] = _np(p.weight.grad).transpose(2, 3, 1, 0)
  for k, block in enumerate(module.mix, start=1):
    for bn_name in ('bn1', 'bn2'):
      for part in ('gain', 'bias'):
        lin = getattr(getattr(block, bn_name), part)
        torch_grads[f'mix{k}/{bn_name}/{part}/weight'] = _np(lin.weight.grad).T
        torch_grads[f'mix{k}/{bn_name}/{part}/bias'] = _np(lin.bias.grad)
    for conv_name in ('conv1', 'conv2'):
      c = getattr(block, conv_name)
      torch_grads[f'mix{k}/{conv_name}/weight'] = _np(c.weight.grad).transpose(2, 3, 1, 0)
      torch_grads[f'mix{k}/{conv_name}/bias'] = _np(c.bias.grad)
  torch_grads['out/bn/scale'] = _np(module.out_gain.grad)
  torch_grads['out/bn/bias'] = _np(module.out_bias.grad)
  torch_grads['out/conv/weight'] = _np(module.out_conv.weight.grad).transpose(2, 3, 1, 0)
  torch_grads['out/conv/bias'] = _np(module.out_conv.bias.grad)
  ours = {'/'.join(str(k.key) for k in path): np.asarray(v)[0]
          for path, v in jax.tree_util.tree_leaves_with_path(grads)}
  assert sorted(ours) == sorted(torch_grads)
  for name, expected in torch_grads.items():
    scale = np.abs(expected).max()
    np.testing.assert_allclose(ours[name], expected, atol=1e-4 * scale + 1e-7, err_msg=name)


@pytest.fixture(scope='module')
def test_config():
  return importlib.import_module('configs.test_biggan').get_config()


@pytest.fixture(scope='module')
def tiny_g(test_config):
  return generators.from_config(test_config.generator, test_config.seed)


@pytest.mark.slow
def test_training_steps_match_torch_adam_loop(tiny_g, test_config):
  """Three steps of the compiled ensemble step (generator features, training-mode head,
  BCE, Adam) against PyTorch's loop on the same features, one module per member."""
  g = tiny_g
  arch = train_lib.head_arch_for(g, test_config.biggan.head, num_members=2)
  sampling = g.sampling(test_config)
  lr = 1e-3
  options = train_lib.TrainOptions(num_steps=3, batch_size=4, learning_rate=lr)
  state = train_lib.init_state(arch, options, seed=0)
  initial = jax.device_get(train_lib.variables_of(state))
  rng = np.random.RandomState(0)
  z = rng.standard_normal((4, g.dim_z)).astype(np.float32)
  class_ids = np.asarray([225, 200, 3, 999], np.int32)
  masks = (rng.uniform(size=(4, 32, 32)) > 0.6).astype(np.uint8)
  step = train_lib.make_train_step(g, sampling, arch, options)
  losses = []
  for _ in range(3):
    state, metrics = step(state, g.variables(sampling), {'z': z, 'class_id': class_ids}, masks)
    losses.append(np.asarray(metrics['loss']))
  final = jax.device_get(train_lib.variables_of(state))

  _, maps = g.synthesize(z, class_ids)
  maps = [nchw(m) for m in maps]
  embedding = torch.from_numpy(np.array(g.class_embedding(class_ids)))
  target = torch.from_numpy(masks.astype(np.float32))
  for member in range(2):
    module = torch_head(arch)
    member_to_torch(jax.tree.map(lambda a: np.asarray(a)[member], initial), module)
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    for k in range(3):
      out = module(maps, embedding)
      loss = F.binary_cross_entropy_with_logits(out[:, 0], target)
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
      np.testing.assert_allclose(losses[k][member], loss.item(), rtol=1e-4)
    expected = torch_to_member(module)
    ours = jax.tree.map(lambda a: np.asarray(a)[member], final)
    for kind, atol in (('sn', 1e-4), ('batch_stats', 5e-4), ('params', None)):
      for path, value in jax.tree_util.tree_leaves_with_path(expected[kind]):
        name = '/'.join(str(k.key) for k in path)
        if kind == 'params' and name.startswith('mix') and name.endswith('conv1/bias'):
          continue  # followed by training-mode batch norm: zero gradient, Adam on noise
        if kind == 'params' and name.startswith('mix') and name.endswith('conv2/bias'):
          continue  # likewise: every path from it meets a training-mode batch norm
        actual = dict(jax.tree_util.tree_leaves_with_path(ours[kind]))[path]
        if kind == 'params':
          # Adam divides each gradient by its own running scale, so float noise in small
          # gradients becomes a visible share of a step for a few elements (up to ~20%
          # after three steps): bound the typical element. A wrong gradient or update
          # rule moves nearly every element by about lr.
          difference = np.abs(actual - value)
          assert np.median(difference) < 0.01 * lr, (name, np.median(difference))
          assert np.percentile(difference, 90) < 0.05 * lr, (name, difference)
        else:
          np.testing.assert_allclose(actual, value, atol=atol, err_msg=f'{kind}/{name}')


# ----------------------------------------------------------------------------------------
# The data layout.


def write_layout(root, subset, samples, dim_z, image_size=32):
  """samples: (folder, stem, mask or None, latent or None) -> files in the layout."""
  for folder, stem, mask, latent in samples:
    where = layout_lib.paths(str(root), subset, folder, stem)
    for path in where.values():
      os.makedirs(os.path.dirname(path), exist_ok=True)
    if mask is not None:
      Image.fromarray(mask).save(where['annotation'])
    if latent is not None:
      np.save(where['latent'], latent)
    Image.fromarray(np.full((image_size, image_size, 3), 100, np.uint8)).save(where['image'])


def test_layout_reader_pairs_masks_latents_and_classes(tmp_path):
  rng = np.random.RandomState(0)
  binary = (rng.uniform(size=(32, 32)) > 0.5).astype(np.uint8)
  colored = np.zeros((64, 64, 3), np.uint8)          # an RGB mask at twice the size
  colored[10:30, 20:50] = (200, 0, 0)
  colored[40:60, 5:15] = (0, 0, 90)
  z1, z2, z3 = (rng.standard_normal(20).astype(np.float32) for _ in range(3))
  write_layout(tmp_path, 'biggan32', [
      ('n02105162', 'n02105162_225_0001', binary * 255, z1[None]),
      ('n02105162', 'n02105162_225_0000', colored, z2),
      ('n02097474', 'biggan512_n02097474_200_0007', binary, z3[None]),
      ('n02097474', 'n02097474_200_0009', None, z3[None]),  # a latent nobody annotated
  ], dim_z=20)
  os.remove(layout_lib.paths(str(tmp_path), 'biggan32', 'n02097474',
                             'biggan512_n02097474_200_0007')['image'])
  data = layout_lib.read(str(tmp_path), 'biggan32', dim_z=20, num_classes=1000)
  # Sorted by class folder, then name; the class id is the second-to-last field.
  assert data.names == ['n02097474/biggan512_n02097474_200_0007',
                        'n02105162/n02105162_225_0000', 'n02105162/n02105162_225_0001']
  np.testing.assert_array_equal(data.class_ids, [200, 225, 225])
  np.testing.assert_array_equal(data.latents, np.stack([z3, z2, z1]))
  masks = data.masks([0, 1, 2], 32)
  assert masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
  np.testing.assert_array_equal(masks[0], binary)
  np.testing.assert_array_equal(masks[2], binary)
  expected = np.zeros((32, 32), np.uint8)             # nearest: every other pixel
  expected[5:15, 10:25] = 1
  expected[20:30, 3:8] = 1                            # dark blue is still nonzero
  np.testing.assert_array_equal(masks[1], expected)
  assert data.image(0) is None and data.image(1).shape == (32, 32, 3)


@pytest.mark.parametrize('stem,latent,message', [
    ('n01440764_1000_0001', np.zeros((1, 20)), r'class id 1000 is outside'),
    ('n01440764_x_0001', np.zeros((1, 20)), r'_<class id>_<number>'),
    ('n01440764_0_0001', np.zeros((2, 20)), r'latent must be \[1, 20\] or \[20\]'),
    ('n01440764_0_0001', np.full((1, 20), np.nan), r'NaN'),
    ('n01440764_0_0001', None, r'its latent .*n01440764_0_0001.npy is missing'),
])
def test_layout_reader_names_the_bad_file(tmp_path, stem, latent, message):
  write_layout(tmp_path, 'biggan32', [('n01440764', stem, np.zeros((32, 32), np.uint8),
                                       latent)], dim_z=20)
  with pytest.raises(InputError, match=message) as error:
    layout_lib.read(str(tmp_path), 'biggan32', dim_z=20, num_classes=1000)
  assert stem in str(error.value)


def test_layout_reader_without_masks_says_where_it_looked(tmp_path):
  with pytest.raises(InputError, match=r'annotations/biggan32: no masks'):
    layout_lib.read(str(tmp_path), 'biggan32', dim_z=20, num_classes=1000)


def test_sample_names_follow_imagenet_wnids():
  assert layout_lib.sample_stem(225, 3, 1000) == 'n02105162_225_0003'   # malinois
  assert layout_lib.sample_stem(0, 0, 1000) == 'n01440764_0_0000'       # tench
  assert layout_lib.class_folder(7, 10) == 'class0007'


# ----------------------------------------------------------------------------------------
# Per-class sampling.


@pytest.fixture(scope='module')
def disagreeing_heads(tiny_g, test_config):
  """Two random heads with perturbed statistics, so they disagree on some pixels."""
  arch = train_lib.head_arch_for(tiny_g, test_config.biggan.head, num_members=2)
  variables = head_lib.init(arch, 3)
  key = jax.random.key(4)
  variables['batch_stats'] = jax.tree.map(
      lambda a: a + 0.5 * jax.random.uniform(key, a.shape), variables['batch_stats'])
  return arch, variables


def class_factory(g, arch, variables, class_idx, samples_per_class, seed, z_std=0.9,
                  top_fraction=0.1, batch_size=0):
  """The generate step for per-class samples of g, labelled by the heads."""
  sampling = base.ClassSampling(seed, base.check_class_idx(class_idx, g.num_classes), 1,
                                samples_per_class, z_std, g.dim_z, g.num_classes)
  layout = features.FeatureLayout.create([s.shape for s in g.feature_specs],
                                         [s.channels for s in g.feature_specs])
  return factory_lib.Factory(g, sampling, train_lib.Labeler(arch, variables=variables), layout,
                             top_fraction, batch_size=batch_size), sampling


def test_per_class_samples_match_the_generator_and_heads(tiny_g, disagreeing_heads,
                                                         test_config):
  g = tiny_g
  arch, variables = disagreeing_heads
  step, sampling = class_factory(g, arch, variables, (225, 200, 7), samples_per_class=3,
                                 seed=5, z_std=0.9, top_fraction=0.25, batch_size=3)
  assert sampling.count('generate', test_config) == 9
  indices = np.arange(9)
  out = step(indices)
  np.testing.assert_array_equal(out['class_id'], [225] * 3 + [200] * 3 + [7] * 3)
  # z of sample j of class c: z_std * N(0, I) from (seed, stream, c, j).
  for i, (c, j) in enumerate(zip(out['class_id'], indices % 3)):
    key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(
        jax.random.key(5), base.GENERATE_STREAM), c), j)
    np.testing.assert_allclose(out['z'][i], 0.9 * np.asarray(jax.random.normal(key, (20,))),
                               rtol=1e-6)
  # Image and label against the generator's API and the heads run directly.
  image, maps = g.synthesize(out['z'], out['class_id'])
  expected_image = np.clip(np.floor(np.asarray(image) * 127.5 + 128), 0, 255)
  assert np.abs(out['image'].astype(int) - expected_image).max() <= 1
  logits, _ = jax.jit(lambda v, m, e: head_lib.apply(arch, v, m, e))(
      variables, maps, g.class_embedding(out['class_id']))
  logits = np.asarray(logits, np.float64)[..., 0]                  # [M, B, S, S]
  votes = (logits > 0).sum(axis=0)
  np.testing.assert_array_equal(out['label'], (votes > 1).astype(int))  # 2 members: tie -> 0
  p = 1 / (1 + np.exp(-logits))
  entropy = lambda q: -(q * np.log(np.maximum(q, 1e-30)) + (1 - q) * np.log(np.maximum(1 - q, 1e-30)))
  js = entropy(p.mean(axis=0)) - entropy(p).mean(axis=0)
  top = np.sort(js.reshape(9, -1), axis=1)[:, ::-1][:, :256]        # a quarter of 32 * 32
  assert out['uncertainty'].min() > 1e-4
  np.testing.assert_allclose(out['uncertainty'], top.mean(axis=1), rtol=1e-3, atol=1e-6)


def test_sample_does_not_depend_on_batching_or_class_list(tiny_g, disagreeing_heads):
  arch, variables = disagreeing_heads
  step, _ = class_factory(tiny_g, arch, variables, (225, 200), samples_per_class=4, seed=0,
                          top_fraction=0.25, batch_size=3)
  together = step(np.arange(8))
  one_by_one = [step([i]) for i in range(8)]
  for key in ('image', 'label', 'class_id', 'z', 'uncertainty'):
    np.testing.assert_allclose(np.concatenate([o[key] for o in one_by_one]), together[key],
                               rtol=1e-5, atol=1e-6, err_msg=key)
  # Sample j of class 200 is the same with another class list and count per class.
  other = class_factory(tiny_g, arch, variables, (200,), samples_per_class=2, seed=0,
                        top_fraction=0.25, batch_size=3)[0](np.arange(2))
  np.testing.assert_array_equal(other['image'], together['image'][4:6])
  np.testing.assert_array_equal(other['label'], together['label'][4:6])


@pytest.mark.parametrize('class_idx,message', [
    ((225, 1000), r'class_idx: class ids \[1000\] are outside'),
    ((-1,), r'class ids \[-1\] are outside'),
    (('1,x',), r'must be integer class ids'),
    ((), r'class_idx is empty'),
    ((3, 3), r'repeats a class'),
])
def test_bad_class_ids_are_named(tiny_g, disagreeing_heads, class_idx, message):
  arch, variables = disagreeing_heads
  with pytest.raises(InputError, match=message):
    class_factory(tiny_g, arch, variables, class_idx, samples_per_class=2, seed=0)


# ----------------------------------------------------------------------------------------
# Training: resume; the stages end to end.


def synthetic_layout(root, g, sampling, config, count_per_class=3, classes=(225, 200)):
  """A layout of real samples of g whose masks are their brighter pixels."""
  rng = np.random.RandomState(1)
  samples = []
  for c in classes:
    for j in range(count_per_class):
      z = rng.standard_normal((1, g.dim_z)).astype(np.float32)
      image, _ = g.synthesize(z, [c], return_features=False)
      grey = np.asarray(image)[0].mean(axis=-1)
      samples.append((layout_lib.class_folder(c, 1000), layout_lib.sample_stem(c, j, 1000),
                      ((grey > np.median(grey)) * 255).astype(np.uint8), z))
  write_layout(root, 'biggan32', samples, g.dim_z)
  return annotated.read(str(root), g, sampling, config.data, (32, 32))


@pytest.mark.slow
def test_resume_gives_the_uninterrupted_result(tmp_path, tiny_g, test_config):
  g = tiny_g
  sampling = g.sampling(test_config)
  data = synthetic_layout(tmp_path / 'data', g, sampling, test_config)
  arch = train_lib.head_arch_for(g, test_config.biggan.head, num_members=2)
  options = train_lib.TrainOptions(num_steps=6, batch_size=4, checkpoint_every=2, log_every=1)
  straight = train_lib.train(g, sampling, data, arch, options, seed=3, progress=False)
  checkpoints = str(tmp_path / 'checkpoints')
  interrupted = train_lib.train(g, sampling, data, arch, options, seed=3,
                                checkpoint_dir=checkpoints, progress=False, stop_after=3)
  assert int(interrupted['step']) == 3
  resumed = train_lib.train(g, sampling, data, arch, options, seed=3,
                            checkpoint_dir=checkpoints, progress=False)
  assert int(resumed['step']) == 6
  # The history covers the whole run, the interrupted part included.
  np.testing.assert_array_equal(resumed['history']['step'], [1, 2, 3, 4, 5, 6])
  np.testing.assert_allclose(resumed['history']['loss'], straight['history']['loss'],
                             rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               train_lib.variables_of(resumed), train_lib.variables_of(straight))
  # Six annotated samples, batches of four: each epoch is one batch, a new permutation.
  assert sorted(set(train_lib.batch_order(3, 0, 6, 4)[0]) | set(
      train_lib.batch_order(3, 1, 6, 4)[0])) != sorted(train_lib.batch_order(3, 0, 6, 4)[0])
  # Training learns: the loss falls from its first value.
  assert straight['history']['loss'][-1].mean() < straight['history']['loss'][0].mean()


def run_main(*args):
  return conftest.run_main(*args, timeout=900)


@pytest.mark.slow
def test_biggan_stages_end_to_end(biggan_workdir, tiny_g, test_config):
  # Every stage of configs/test_biggan.py, run once by the session fixture.
  workdir = biggan_workdir
  assert tuple(test_config.biggan.class_idx) == (225, 200)
  assert test_config.biggan.samples_per_class == 6
  # sample: BigDatasetGAN's layout; the images regenerate from their latents.
  annotate = workdir / 'annotate'
  latent_path = annotate / 'latents' / 'biggan32' / 'n02105162' / 'n02105162_225_0003.npy'
  z = np.load(latent_path)
  assert z.shape == (1, 20)
  saved = np.asarray(Image.open(str(latent_path).replace('latents', 'images').replace(
      '.npy', '.png')))
  image, _ = tiny_g.synthesize(z, [225], return_features=False)
  assert np.abs(saved.astype(int) - np.floor(np.asarray(image)[0] * 127.5 + 128)).max() <= 1
  assert (annotate / 'annotations' / 'biggan32' / 'n02097474').is_dir()
  # train_interpreter: the heads, trained on the brightness stand-in masks.
  arch, variables, meta = head_lib.load(str(workdir / 'head'))
  assert arch.num_members == 2 and meta['steps'] == 30
  info = json.loads((workdir / 'head' / 'info.json').read_text())
  assert info['num_annotated'] == 8 and info['classes'] == [200, 225]
  assert all(a > 0.8 for a in info['last_accuracy'])
  for name in ('check.png', 'preview.png', 'history.npz'):
    assert (workdir / 'head' / name).exists()
  assert not (workdir / 'head' / 'checkpoints').exists()
  # generate: 12 samples, the 3 most uncertain dropped, class ids stored with each.
  builder = tfds.builder_from_directory(str(workdir / 'dataset'))
  records = [x for split in ('train', 'dropped')
             for x in builder.as_data_source(split=split)]
  assert len(builder.as_data_source(split='train')) == 9 and len(records) == 12
  by_index = {int(r['index']): r for r in records}
  assert sorted(by_index) == list(range(12))
  for index, record in by_index.items():
    assert int(record['class_id']) == (225, 200)[index // 6]
    assert record['image'].shape == (32, 32, 3) and record['label'].shape == (32, 32)
    assert set(np.unique(record['label'])) <= {0, 1}
  # The stored sample is what the factory gives for its index.
  step, _ = class_factory(tiny_g, arch, variables, (225, 200), samples_per_class=6, seed=0,
                          batch_size=4)
  again = step([7])
  np.testing.assert_array_equal(by_index[7]['image'], again['image'][0])
  np.testing.assert_array_equal(by_index[7]['label'], again['label'][0])
  np.testing.assert_allclose(by_index[7]['latent'], again['z'][0], rtol=1e-6)
  generation = json.loads((workdir / 'dataset' / 'generation.json').read_text())
  kept = [s for s in generation['samples'] if s['kept']]
  dropped = [s for s in generation['samples'] if not s['kept']]
  assert max(s['uncertainty'] for s in kept) <= min(s['uncertainty'] for s in dropped)
  assert (workdir / 'dataset' / 'preview.png').exists()
  # A rerun skips every stage.
  mtime = os.path.getmtime(workdir / 'dataset' / 'generation.json')
  result = run_main('--config=configs/test_biggan.py', f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.path.getmtime(workdir / 'dataset' / 'generation.json') == mtime


def test_class_id_out_of_range_on_the_command_line(tmp_path):
  result = run_main('--config=configs/test_biggan.py', f'--workdir={tmp_path}',
                    '--config.biggan.class_idx=225,1000', '--stages=sample')
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last == ("error: config.biggan.class_idx: class ids [1000] are outside the "
                  "generator's [0, 1000)")
  assert 'Traceback' not in result.stderr


def test_missing_biggan_checkpoint_says_how_to_get_it(tmp_path):
  result = run_main('--config=configs/bigdatasetgan.py', f'--workdir={tmp_path}')
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  checkpoint = os.path.join(conftest.REPO, 'checkpoints', 'biggan512')   # resolved
  assert last.startswith(f'error: config.generator.checkpoint: {checkpoint} does not exist.')
  assert 'biggan-512.pth' in last and 'tfhub.dev/deepmind/biggan-512' in last
  assert 'python -m convert_weights biggan biggan-512.pth checkpoints/biggan512' in last
  assert 'Traceback' not in result.stderr


def test_bigdatasetgan_config_carries_the_original_settings():
  config = importlib.import_module('configs.bigdatasetgan').get_config()
  assert (config.biggan.train.num_steps, config.biggan.train.batch_size,
          config.biggan.train.learning_rate) == (5000, 4, 1e-3)
  assert config.biggan.z_std == 0.9 and tuple(config.biggan.class_idx) == (225, 200)
  assert tuple(config.biggan.head.group_sizes) == (32, 128, 512)
  assert tuple(config.biggan.head.group_channels) == (128, 64, 32)
  assert config.data.num_classes == 2


# ----------------------------------------------------------------------------------------
# A BigGAN workdir through the downstream stages.


def write_test_layout(root, count_per_class=5, classes=(225, 200), size=32):
  """Real-image stand-ins in BigDatasetGAN's layout: a bright square (the foreground) on a
  dark image, ImageNet file names (n02105162_0.JPEG style: the class is the folder)."""
  rng = np.random.RandomState(7)
  for c in classes:
    folder = layout_lib.class_folder(c, 1000)
    for j in range(count_per_class):
      image = np.full((size, size, 3), 20, np.uint8)
      mask = np.zeros((size, size), np.uint8)
      top, left = rng.randint(0, size // 2, 2)
      image[top:top + 12, left:left + 12] = 230
      mask[top:top + 12, left:left + 12] = 255
      for kind, array, ext in (('images', image, '.JPEG'), ('annotations', mask, '.png')):
        path = root / kind / 'real' / folder / f'{folder}_{j}{ext}'
        os.makedirs(path.parent, exist_ok=True)
        Image.fromarray(array).save(path, format='JPEG' if ext == '.JPEG' else 'PNG',
                                    **({'quality': 100} if ext == '.JPEG' else {}))


@pytest.mark.slow
def test_biggan_workdir_through_downstream_in_both_label_modes(tmp_path, biggan_workdir):
  from dgan_jax.downstream import data as data_lib  # pylint: disable=import-outside-toplevel
  from dgan_jax.downstream import run as run_lib  # pylint: disable=import-outside-toplevel
  # Binary (BigDatasetGAN's benchmark, the config's): every stage, stand-in test images in
  # the layout (the session fixture's run).
  workdir = biggan_workdir
  record = json.loads((workdir / 'eval.json').read_text())
  assert record['classes'] == ['background', 'foreground']
  assert record['protocol']['stand_in_test_images']
  stand_in = workdir / 'test_synthetic'
  assert len(list((stand_in / 'annotations').glob('*/*/*.png'))) == 10
  runs = record['runs']
  assert runs['synthetic']['num_train_images'] == 9      # 12 generated, 3 dropped
  assert runs['few_shot']['num_train_images'] == 8       # 4 annotated per class
  for run in runs.values():
    assert len(run['folds']) == 5 and run['epochs'] == 2
  report = (workdir / 'report.md').read_text()
  for run in ('few-shot', 'synthetic (filtered)'):
    assert f'| {run} |' in report

  # (K + 1)-way: foreground takes its sample's class (class_idx order: 225 -> 1, 200 -> 2),
  # scored on a test folder of real-image layout with known masks; in a copy.
  test_dir = tmp_path / 'test'
  write_test_layout(test_dir)
  shutil.copytree(biggan_workdir, tmp_path / 'work', symlinks=True)
  workdir = tmp_path / 'work'
  io.remove([workdir / 'downstream', workdir / 'eval', workdir / 'eval.json'])
  args = ['--config=configs/test_biggan.py', f'--workdir={workdir}',
          '--stages=train_downstream,evaluate', '--config.downstream.label_mode=class',
          f'--config.evaluate.test_dir={test_dir}']
  result = run_main(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((workdir / 'eval.json').read_text())
  assert record['classes'] == ['background', 'n02105162', 'n02097474']
  assert not record['protocol']['stand_in_test_images']
  assert record['test_images'][0] == 'real/n02097474/n02097474_0'   # sorted: class 200 first
  assert set(record['runs']['synthetic']['class_iou']) == set(record['classes'])

  config = importlib.import_module('configs.test_biggan').get_config()
  with config.unlocked():
    config.downstream.label_mode = 'class'
  mapping = run_lib.label_map(config, str(workdir))
  test = data_lib.read_test_folder(str(test_dir), 3, 32, mapping)
  for name, label in zip(test.names, test.labels):
    folder = name.split('/')[1]
    mask = np.asarray(Image.open(test_dir / 'annotations' / f'{name}.png')) > 0
    expected = mask.astype(np.uint8) * (1 if folder == 'n02105162' else 2)
    np.testing.assert_array_equal(label, expected)
  # The synthetic examples: each foreground pixel carries its sample's class.
  raw = tfds.builder_from_directory(str(workdir / 'dataset')).as_data_source('train')
  source = data_lib.SyntheticSource(str(workdir / 'dataset'), mapping)
  for i in range(len(raw)):
    (_, label), = source.get([i])
    value = {225: 1, 200: 2}[int(raw[i]['class_id'])]
    np.testing.assert_array_equal(label, (raw[i]['label'] != 0).astype(np.uint8) * value)


# ----------------------------------------------------------------------------------------
# The release's trained head (bigdatasetgan_code's train.py: checkpoint_latest.pth).


def release_state_dict(module: TorchHead) -> dict:
  """The reference module's weights under the release's names (models.py's SegBlock and
  BigGAN-PyTorch's layers: SNLinear/SNConv2d with u0 and sv0 buffers, ccbn and bn with
  stored_mean/stored_var), beside a generator part the head import ignores."""
  groups = ('low', 'mid', 'high')
  state = {f'{groups[g]}_feature_conv.0.weight': p.weight for g, p in enumerate(module.proj)}
  for k, block in enumerate(module.mix, start=1):
    name = ('mid', 'high')[k - 1] + '_feature_mix_conv'
    for bn in ('bn1', 'bn2'):
      layer = getattr(block, bn)
      for part in ('gain', 'bias'):
        linear = getattr(layer, part)
        state.update({f'{name}.{bn}.{part}.weight': linear.weight,
                      f'{name}.{bn}.{part}.bias': linear.bias,
                      f'{name}.{bn}.{part}.u0': linear.u, f'{name}.{bn}.{part}.sv0': torch.ones(1)})
      state[f'{name}.{bn}.stored_mean'] = layer.mean
      state[f'{name}.{bn}.stored_var'] = layer.var
    for conv in ('conv1', 'conv2'):
      layer = getattr(block, conv)
      state.update({f'{name}.{conv}.weight': layer.weight, f'{name}.{conv}.bias': layer.bias,
                    f'{name}.{conv}.u0': layer.u, f'{name}.{conv}.sv0': torch.ones(1)})
  state.update({'out_layer.0.gain': module.out_gain, 'out_layer.0.bias': module.out_bias,
                'out_layer.0.stored_mean': module.out_mean,
                'out_layer.0.stored_var': module.out_var,
                'out_layer.2.weight': module.out_conv.weight,
                'out_layer.2.bias': module.out_conv.bias, 'out_layer.2.u0': module.out_conv.u,
                'out_layer.2.sv0': torch.ones(1),
                'biggan_model.shared.weight': torch.zeros(1000, 8)})
  return {k: v.detach().clone() for k, v in state.items()}


def test_release_head_checkpoint_converts_and_matches_torch(tmp_path, tiny_g):
  from convert_weights import __main__ as convert_cli  # pylint: disable=import-outside-toplevel
  from dgan_jax.generators import checkpoint  # pylint: disable=import-outside-toplevel
  arch = train_lib.head_arch_for(tiny_g, importlib.import_module(
      'configs.test_biggan').get_config().biggan.head, num_members=1)
  torch.manual_seed(3)
  module = torch_head(arch)
  randomize_statistics(module, 4)
  module.eval()
  torch.save(release_state_dict(module), tmp_path / 'checkpoint_latest.pth')
  checkpoint.save(str(tmp_path / 'biggan32'), tiny_g.arch.to_json(),
                  jax.device_get(tiny_g.params), {})
  assert convert_cli.main(['bigdatasetgan_head', str(tmp_path / 'checkpoint_latest.pth'),
                           str(tmp_path / 'head'), '--generator', str(tmp_path / 'biggan32'),
                           '--group-sizes', '8,16,32']) == 0
  converted, variables, meta = head_lib.load(str(tmp_path / 'head'))
  assert converted == arch and meta['source_format'] == 'bigdatasetgan_code state dict'
  maps, cond = random_inputs(arch, 3, seed=9)
  logits, _ = jax.jit(lambda v, m, c: head_lib.apply(arch, v, m, c))(variables, maps, cond)
  with torch.no_grad():
    expected = module([nchw(m) for m in maps], torch.from_numpy(cond))
  assert relative_error(np.asarray(logits[0]).transpose(0, 3, 1, 2), _np(expected)) < 2e-5
  # A state dict of something else is named, key by key.
  state = release_state_dict(module)
  del state['mid_feature_mix_conv.conv1.u0']
  torch.save(state, tmp_path / 'broken.pth')
  assert convert_cli.main(['bigdatasetgan_head', str(tmp_path / 'broken.pth'),
                           str(tmp_path / 'head2'), '--generator', str(tmp_path / 'biggan32'),
                           '--group-sizes', '8,16,32']) == 1
  assert not (tmp_path / 'head2').exists()
