"""The stacked ensemble trains like the original's PyTorch loop, member by member."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO
from dgan_jax import features
from dgan_jax import interpreter
from dgan_jax import parallel as parallel_lib


def torch_member(arch, params, stats, m):
  """The original's pixel classifier holding member m's weights."""
  h1, h2 = arch.hidden
  net = torch.nn.Sequential(
      torch.nn.Linear(arch.feature_dim, h1), torch.nn.ReLU(), torch.nn.BatchNorm1d(h1),
      torch.nn.Linear(h1, h2), torch.nn.ReLU(), torch.nn.BatchNorm1d(h2),
      torch.nn.Linear(h2, arch.num_classes))
  t = lambda a: torch.from_numpy(np.array(a[m], np.float32))
  with torch.no_grad():
    for i, layer in ((0, 0), (1, 3), (2, 6)):
      net[layer].weight.copy_(t(params[f'linear{i}']['weight']).T)
      net[layer].bias.copy_(t(params[f'linear{i}']['bias']))
    for i, layer in ((0, 2), (1, 5)):
      net[layer].weight.copy_(t(params[f'norm{i}']['scale']))
      net[layer].bias.copy_(t(params[f'norm{i}']['bias']))
      net[layer].running_mean.copy_(t(stats[f'norm{i}']['mean']))
      net[layer].running_var.copy_(t(stats[f'norm{i}']['var']))
  return net


def small_problem(num_images=2, num_classes=3, seed=0):
  """Native maps, labels and the resized features the original would hold in RAM."""
  layout = features.FeatureLayout.create([(4, 4), (8, 8), (16, 16)], [6, 5, 4], (16, 16),
                                         (2, 14))
  rng = np.random.RandomState(seed)
  maps = [rng.standard_normal((num_images, h, w, c)).astype(np.float32)
          for (h, w), c in zip(layout.map_shapes, layout.channels)]
  full = torch.cat([F.interpolate(torch.from_numpy(m.transpose(0, 3, 1, 2)), size=(16, 16),
                                  mode='bilinear', align_corners=False) for m in maps], 1)
  full = full[:, :, 2:14].permute(0, 2, 3, 1).reshape(-1, layout.dim)  # [N*H'*W, D]
  # Labels that depend on the features, so that training has something to find.
  labels = np.digitize(full[:, 0].numpy() + full[:, 7].numpy(), [-0.5, 0.5])
  labels = labels.reshape((num_images,) + layout.output_shape).astype(np.uint8)
  stores = features.keep_rows([jnp.asarray(m) for m in maps], layout)
  return interpreter.TrainData(stores, jnp.asarray(labels), layout), full


def test_architecture_follows_the_class_count():
  assert interpreter.InterpreterArch(5056, 20).hidden == (128, 32)
  assert interpreter.InterpreterArch(5088, 34).hidden == (256, 128)
  shapes = interpreter.InterpreterArch(5056, 20, 10).param_shapes()
  assert shapes['params/linear0/weight'] == (10, 5056, 128)
  assert shapes['batch_stats/norm1/var'] == (10, 32)


@pytest.mark.parametrize('num_classes', [4, 33])
def test_logits_match_the_pytorch_module_in_eval_mode(num_classes):
  arch = interpreter.InterpreterArch(feature_dim=24, num_classes=num_classes, num_members=3)
  params, stats = interpreter.init(arch, jax.random.key(0))
  # Non-trivial BatchNorm state and larger weights than the N(0, 0.02) start.
  rng = np.random.RandomState(1)
  params = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), jnp.float32), params)
  stats = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 2, a.shape), jnp.float32), stats)
  x = rng.standard_normal((50, 24)).astype(np.float32)
  ours = np.asarray(interpreter.logits(params, stats, jnp.asarray(x)))
  assert ours.shape == (3, 50, num_classes)
  for m in range(3):
    net = torch_member(arch, params, stats, m).eval()
    with torch.no_grad():
      expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours[m], expected, rtol=1e-4, atol=1e-4)
  # head() after the first layer computed elsewhere (folded callers) gives the same, to
  # float32 rounding of logits in the hundreds: a millionth of their largest magnitude
  # (a fixed 1e-4, under two float32 steps at 600, failed on this CPU at main too).
  first = jnp.einsum('pd,mdh->mph', x, params['linear0']['weight']) + \
      params['linear0']['bias'][:, None]
  np.testing.assert_allclose(np.asarray(interpreter.head(params, stats, first)), ours,
                             rtol=1e-4, atol=1e-6 * np.abs(ours).max())


def test_majority_vote_breaks_ties_to_the_smallest_class():
  # 3 members, 4 pixels, 3 classes; members' picks per pixel:
  picks = np.array([[0, 2, 1, 2], [1, 2, 2, 0], [1, 0, 0, 1]])
  logits = jax.nn.one_hot(picks, 3) * 5.0
  assert interpreter.majority_vote(logits).tolist() == [1, 2, 0, 0]


def original_loop(arch, params, stats, member: int, full, labels, batches):
  """Member `member` trained by the original's PyTorch loop (train-mode BatchNorm,
  cross-entropy, Adam 1e-3) on the flat pixel ids of each of `batches` -> (per-step
  losses, the trained torch module)."""
  net = torch_member(arch, params, stats, member).train()
  optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
  losses = []
  for batch in batches:
    pixels = torch.from_numpy(batch.astype(np.int64))
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(net(full[pixels]), labels[pixels])
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
  return losses, net


def assert_same_member(arch, state, member: int, net):
  expected = torch_member(arch, *jax.device_get((state['params'], state['batch_stats'])),
                          member)
  for ours, theirs in zip(expected.state_dict().items(), net.state_dict().items()):
    if 'num_batches' not in ours[0]:
      np.testing.assert_allclose(ours[1].numpy(), theirs[1].numpy(), atol=2e-6,
                                 err_msg=ours[0])


@pytest.mark.parametrize('shared_pixels', [False, True])
def test_training_steps_match_the_original_loop(shared_pixels):
  """Three steps of the vmapped ensemble = three steps of each member's PyTorch loop
  (train-mode BatchNorm, cross-entropy, Adam 1e-3) on the same pixels: each member's own
  shuffle, or with shared_pixels member 0's for every member."""
  data, full = small_problem()
  arch = interpreter.InterpreterArch(data.layout.dim, 3, num_members=2)
  options = interpreter.TrainOptions(batch_size=16, num_steps=3, shared_pixels=shared_pixels)
  mesh = parallel_lib.make_mesh(jax.devices()[:1])
  steps_per_epoch = data.num_pixels // 16
  step = interpreter._make_train_step(arch, options, data.layout, mesh, 'members',
                                      steps_per_epoch, freeze_stopped=False)
  state = interpreter.init_state(arch, options, seed=3)
  init_params, init_stats = jax.device_get((state['params'], state['batch_stats']))
  permutation = interpreter.pixel_permutations(3, 0, 2, data.num_pixels, 16)
  assert permutation.shape == (steps_per_epoch, 2, 16)
  assert sorted(permutation[:, 0].ravel()) == list(range(steps_per_epoch * 16))
  losses = []
  for _ in range(3):
    state, metrics = step(state, data.stores, data.labels, jnp.asarray(permutation))
    losses.append(np.asarray(metrics['loss']))
  labels = torch.from_numpy(np.asarray(data.labels).reshape(-1).astype(np.int64))
  for m in range(2):
    their_losses, net = original_loop(arch, init_params, init_stats, m, full, labels,
                                      permutation[:3, 0 if shared_pixels else m])
    for t, loss in enumerate(their_losses):
      assert abs(loss - losses[t][m]) < 1e-5
    assert_same_member(arch, state, m, net)


