"""Training a DDPM (guided-diffusion's UNet, dgan_jax/generators/ddpm.py) from images:
the toy domain's diffusion model.

Ho et al.'s simple objective: t ~ U{0, ..., T-1}, eps ~ N(0, I), x_t = q_sample(x_0, t,
eps), loss = mean |eps - eps_theta(x_t, t)|^2 (guided-diffusion's 'mse' loss; learn_sigma
is off: the variance is fixed, beta_t or the posterior's with sigma_small). Adam with a
linear warm-up, gradients clipped by global norm, an exponential moving average of the
weights (exported by default; config.export_weights), random left-right flips, orbax checkpoints (an interrupted run
resumes), a progress bar in images per second and a sample grid every `sample_every`
steps. Every draw derives from config.seed and the step, so a resumed run continues the
same sequence. The weights start as guided-diffusion's do where it matters: each
ResBlock's last convolution, the attention's proj_out and the output convolution zero.

  workdir/reals.npy         the rendered training images [N, R, R, 3] uint8 (the toy GAN's)
  workdir/checkpoints/      orbax, the full training state, and history.json (the losses)
  workdir/samples.png       samples of the weights `export` writes, at the last
                            `sample_every` step

`export` writes the EMA weights (or, with config.export_weights 'params', the raw ones) in
the converted-checkpoint format (generator.json with arch.type 'ddpm', params.npz) that
`dgan_jax.generators.load` reads.
"""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dgan_jax import parallel
from dgan_jax import training
from dgan_jax.data import images as image_utils
from dgan_jax.errors import InputError
from dgan_jax.gan import train as gan_train
from dgan_jax.generators import checkpoint
from dgan_jax.generators import ddpm
from dgan_jax.generators import ddpm_unet
from dgan_jax.generators import diffusion

# Parameters guided-diffusion initialises to zero (`zero_module`).
_ZERO_INIT = ('out_layers/3/', 'proj_out/', 'out/2/')
EXPORT_CHOICES = ('ema', 'params')
SAMPLE_SEED_OFFSET = 7   # the sample grid's draws: a seed of their own
REAL_BATCH_STREAM = 3    # the GAN's batches use stream 2


def default_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = 'toy_cars'          # the image source (dgan_jax.gan.train.TRAINING_DATA)
  config.num_reals = 20000          # rendered once into workdir/reals.npy
  # generator.json's arch (DDPMArch's fields)
  config.model = ml_collections.ConfigDict(dict(
      image_size=32, model_channels=32, num_res_blocks=1, channel_mult=(1, 2, 2),
      attention_resolutions=(8,), num_heads=4, num_head_channels=-1,
      use_scale_shift_norm=True, resblock_updown=False, learn_sigma=False,
      diffusion_steps=1000, noise_schedule='linear'))
  config.batch_size = 32
  config.learning_rate = 1e-3
  config.warmup_steps = 200
  config.grad_clip = 1.0
  config.ema_decay = 0.999
  config.export_weights = 'ema'     # what --export writes: 'ema' or 'params' (the raw weights)
  config.mirror = True
  config.num_steps = 4000
  config.checkpoint_every = 500
  config.sample_every = 1000
  config.sample_respacing = '50'    # the sample grid's DDPM steps
  config.log_every = 50
  config.lock()
  return config


def architecture(config) -> ddpm.DDPMArch:
  """config.model as a DDPMArch; InputError for what the trainer cannot train (or export)."""
  if config.export_weights not in EXPORT_CHOICES:
    raise InputError(f'config.export_weights must be one of {EXPORT_CHOICES}, got '
                     f'{config.export_weights!r}')
  arch = ddpm.DDPMArch(**config.model.to_dict())
  if arch.learn_sigma:
    raise InputError('config.model.learn_sigma: the trainer fits eps only (the simple '
                     'objective); a learned variance needs the VLB term, not implemented')
  if arch.num_classes:
    raise InputError('config.model.num_classes: the trainer draws unconditional images')
  return arch


def initial_params(arch: ddpm.DDPMArch, seed: int) -> dict:
  """random_params' weights (GroupNorm scales 1 + N(0, 0.1^2), biases N(0, 0.1^2)) with
  guided-diffusion's zero-initialised layers zeroed."""
  flat = ddpm_unet.random_params(arch.unet, jax.random.key(seed))
  flat = {k: (np.zeros_like(v) if any(k.startswith(z) or f'/{z}' in k for z in _ZERO_INIT)
              else v) for k, v in flat.items()}
  return jax.tree.map(jnp.asarray, checkpoint.unflatten(flat))


