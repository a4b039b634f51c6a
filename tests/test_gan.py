"""The StyleGAN trainer: discriminator, losses, R1, EMA, resume, export, command line."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import toy_gan
from dgan_jax.gan import discriminator
from dgan_jax.gan import train
from dgan_jax.generators import checkpoint
from dgan_jax.generators.load import load as load_generator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D_ARCH = discriminator.DiscriminatorArch(resolution=8, fmap_base=16, fmap_max=4, mbstd_group=4)


def _d_params(seed=0):
  """D_ARCH parameters with random (not zero) biases."""
  params = checkpoint.flatten(discriminator.init_params(D_ARCH, jax.random.key(seed)))
  rng = np.random.default_rng(seed)
  params = {k: (rng.normal(0, 0.5, v.shape).astype(np.float32) if k.endswith('bias') else v)
            for k, v in params.items()}
  return checkpoint.unflatten(params)


def _small_config(**overrides):
  """The tiny config at 8 px (fast to compile), unlocked."""
  config = toy_gan.get_config('tiny')
  config.unlock()
  config.generator.resolution = 8
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


# Discriminator, checked against direct numpy computations.

def _np_mbstd(x, group):
  b = x.shape[0]
  columns = b // group
  out = np.empty(x.shape[:3] + (1,))
  for i in range(b):
    members = x[[j for j in range(b) if j % columns == i % columns]]
    assert len(members) == group
    out[i] = np.sqrt(members.var(axis=0) + 1e-8).mean()
  return np.concatenate([x, out], axis=-1)


@pytest.mark.parametrize('group, effective', [(4, 4), (3, 2), (16, 8)])
def test_minibatch_stddev(group, effective):
  x = np.random.default_rng(1).normal(size=(8, 3, 2, 5))
  out = np.asarray(discriminator._minibatch_stddev(jnp.asarray(x, jnp.float32), group))
  assert out.shape == (8, 3, 2, 6)
  np.testing.assert_allclose(out, _np_mbstd(x, effective), rtol=1e-5, atol=1e-6)


def test_minibatch_stddev_hand_values():
  # Batch 4, group 2: samples (0, 2) and (1, 3) are a group; one feature each.
  x = np.array([1., 10., 3., 10.]).reshape(4, 1, 1, 1)
  out = np.asarray(discriminator._minibatch_stddev(jnp.asarray(x, jnp.float32), 2))
  np.testing.assert_allclose(out[:, 0, 0, 1], [1., 1e-4, 1., 1e-4], rtol=1e-4)


def _np_lrelu(x):
  return np.where(x >= 0, x, 0.2 * x) * math.sqrt(2)


def _np_conv(p, x):
  """A direct 'SAME' convolution with the equalized-lr scale 1 / sqrt(fan_in)."""
  w = np.asarray(p['weight'], np.float64)
  kh, kw, cin, cout = w.shape
  w = w / math.sqrt(kh * kw * cin)
  xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  out = np.zeros(x.shape[:3] + (cout,))
  for di in range(kh):
    for dj in range(kw):
      out += xp[:, di:di + x.shape[1], dj:dj + x.shape[2]] @ w[di, dj]
  return out + (np.asarray(p['bias']) if 'bias' in p else 0)


def _np_down(x):
  return (x[:, ::2, ::2] + x[:, 1::2, ::2] + x[:, ::2, 1::2] + x[:, 1::2, 1::2]) / 4


def _np_discriminate(params, images):
  """The layout of discriminator.py's docstring at 8 px, in float64 numpy."""
  x = _np_lrelu(_np_conv(params['fromrgb'], images))
  p = params['b8']
  skip = _np_conv(p['skip'], _np_down(x))
  x = _np_down(_np_lrelu(_np_conv(p['conv1'], _np_lrelu(_np_conv(p['conv0'], x)))))
  x = (x + skip) / math.sqrt(2)
  p = params['b4']
  x = _np_lrelu(_np_conv(p['conv'], _np_mbstd(x, 4)))
  x = x.reshape(len(x), -1)
  x = _np_lrelu(x @ (p['dense']['weight'] / math.sqrt(x.shape[1])) + p['dense']['bias'])
  return (x @ (p['out']['weight'] / math.sqrt(x.shape[1])) + p['out']['bias'])[:, 0]


def test_param_shapes():
  shapes = discriminator.param_shapes(D_ARCH)
  assert shapes['fromrgb/weight'] == (1, 1, 3, 2)
  assert shapes['b8/conv1/weight'] == (3, 3, 2, 4)
  assert shapes['b8/skip/weight'] == (1, 1, 2, 4)
  assert shapes['b4/conv/weight'] == (3, 3, 5, 4)
  assert shapes['b4/dense/weight'] == (64, 4)
  assert shapes['b4/out/weight'] == (4, 1)
  assert discriminator.DiscriminatorArch(resolution=32).resolutions == [32, 16, 8]


