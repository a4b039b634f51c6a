"""BigDatasetGAN's segmentation head against a PyTorch module written here from the
head's description (grouped features, bias-free 1x1 projections, conditional-BN mixing
blocks with spectral norm, BN-ReLU-conv output): evaluation, training mode, gradients,
PyTorch's Adam loop, and the release checkpoint's conversion. The grouping of feature
maps is BigDatasetGAN's published table, written here as literals."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import relative_error
from dgan_jax import generators
from dgan_jax.bigdatasetgan import head as head_lib
from dgan_jax.bigdatasetgan import train as train_lib


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


def torch_head(arch: head_lib.HeadArch, groups: list[list[int]]) -> TorchHead:
  """groups: the feature maps of each group, given by the test (not read from `arch`)."""
  in_channels = [sum(arch.feature_channels[l] for l in members) for members in groups]
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




# Max |ours - torch| / (torch's max - min) of the head's logits, 10x this CPU's
# measurements: evaluation 6.3e-07 (README: "to 2e-6 (evaluation; measured 1.0e-6 of the
# range)"), training mode 5.4e-07, the converted release checkpoint 4.9e-07.
EVAL_BOUND, TRAIN_BOUND, RELEASE_BOUND = 6.4e-6, 5.4e-6, 5e-6

# A BigGAN-512-like feature list scaled down 8x: 1, 2, 4 | 8, 8 (attention), 16 | 32, 64.
SMALL_ARCH = head_lib.HeadArch(
    feature_resolutions=(1, 2, 4, 8, 8, 16, 32, 64), feature_channels=(12, 8, 8, 6, 6, 5, 4, 4),
    cond_dim=7, group_sizes=(4, 16, 64), group_channels=(8, 6, 4), num_members=2)
# BigDatasetGAN's models.py groups BigGAN-512's features as features[0:3] (resized to 32),
# features[3:6] (to 128), features[6:8] (to 512); SMALL_ARCH has the same table.
SMALL_GROUPS = [[0, 1, 2], [3, 4, 5], [6, 7]]
# configs/test_biggan.py: maps at 8, 16, 16 (attention), 32 px; groups of 8, 16, 32 px.
TEST_GROUPS = [[0], [1, 2], [3]]


def random_inputs(arch, batch, seed):
  rng = np.random.RandomState(seed)
  maps = [rng.standard_normal((batch, r, r, c)).astype(np.float32)
          for r, c in zip(arch.feature_resolutions, arch.feature_channels)]
  cond = rng.standard_normal((batch, arch.cond_dim)).astype(np.float32)
  return maps, cond


@pytest.mark.parametrize('resolution,dim_z,attention,group_sizes,groups,in_channels', [
    # BigDatasetGAN's published model: 3072, 960 and 192 channels at 32, 128 and 512 px.
    (512, 128, 64, (32, 128, 512), [[0, 1, 2], [3, 4, 5], [6, 7]], [3072, 960, 192]),
    # The same rule (a map joins the first group at least its size) by hand: BigGAN-256
    # maps 8, 16, 32 | 64, 128, 128 (attention) | 256; BigGAN-128 8, 16, 32 | 64, 64 | 128.
    (256, 140, 128, (32, 128, 256), [[0, 1, 2], [3, 4, 5], [6]],
     [1536 + 768 + 768, 384 + 192 + 192, 96]),
    (128, 120, 64, (32, 64, 128), [[0, 1, 2], [3, 4], [5]], [1536 + 768 + 384, 192 + 192, 96]),
])
def test_groups_follow_bigdatasetgan(resolution, dim_z, attention, group_sizes, groups,
                                     in_channels):
  g = generators.BigGANArch(resolution=resolution, dim_z=dim_z,
                            attention_resolutions=(attention,))
  arch = head_lib.HeadArch(tuple(g.feature_resolutions), tuple(g.feature_channels),
                           g.shared_dim, group_sizes=group_sizes)
  assert [arch.group_maps(k) for k in range(3)] == groups
  assert [arch.group_in_channels(k) for k in range(3)] == in_channels


def test_group_rules_are_enforced():
  arch = head_lib.HeadArch(tuple(generators.BigGANArch().feature_resolutions),
                           tuple(generators.BigGANArch().feature_channels), 128)
  assert [arch.mix_channels(k) for k in (1, 2)] == [192, 224]
  assert [arch.group_maps(k) for k in range(3)] == SMALL_GROUPS
  assert [SMALL_ARCH.group_maps(k) for k in range(3)] == SMALL_GROUPS
  with pytest.raises(ValueError, match='receive no feature map'):
    head_lib.HeadArch((8, 16, 32), (4, 4, 4), 8, group_sizes=(4, 32), group_channels=(2, 2))
  with pytest.raises(ValueError, match='largest feature resolution'):
    head_lib.HeadArch((8, 16, 32), (4, 4, 4), 8, group_sizes=(8, 16), group_channels=(2, 2))


def test_head_evaluation_matches_torch():
  modules = [torch_head(SMALL_ARCH, SMALL_GROUPS) for _ in range(2)]
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
    # README, the head: "matches a PyTorch module ... to 2e-6 (evaluation ...)".
    assert relative_error(np.asarray(logits[member]).transpose(0, 3, 1, 2),
                          _np(expected)) < EVAL_BOUND
  # Evaluation leaves the power-iteration vectors and statistics alone.
  jax.tree.map(np.testing.assert_array_equal, new['sn'], variables['sn'])
  jax.tree.map(np.testing.assert_array_equal, new['batch_stats'], variables['batch_stats'])


def test_head_training_mode_and_gradients_match_torch():
  torch.manual_seed(1)
  module = torch_head(SMALL_ARCH, SMALL_GROUPS)
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
  assert relative_error(np.asarray(logits[0]).transpose(0, 3, 1, 2), _np(out)) < TRAIN_BOUND
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


def _adam_steps_bound(steps: int, b1: float = 0.9, b2: float = 0.999) -> float:
  """The most `steps` bias-corrected Adam steps can move a weight, in units of lr: step t's
  |m_t| / (1 - b1^t) / sqrt(v_t / (1 - b2^t)), bounded by Cauchy-Schwarz over the
  gradients (1.0, 1.0009, 1.0036 for t = 1, 2, 3), whatever they are."""
  return sum((1 - b1) / (1 - b1 ** t) * np.sqrt((1 - b2 ** t) / (1 - b2))
             * np.sqrt(sum((b1 ** 2 / b2) ** j for j in range(t))) for t in range(1, steps + 1))


ADAM_STEPS_BOUND = _adam_steps_bound(3)


@pytest.mark.slow
def test_training_steps_match_torch_adam_loop(tiny_biggan, biggan_config):
  """Three steps of the compiled ensemble step (generator features, training-mode head,
  BCE, Adam) against PyTorch's loop on the same features, one module per member."""
  g = tiny_biggan
  arch = train_lib.head_arch_for(g, biggan_config.biggan.head, num_members=2)
  sampling = g.sampling(biggan_config)
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
  adam_mu = jax.device_get(state['opt_state'][0].mu)   # optax's first moment

  _, maps = g.synthesize(z, class_ids)
  maps = [nchw(m) for m in maps]
  embedding = torch.from_numpy(np.array(g.class_embedding(class_ids)))
  target = torch.from_numpy(masks.astype(np.float32))
  for member in range(2):
    module = torch_head(arch, TEST_GROUPS)
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
        actual = dict(jax.tree_util.tree_leaves_with_path(ours[kind]))[path]
        if kind == 'params' and name.startswith('mix') and name.endswith(('conv1/bias',
                                                                            'conv2/bias')):
          # Every path from these biases meets a training-mode batch norm, so their true
          # gradient is zero and what each implementation feeds Adam is float noise
          # (measured 2e-9 to 1.2e-8 in torch against 0.02-0.04 for the conv's weight). Adam
          # scales noise near its eps (1e-8) to steps of 0.01-0.9 lr in a random direction,
          # different in each implementation, so the two biases cannot be compared element
          # by element. Compared instead: Adam's first moment of these biases is float noise
          # in ours as in torch's (at most 1e-5 of the weight's; measured 1e-7 in both; a
          # bias that reached the loss would be of the weight's order), and each moved
          # within bias-corrected Adam's largest 3 steps.
          conv = name[:-len('/bias')]
          ours_mu = dict(jax.tree_util.tree_leaves_with_path(jax.tree.map(
              lambda a: np.asarray(a)[member], adam_mu)))
          weight_path = path[:-1] + (jax.tree_util.DictKey('weight'),)
          torch_conv = getattr(module.mix[int(conv[3]) - 1], conv.split('/')[1])
          torch_mu = {'bias': optimizer.state[torch_conv.bias]['exp_avg'].numpy(),
                      'weight': optimizer.state[torch_conv.weight]['exp_avg'].numpy()}
          for bias_mu, weight_mu in ((ours_mu[path], ours_mu[weight_path]),
                                     (torch_mu['bias'], torch_mu['weight'])):
            assert np.abs(bias_mu).max() <= 1e-5 * np.abs(weight_mu).max(), name
          start = dict(jax.tree_util.tree_leaves_with_path(jax.tree.map(
              lambda a: np.asarray(a)[member], initial)['params']))[path]
          for moved in (actual - start, value - start):
            assert np.abs(moved).max() <= lr * ADAM_STEPS_BOUND, name
        elif kind == 'params':
          # Adam divides each gradient by its own running scale, so float noise in small
          # gradients becomes a visible share of a step for a few elements (at most 0.21 lr
          # measured over every tensor). A wrong gradient or update rule moves elements by
          # about lr.
          difference = np.abs(actual - value)
          assert np.median(difference) < 0.01 * lr, (name, np.median(difference))
          assert difference.max() < 0.5 * lr, (name, difference.max())
        else:
          np.testing.assert_allclose(actual, value, atol=atol, err_msg=f'{kind}/{name}')


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