def test_steps_in_one_call_match_the_original_loop():
  """Three steps in one compiled call (interpreter.steps_per_call) end where three steps
  of each member's PyTorch loop end, and report the third step's loss."""
  data, full = small_problem()
  arch = interpreter.InterpreterArch(data.layout.dim, 3, num_members=2)
  options = interpreter.TrainOptions(batch_size=16, num_steps=3)
  mesh = parallel_lib.make_mesh(jax.devices()[:1])
  steps = interpreter._make_train_step(arch, options, data.layout, mesh, 'members',
                                       data.num_pixels // 16, freeze_stopped=False)
  state = interpreter.init_state(arch, options, seed=4)
  init_params, init_stats = jax.device_get((state['params'], state['batch_stats']))
  permutation = interpreter.pixel_permutations(4, 0, 2, data.num_pixels, 16)
  state, metrics = steps(state, data.stores, data.labels, jnp.asarray(permutation),
                         np.int32(3))
  assert int(state['step']) == 3
  labels = torch.from_numpy(np.asarray(data.labels).reshape(-1).astype(np.int64))
  for m in range(2):
    their_losses, net = original_loop(arch, init_params, init_stats, m, full, labels,
                                      permutation[:3, m])
    assert abs(their_losses[-1] - float(metrics['loss'][m])) < 1e-5
    assert_same_member(arch, state, m, net)


def replay_rule(losses, steps_per_epoch, after_epoch, patience):
  """The original's loop, per member, from its per-step losses -> steps trained."""
  best, since = np.inf, 0
  for t, loss in enumerate(losses):
    if t // steps_per_epoch > after_epoch:
      if loss < best:
        best, since = loss, 0
      else:
        since += 1
      if since > patience:
        return t + 1
  return len(losses)


def test_stopping_rule_and_frozen_members():
  data, _ = small_problem()
  arch = interpreter.InterpreterArch(data.layout.dim, 3, num_members=3)
  options = interpreter.TrainOptions(batch_size=16, patience=4, patience_after_epoch=0,
                                     max_epochs=8, log_every=1)
  steps_per_epoch = data.num_pixels // 16
  final = interpreter.train(data, arch, options, seed=0, progress=False)
  history = final['history']
  assert history['step'].tolist() == list(range(1, len(history['step']) + 1))
  trained_steps = history['active'].sum(axis=0)
  for m in range(3):
    expected = replay_rule(history['loss'][:, m], steps_per_epoch, 0, 4)
    assert trained_steps[m] == expected
  assert trained_steps.min() < 8 * steps_per_epoch  # the rule stopped someone
  # A stopped member keeps the weights of its last step: a run cut there agrees.
  m = int(np.argmin(trained_steps))
  cut = interpreter.train(data, arch, options, seed=0, progress=False,
                          stop_after=int(trained_steps[m]))
  np.testing.assert_array_equal(final['params']['linear0']['weight'][m],
                                cut['params']['linear0']['weight'][m])
  np.testing.assert_array_equal(final['batch_stats']['norm0']['mean'][m],
                                cut['batch_stats']['norm0']['mean'][m])


def test_default_stopping_rule_comes_from_the_config():
  """config.interpreter's defaults (num_steps 0: patience 50 after epoch 3, at most 100
  epochs, batch 64) reach the training loop, which then stops as the original's loop."""
  from dgan_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  options = interpreter.TrainOptions.from_config(config_lib.base().interpreter)
  assert (options.num_steps, options.patience, options.patience_after_epoch,
          options.max_epochs, options.batch_size) == (0, 50, 3, 100, 64)
  data, _ = small_problem()
  arch = interpreter.InterpreterArch(data.layout.dim, 3, num_members=2)
  options = dataclasses.replace(options, log_every=1)
  history = interpreter.train(data, arch, options, seed=0, progress=False)['history']
  steps_per_epoch = data.num_pixels // 64
  trained_steps = history['active'].sum(axis=0)
  for m in range(2):
    assert trained_steps[m] == replay_rule(history['loss'][:, m], steps_per_epoch, 3, 50)
  assert 4 * steps_per_epoch + 50 < trained_steps.max() < 100 * steps_per_epoch


def test_resume_from_checkpoint_after_interruption(tmp_path):
  data, _ = small_problem()
  arch = interpreter.InterpreterArch(data.layout.dim, 3, num_members=2)
  options = interpreter.TrainOptions(batch_size=16, num_steps=30, checkpoint_every=4,
                                     log_every=5)
  straight = interpreter.train(data, arch, options, seed=1, progress=False)
  checkpoints = str(tmp_path / 'ckpt')
  interpreter.train(data, arch, options, seed=1, progress=False, checkpoint_dir=checkpoints,
                    stop_after=10)
  # As if killed between checkpoints: only the interval checkpoint (step 8) survives.
  assert sorted(p for p in os.listdir(checkpoints) if p.isdigit()) == ['10', '8']
  shutil.rmtree(os.path.join(checkpoints, '10'))
  resumed = interpreter.train(data, arch, options, seed=1, progress=False,
                              checkpoint_dir=checkpoints)
  # The history covers the whole run: step 5 from before the interruption, 10.. after.
  assert int(resumed['step']) == 30
  assert resumed['history']['step'].tolist() == list(range(5, 31, 5))
  # Bitwise: the same compiled step on the same restored state and pixel order.
  np.testing.assert_array_equal(resumed['history']['loss'], straight['history']['loss'])
  for a, b in zip(jax.tree.leaves((resumed['params'], resumed['batch_stats'])),
                  jax.tree.leaves((straight['params'], straight['batch_stats']))):
    np.testing.assert_array_equal(a, b)
  assert straight['history']['loss'][-1].mean() < straight['history']['loss'][0].mean()


def test_save_and_load_round_trip(tmp_path):
  arch = interpreter.InterpreterArch(feature_dim=10, num_classes=4, num_members=2)
  params, stats = interpreter.init(arch, jax.random.key(5))
  interpreter.save(str(tmp_path / 'ens'), arch, params, stats, {'note': 'x'})
  loaded_arch, loaded_params, loaded_stats, meta = interpreter.load(str(tmp_path / 'ens'))
  assert loaded_arch == arch and meta['note'] == 'x'
  for a, b in zip(jax.tree.leaves((params, stats)), jax.tree.leaves((loaded_params,
                                                                     loaded_stats))):
    np.testing.assert_array_equal(a, b)
  os.remove(tmp_path / 'ens' / 'params.npz')
  with pytest.raises(interpreter.checkpoint_lib.CheckpointError, match='params.npz'):
    interpreter.load(str(tmp_path / 'ens'))


MULTI_DEVICE_SCRIPT = textwrap.dedent('''
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, 'tests')
    from test_interpreter import small_problem
    from dgan_jax import interpreter
    from dgan_jax import parallel as parallel_lib
    assert jax.device_count() == 4
    data, _ = small_problem(num_images=3)
    arch = interpreter.InterpreterArch(data.layout.dim, 3, num_members=4)
    out = {}
    for parallel in ('batch', 'members'):
      options = interpreter.TrainOptions(batch_size=16, num_steps=20, log_every=1,
                                         parallel=parallel)
      one = interpreter.train(data, arch, options, 0, progress=False,
                              mesh=parallel_lib.make_mesh(jax.devices()[:1]))
      four = interpreter.train(data, arch, options, 0, progress=False)
      out[parallel] = {
          'loss_diff': float(np.abs(one['history']['loss'] - four['history']['loss']).max()),
          'param_diff': max(float(np.abs(a - b).max()) for a, b in
                            zip(jax.tree.leaves(one['params']), jax.tree.leaves(four['params']))),
          'loss_drop': float(one['history']['loss'][0].mean() - one['history']['loss'][-1].mean())}
    print(json.dumps(out))
''')


@pytest.mark.slow
def test_four_devices_give_the_losses_of_one():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', MULTI_DEVICE_SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  for parallel in ('batch', 'members'):
    assert out[parallel]['loss_diff'] < 1e-5, out
    assert out[parallel]['param_diff'] < 1e-5, out
    assert out[parallel]['loss_drop'] > 0, out