def test_fromrgb_equalized_lr():
  params = _d_params()
  x = np.random.default_rng(2).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
  out = np.asarray(discriminator._conv(params['fromrgb'], jnp.asarray(x)))
  w, b = params['fromrgb']['weight'][0, 0], params['fromrgb']['bias']
  np.testing.assert_allclose(out, x @ w / math.sqrt(3) + b, rtol=1e-5, atol=1e-5)


def test_discriminate_matches_numpy():
  params = _d_params()
  images = np.random.default_rng(3).uniform(-1, 1, (8, 8, 8, 3))
  logits = discriminator.discriminate(params, D_ARCH, jnp.asarray(images, jnp.float32))
  assert logits.shape == (8,)
  np.testing.assert_allclose(np.asarray(logits), _np_discriminate(params, images),
                             rtol=1e-4, atol=1e-4)


# Losses.

def test_r1_penalty_matches_finite_differences():
  params = jax.tree.map(lambda a: np.asarray(a, np.float64), _d_params(4))
  images = np.random.default_rng(5).uniform(-1, 1, (2, 8, 8, 3))
  losses = train._Losses(None, D_ARCH)
  with jax.enable_x64(True):
    penalty = float(losses.r1_penalty(params, jnp.asarray(images)))

    # d(sum_b D(x)_b) / dx: the minibatch-stddev channel couples the two images.
    def total(x):
      return jnp.sum(discriminator.discriminate(params, D_ARCH, x))
    eps = 1e-5
    basis = np.eye(images.size).reshape((-1,) + images.shape) * eps
    plus = jax.vmap(total)(jnp.asarray(images + basis))
    minus = jax.vmap(total)(jnp.asarray(images - basis))
    grad = np.asarray((plus - minus) / (2 * eps)).reshape(images.shape)
  expected = np.mean(np.sum(grad ** 2, axis=(1, 2, 3)))
  assert expected > 1e-3
  assert penalty == pytest.approx(expected, rel=1e-4)


def _softplus(x):
  return math.log1p(math.exp(x))


def test_non_saturating_losses(monkeypatch):
  # The fake discriminator reads each image's first value as its logit.
  monkeypatch.setattr(discriminator, 'discriminate', lambda params, arch, x: x[:, 0, 0, 0])
  losses = train._Losses(None, None)
  real_logits, fake_logits = [2.0, -1.0, 0.5], [0.0, 3.0, -2.5]
  reals = jnp.asarray(real_logits)[:, None, None, None] * jnp.ones((3, 4, 4, 3))
  fakes = jnp.asarray(fake_logits)[:, None, None, None] * jnp.ones((3, 4, 4, 3))
  loss, (real_mean, fake_mean) = losses.discriminator_loss(None, reals, fakes)
  expected = (np.mean([_softplus(f) for f in fake_logits])
              + np.mean([_softplus(-r) for r in real_logits]))
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert float(real_mean) == pytest.approx(0.5)
  assert float(fake_mean) == pytest.approx(1 / 6)

  monkeypatch.setattr(train._Losses, 'generate',
                      lambda self, g, z, keys: z[:, None, None, :] * jnp.ones((1, 4, 4, 1)))
  z = jnp.asarray([[1.5, 0.], [-0.5, 0.], [4.0, 0.]])
  expected = np.mean([_softplus(-1.5), _softplus(0.5), _softplus(-4.0)])
  assert float(losses.generator_loss(None, None, z, None)) == pytest.approx(expected, rel=1e-5)


# Training steps.

def _max_abs(tree_a, tree_b) -> float:
  return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)))


def test_ema_after_one_and_two_steps():
  # batch 8: after step 1, 8 images shown, half-life min(12, 8 * 1.0) = 8 images;
  # after step 2, min(12, 16) = 12.
  config = _small_config(ema_kimg=0.012, ema_rampup=1.0)
  g_arch, d_arch = train.architectures(config)
  optimizer = optax.adam(config.learning_rate, b1=0.0, b2=config.adam_b2, eps=1e-8)
  state0 = train.initial_state(config, g_arch, d_arch, optimizer)
  step = train.make_step(config, g_arch, d_arch, optimizer)
  reals = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 3)), jnp.float32)
  state1, logs = step(state0, reals, jax.random.key(1), regularize=False)
  state2, _ = step(state1, reals, jax.random.key(2), regularize=False)
  assert int(state1['step']) == 1 and int(state2['step']) == 2
  assert set(logs) == {'d_loss', 'g_loss', 'real_logit', 'fake_logit'}
  for previous, current, beta in ((state0, state1, 0.5 ** (8 / 8)),
                                  (state1, state2, 0.5 ** (8 / 12))):
    assert _max_abs(current['g'], previous['g']) > 1e-3   # the generator moved
    expected = jax.tree.map(lambda new, old: new + (old - new) * beta,
                            current['g'], previous['g_ema'])
    assert _max_abs(current['g_ema'], expected) < 1e-5
  # The initial EMA is the initial generator.
  assert _max_abs(state0['g_ema'], state0['g']) == 0