def test_release_head_checkpoint_converts_and_matches_torch(tmp_path, tiny_biggan):
  from convert_weights import __main__ as convert_cli  # pylint: disable=import-outside-toplevel
  from dgan_jax.generators import checkpoint  # pylint: disable=import-outside-toplevel
  arch = train_lib.head_arch_for(tiny_biggan, importlib.import_module(
      'configs.test_biggan').get_config().biggan.head, num_members=1)
  torch.manual_seed(3)
  module = torch_head(arch, TEST_GROUPS)
  randomize_statistics(module, 4)
  module.eval()
  torch.save(release_state_dict(module), tmp_path / 'checkpoint_latest.pth')
  checkpoint.save(str(tmp_path / 'biggan32'), tiny_biggan.arch.to_json(),
                  jax.device_get(tiny_biggan.params), {})
  assert convert_cli.main(['bigdatasetgan_head', str(tmp_path / 'checkpoint_latest.pth'),
                           str(tmp_path / 'head'), '--generator', str(tmp_path / 'biggan32'),
                           '--group-sizes', '8,16,32']) == 0
  converted, variables, meta = head_lib.load(str(tmp_path / 'head'))
  assert converted == arch and meta['source_format'] == 'bigdatasetgan_code state dict'
  maps, cond = random_inputs(arch, 3, seed=9)
  logits, _ = jax.jit(lambda v, m, c: head_lib.apply(arch, v, m, c))(variables, maps, cond)
  with torch.no_grad():
    expected = module([nchw(m) for m in maps], torch.from_numpy(cond))
  assert relative_error(np.asarray(logits[0]).transpose(0, 3, 1, 2),
                        _np(expected)) < RELEASE_BOUND
  # A state dict of something else is named, key by key.
  state = release_state_dict(module)
  del state['mid_feature_mix_conv.conv1.u0']
  torch.save(state, tmp_path / 'broken.pth')
  assert convert_cli.main(['bigdatasetgan_head', str(tmp_path / 'broken.pth'),
                           str(tmp_path / 'head2'), '--generator', str(tmp_path / 'biggan32'),
                           '--group-sizes', '8,16,32']) == 1
  assert not (tmp_path / 'head2').exists()