def make_optimizer(config):
  schedule = optax.linear_schedule(0.0, config.learning_rate, max(config.warmup_steps, 1))
  return optax.chain(optax.clip_by_global_norm(config.grad_clip), optax.adam(schedule))


def simple_loss(params, arch: ddpm.DDPMArch, x0: jax.Array, t: jax.Array,
                noise: jax.Array) -> jax.Array:
  """x0 [B, R, R, 3] in [-1, 1], t [B] int, noise like x0 -> mean |noise - eps(x_t, t)|^2."""
  process = diffusion.Diffusion(arch.diffusion, arch.learn_sigma)
  x_t = process.q_sample(x0, t, noise)
  eps = ddpm_unet.apply(params, arch.unet, x_t, process.model_timesteps(t))[0]
  return jnp.mean(jnp.square(eps - noise))


def make_step(config, arch: ddpm.DDPMArch, optimizer):
  """-> step(state, reals [B, R, R, 3] in [-1, 1], key) -> (state, {'loss'})."""

  @functools.partial(jax.jit, compiler_options=parallel.compiler_options())
  def step(state, reals, key):
    t_key, noise_key = jax.random.split(key)
    t = jax.random.randint(t_key, (reals.shape[0],), 0, arch.diffusion_steps)
    noise = jax.random.normal(noise_key, reals.shape)
    loss, grads = jax.value_and_grad(simple_loss)(state['params'], arch, reals, t, noise)
    updates, opt = optimizer.update(grads, state['opt'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    ema = jax.tree.map(lambda e, p: config.ema_decay * e + (1 - config.ema_decay) * p,
                       state['ema'], params)
    return {'step': state['step'] + 1, 'params': params, 'ema': ema, 'opt': opt}, {'loss': loss}

  return step


def sample_grid(config, arch: ddpm.DDPMArch, params, count: int = 64) -> np.ndarray:
  """A uint8 grid of `count` samples (DDPM over config.sample_respacing's steps), 8 per row."""
  g = ddpm.DDPMGenerator(arch, params)
  images = g.sample(np.arange(count), seed=config.seed + SAMPLE_SEED_OFFSET,
                    timestep_respacing=config.sample_respacing)
  return image_utils.grid(image_utils.to_uint8(np.clip(np.asarray(images), -1, 1)), 8)


def train(config, workdir: str) -> dict:
  """Trains to config.num_steps (resuming from the latest checkpoint) -> the final state on
  the host, with 'history'."""
  arch = architecture(config)
  os.makedirs(workdir, exist_ok=True)
  reals = gan_train.real_images(config, workdir, arch.image_size)
  optimizer = make_optimizer(config)
  params = initial_params(arch, config.seed)
  state = {'step': jnp.zeros((), jnp.int32), 'params': params,
           'ema': jax.tree.map(jnp.copy, params), 'opt': optimizer.init(params)}
  shardings = jax.tree.map(lambda x: x.sharding, state)
  step_fn = make_step(config, arch, optimizer)

  def one_step(state, step, limit):
    del limit
    key = jax.random.fold_in(jax.random.key(config.seed), step)
    batch = gan_train.real_batch(config, reals, step, REAL_BATCH_STREAM)
    state, metrics = step_fn(state, batch, key)
    done = step + 1
    if done % config.sample_every == 0 or done == config.num_steps:
      image_utils.save_png(os.path.join(workdir, 'samples.png'),
                           sample_grid(config, arch, exported_weights(config, state)))
    return state, metrics, config.batch_size, 1

  state, _ = training.run(
      state, os.path.join(workdir, 'checkpoints'), config.checkpoint_every, shardings,
      config.num_steps, one_step, desc='ddpm', rate_name='img/s', log_every=config.log_every,
      metric_names=('loss',), postfix=lambda m: {'loss': f'{float(m["loss"]):.4f}'})
  return state


def exported_weights(config, state: dict) -> dict:
  """The weights `export` takes from a training state: config.export_weights'."""
  architecture(config)   # checks the field
  return state[config.export_weights]


def export(config, params, out_dir: str, info: dict | None = None) -> None:
  """Writes params (see `exported_weights`) as a converted checkpoint directory
  (arch.type 'ddpm')."""
  arch_json = {'type': 'ddpm', **dataclasses.asdict(architecture(config))}
  checkpoint.save(out_dir, arch_json, jax.tree.map(np.asarray, params), {}, info)