def test_ema_beta_of_the_tiny_config(tmp_path):
  """The trainer (train.train) on the tiny config (at 8 px and with R1 every step, so one
  compiled step), one step, then resumed for a second: the EMA moves from the first step's EMA toward the second
  step's generator by the beta computed here from the config. StyleGAN2-ADA's rule,
  half-life = min(ema_kimg * 1000, images shown * ema_rampup), beta = 0.5 ** (batch /
  half-life), with the images shown counted after the step (ADA counts them before it,
  so its betas come one step later)."""
  batch = toy_gan.get_config('tiny').batch_size
  config = _small_config(total_kimg=batch / 1000, r1_every=1)
  betas = [0.5 ** (batch / min(config.ema_kimg * 1000, step * batch * config.ema_rampup))
           for step in (1, 2)]
  assert betas == pytest.approx([2.0 ** -20, 2.0 ** -10])   # half-lives 0.4 and 0.8 images
  workdir = str(tmp_path / 'run')
  one = jax.device_get(train.train(config, workdir))
  two = jax.device_get(train.train(_small_config(total_kimg=2 * batch / 1000, r1_every=1),
                                    workdir))
  assert int(one['step']) == 1 and int(two['step']) == 2   # the second run resumed
  leaves = lambda tree: np.concatenate([np.ravel(a) for a in jax.tree.leaves(tree)])
  ema1, ema2, g2 = leaves(one['g_ema']), leaves(two['g_ema']), leaves(two['g'])
  # ema2 - g2 = beta (ema1 - g2), where that step is well above float32's spacing at g2
  # (smaller steps round away); beta by least squares over those weights.
  moved = ema1.astype(np.float64) - g2
  left = ema2.astype(np.float64) - g2
  resolved = np.abs(moved) * betas[1] > 100 * np.spacing(np.abs(g2))
  assert resolved.sum() > 100
  fitted = float(moved[resolved] @ left[resolved] / (moved[resolved] @ moved[resolved]))
  assert fitted == pytest.approx(betas[1], rel=0.01), (fitted, betas[1])
  # Step 1's beta (2^-20) leaves the EMA at the generator, to float32 rounding.
  g0 = leaves(train.initial_state(config, *train.architectures(config), optax.adam(0.1))['g'])
  g1 = leaves(one['g'])
  assert np.abs(leaves(one['g_ema']) - g1).max() <= 1e-6 < np.abs(g1 - g0).max()


def test_real_batch_is_drawn_from_seed_and_step():
  config = _small_config()
  reals = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
  a = train.real_batch(config, reals, 5)
  np.testing.assert_array_equal(a, train.real_batch(config, reals, 5))
  assert a.shape == (8, 8, 8, 3) and a.dtype == np.float32
  assert a.min() >= -1 and a.max() <= 1
  # Each image is one of the reals, maybe mirrored.
  candidates = reals.astype(np.float32) / 127.5 - 1
  for image in a:
    assert any(np.array_equal(image, c) or np.array_equal(image, c[:, ::-1])
               for c in candidates)
  assert not np.array_equal(a, train.real_batch(config, reals, 6))


# Export.

def _np_mapping(params, arch, z):
  x = z / np.sqrt(np.mean(z ** 2, axis=1, keepdims=True) + 1e-8)
  for i in range(arch.mapping_layers):
    p = params['mapping'][f'dense{i}']
    w = np.asarray(p['weight'], np.float64)
    x = x @ (w * math.sqrt(2) / math.sqrt(w.shape[0]) * arch.mapping_lrmul)
    x = x + np.asarray(p['bias'], np.float64) * arch.mapping_lrmul
    x = np.where(x >= 0, x, 0.2 * x)
  return x


