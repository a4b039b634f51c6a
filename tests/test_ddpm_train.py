"""The DDPM trainer (dgan_jax/ddpm/train.py) against guided_diffusion (guided-diffusion-sdk):
its loss is GaussianDiffusion.training_losses' 'mse' on the same network, noise and
timesteps; its zero-initialised layers are those guided_diffusion's fresh UNetModel holds
at zero; a run interrupted and resumed ends where an uninterrupted one does; the export
loads as a DDPM generator."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

import conftest
from configs import toy_ddpm
from configs import toy_ddpm_train
from convert_weights import ddpm as convert_ddpm
from dgan_jax import generators
from dgan_jax.ddpm import train
from dgan_jax.errors import InputError
from dgan_jax.generators import checkpoint

torch = pytest.importorskip('torch')
script_util = pytest.importorskip('guided_diffusion.script_util')
gaussian_diffusion = pytest.importorskip('guided_diffusion.gaussian_diffusion')

LOSS_BOUND = 1e-5   # relative; float32 on both sides


def _tiny_config():
  config = toy_ddpm_train.get_config('tiny')
  with config.unlocked():
    config.model.image_size = 16
    config.model.channel_mult = (1, 2)
    config.model.attention_resolutions = (8,)
  return config


def _reference_model(arch):
  """guided_diffusion's UNetModel with the trainer's architecture, fresh (its own init)."""
  return script_util.create_model(
      arch.image_size, arch.model_channels, arch.num_res_blocks,
      channel_mult=','.join(str(int(m)) for m in arch.channel_mult),
      learn_sigma=arch.learn_sigma, class_cond=False,
      attention_resolutions=','.join(str(r) for r in arch.attention_resolutions),
      num_heads=arch.num_heads, num_head_channels=arch.num_head_channels,
      use_scale_shift_norm=arch.use_scale_shift_norm,
      resblock_updown=arch.resblock_updown).eval()


def test_zero_initialised_layers_are_guided_diffusions():
  """The parameters a fresh UNetModel holds at zero (its zero_module layers; GroupNorm
  biases, zero there, are random here) are ours; no other parameter of ours is zero."""
  arch = train.architecture(_tiny_config())
  model = _reference_model(arch)
  state = {k.replace('.', '/'): v for k, v in model.state_dict().items()}
  ours = {k: np.asarray(v) for k, v in checkpoint.flatten(train.initial_params(arch, 0)).items()}
  assert set(ours) == set(state)
  norm_biases = {k for k in state if k.endswith('/bias')
                 and (state[k[:-len('bias')] + 'weight'] == 1).all()}
  theirs = {k for k, v in state.items() if not v.abs().max()} - norm_biases
  assert theirs and {k for k, v in ours.items() if not np.abs(v).max()} == theirs


def test_loss_is_guided_diffusions_mse():
  """simple_loss on random weights against training_losses(model, x_start, t, noise)
  (loss_type MSE, fixed variance: the 'mse' term only), mean over the batch."""
  arch = train.architecture(_tiny_config())
  model = _reference_model(arch)
  rng = np.random.RandomState(0)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.from_numpy(rng.standard_normal(p.shape).astype(np.float32)
                               / np.sqrt(np.prod(p.shape[1:]) if p.ndim > 1 else 10)))
  params = checkpoint.unflatten(convert_ddpm.to_params(
      {k: v.numpy() for k, v in model.state_dict().items()}))
  process = script_util.create_gaussian_diffusion(
      steps=arch.diffusion_steps, learn_sigma=False, noise_schedule=arch.noise_schedule)
  assert process.loss_type == gaussian_diffusion.LossType.MSE
  x0 = rng.uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
  noise = rng.standard_normal(x0.shape).astype(np.float32)
  t = np.array([0, 417, 999])
  nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
  with torch.no_grad():
    want = process.training_losses(model, nchw(x0), torch.from_numpy(t),
                                   noise=nchw(noise))['loss'].mean().item()
  got = float(jax.jit(train.simple_loss, static_argnums=1)(params, arch, x0, t, noise))
  assert abs(got - want) <= LOSS_BOUND * want
  # A mutation: the model fed the unscaled step index off by one gives another loss.
  assert abs(float(train.simple_loss(params, arch, x0, np.minimum(t + 1, 999), noise))
             - want) > 10 * LOSS_BOUND * want


def test_resumed_run_ends_as_uninterrupted_and_exports(tmp_path):
  config = _tiny_config()
  whole = train.train(config, str(tmp_path / 'whole'))
  halves = tmp_path / 'halves'
  with config.unlocked():
    config.num_steps = 3
  train.train(config, str(halves))
  with config.unlocked():
    config.num_steps = 6
  resumed = train.train(config, str(halves))
  assert int(whole['step']) == int(resumed['step']) == 6
  for a, b in zip(jax.tree.leaves(whole['ema']), jax.tree.leaves(resumed['ema'])):
    np.testing.assert_array_equal(a, b)
  assert list(resumed['history']['step']) == [2, 3, 4, 6]   # log_every 2, and each end
  assert (halves / 'samples.png').is_file()

  assert train.exported_weights(config, whole) is whole['params']   # the toy config's choice
  with config.unlocked():
    config.export_weights = 'ema'
  assert train.exported_weights(config, whole) is whole['ema']
  with config.unlocked():
    config.export_weights = 'last'
  with pytest.raises(InputError, match="config.export_weights must be one of"):
    train.exported_weights(config, whole)
  with pytest.raises(InputError, match="config.export_weights must be one of"):
    train.train(config, str(tmp_path / 'never'))
  assert not (tmp_path / 'never').exists()   # refused before anything is written
  with config.unlocked():
    config.export_weights = 'ema'
  train.export(config, whole['ema'], str(tmp_path / 'export'), {'steps': 6})
  g = generators.load(str(tmp_path / 'export'))
  assert g.family == 'ddpm' and dataclasses.asdict(g.arch) == dataclasses.asdict(
      train.architecture(config))
  for name, value in checkpoint.flatten(whole['ema']).items():
    np.testing.assert_array_equal(checkpoint.flatten(g.params)[name], value)
  images = np.asarray(g.sample(np.arange(2), timestep_respacing='2'))
  assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()


def test_shipped_toy_ddpm_matches_its_stored_outputs():
  """checkpoints/toy_ddpm32 through configs/toy_ddpm.py's loader: two feature maps of two
  renders and a 4-step sample against tests/data/toy_ddpm32_golden.npz (written when the
  checkpoint was shipped), so a changed checkpoint or loader fails here; and the config
  it records is configs/toy_ddpm_train.py's, the command that reproduces it."""
  golden = np.load(os.path.join(conftest.DATA_DIR, 'toy_ddpm32_golden.npz'))
  config = toy_ddpm.get_config()
  g = generators.from_config(config.generator, config.seed)
  assert (g.family, g.resolution) == ('ddpm', 32)
  maps = g.features(golden['images'].astype(np.float32) / 127.5 - 1, steps=(50, 250),
                    blocks=(1, 5), seed=0)
  np.testing.assert_allclose(maps[0], golden['t50_out1'], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(maps[3])[:, ::4, ::4], golden['t250_out5_every4'],
                             rtol=1e-4, atol=1e-4)
  sample = g.sample(np.arange(2), seed=0, timestep_respacing='4')
  np.testing.assert_allclose(sample, golden['sample_4_steps'], atol=1e-4)
  with open(os.path.join(config.generator.checkpoint, 'generator.json')) as f:
    recorded = json.load(f)
  assert recorded['config'] == json.loads(json.dumps(toy_ddpm_train.get_config().to_dict()))
  assert (recorded['steps'], recorded['weights']) == (4000, 'params')