def test_export_loads_with_params_avg_latent_and_noise(tmp_path):
  config = _small_config(seed=3)
  g_arch, _ = train.architectures(config)
  # Some non-trivial parameters: the initial ones with random biases.
  flat = checkpoint.flatten(train.stylegan1.init_params(g_arch, jax.random.key(7)))
  rng = np.random.default_rng(7)
  flat = {k: (v + rng.normal(0, 0.3, v.shape).astype(np.float32) if k.endswith('bias') else v)
          for k, v in flat.items()}
  g_ema = checkpoint.unflatten(flat)
  train.export(config, g_ema, str(tmp_path / 'gen'), {'note': 'test'})
  g = load_generator(str(tmp_path / 'gen'))
  assert g.arch == g_arch and g.resolution == 8
  loaded = checkpoint.flatten(jax.tree.map(np.asarray, g.params))
  assert sorted(loaded) == sorted(flat)
  for name, value in flat.items():
    np.testing.assert_array_equal(loaded[name], value, err_msg=name)
  z = np.random.RandomState(3).standard_normal((10000, g_arch.latent_size))
  expected = _np_mapping(g_ema, g_arch, z).mean(axis=0)
  np.testing.assert_allclose(np.asarray(g.avg_latent), expected, rtol=1e-4, atol=1e-5)
  assert np.abs(expected).max() > 1e-2
  # Constant noise: RandomState(seed) draws, one per layer, 4, 4, 8, 8 px.
  noise_rng = np.random.RandomState(3)
  assert len(g.const_noise) == 4
  for n, size in zip(g.const_noise, (4, 4, 8, 8)):
    np.testing.assert_array_equal(
        np.asarray(n), noise_rng.standard_normal((1, size, size, 1)).astype(np.float32))
  with open(tmp_path / 'gen' / 'generator.json') as f:
    assert json.load(f)['note'] == 'test'
  image, _ = g(jnp.zeros((1, g_arch.latent_size)), psi=0.5)   # const noise, truncation
  assert image.shape == (1, 8, 8, 3) and np.isfinite(np.asarray(image)).all()


# Whole runs (slow: each `train` call compiles the two step variants).

def _tiny(total_kimg):
  config = toy_gan.get_config('tiny')
  config.unlock()
  config.total_kimg = total_kimg
  return config


def _comparable(state):
  return {k: v for k, v in state.items() if k != 'history'}


@pytest.mark.slow
def test_resume_continues_the_same_run(tmp_path):
  config = toy_gan.get_config('tiny')   # 6 steps of 8 images, checkpoints every 3
  steps = -(-int(config.total_kimg * 1000) // config.batch_size)
  assert steps == 6
  one_go = train.train(config, str(tmp_path / 'one'))
  assert int(one_go['step']) == steps
  first = train.train(_tiny(config.total_kimg / 2), str(tmp_path / 'two'))
  assert int(first['step']) == steps // 2
  resumed = train.train(_tiny(config.total_kimg), str(tmp_path / 'two'))
  assert int(resumed['step']) == steps
  assert _max_abs(one_go['g'], first['g']) > 1e-4   # the second half did something
  leaves_one = jax.tree.leaves(_comparable(one_go))
  leaves_two = jax.tree.leaves(_comparable(resumed))
  assert len(leaves_one) == len(leaves_two)
  for a, b in zip(leaves_one, leaves_two):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Both logs end with the same losses at step 6.
  def last(workdir):
    with open(workdir / 'log.jsonl') as f:
      return [json.loads(line) for line in f][-1]
  assert last(tmp_path / 'one') == last(tmp_path / 'two')
  assert last(tmp_path / 'one')['step'] == steps
  # The real images were rendered once per workdir, from their own seed.
  reals = np.load(tmp_path / 'one' / 'reals.npy')
  assert reals.shape == (config.num_reals, 32, 32, 3) and reals.dtype == np.uint8


@pytest.mark.slow
def test_command_line_trains_and_exports(tmp_path):
  workdir, out = tmp_path / 'work', tmp_path / 'export'
  env = dict(os.environ, PYTHONPATH=REPO)
  result = subprocess.run(
      [sys.executable, '-m', 'dgan_jax.gan', '--config=configs/toy_gan.py:tiny',
       f'--workdir={workdir}', f'--export={out}'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (workdir / 'samples.png').stat().st_size > 0
  with open(workdir / 'log.jsonl') as f:
    log = [json.loads(line) for line in f]
  assert [entry['step'] for entry in log] == [2, 4, 6]
  assert {'d_loss', 'g_loss', 'real_logit', 'fake_logit', 'r1'} <= set(log[0])
  assert all(entry['r1'] > 0 for entry in log)  # the latest penalty (r1_every 2)
  g = load_generator(str(out))
  assert g.resolution == 32 and g.arch.latent_size == 16
  assert g.const_noise is not None and g.avg_latent is not None
  with open(out / 'generator.json') as f:
    meta = json.load(f)
  assert meta['steps'] == 6 and meta['trained_by'] == 'python -m dgan_jax.gan'
  assert meta['config']['batch_size'] == 8
