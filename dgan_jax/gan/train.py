"""Training a StyleGAN (v1) generator from images: the toy domain's GAN.

Non-saturating logistic loss, lazy R1 penalty on real images, Adam (beta1 = 0), an
exponential moving average of the generator weights (what is exported), per-sample
noise inputs, orbax checkpoints (an interrupted run resumes), a progress bar in
images per second and a sample grid every `sample_every` steps. Every draw derives
from config.seed and the step number, so a resumed run continues the same sequence.

  workdir/reals.npy           the rendered training images [N, R, R, 3] uint8
  workdir/checkpoints/        orbax, the full training state
  workdir/samples.png         EMA generator samples at the last `sample_every` step
  workdir/log.jsonl           losses every `log_every` steps

`export` writes the EMA generator in the converted-checkpoint format that
`dgan_jax.generators.load` reads, with constant noise and the average W.
"""

import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from dgan_jax import io
from dgan_jax import training
from dgan_jax.data import images as image_utils
from dgan_jax.errors import InputError
from dgan_jax.gan import discriminator
from dgan_jax.generators import checkpoint
from dgan_jax.generators import style
from dgan_jax.generators import stylegan1


def default_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = 'toy_cars'          # the image source (TRAINING_DATA)
  config.num_reals = 20000          # rendered once into workdir/reals.npy
  config.generator = ml_collections.ConfigDict(dict(
      resolution=32, fmap_base=512, fmap_max=64, latent_size=128, dlatent_size=128,
      mapping_layers=4, mapping_fmaps=128))
  config.discriminator = ml_collections.ConfigDict(dict(fmap_base=1024, fmap_max=64))
  config.batch_size = 32
  config.learning_rate = 0.0025
  config.adam_b2 = 0.99
  config.r1_gamma = 0.05            # R1 weight (gamma / 2 * |grad D(x)|^2)
  config.r1_every = 16              # lazy regularisation interval
  config.ema_kimg = 5.0             # EMA half-life in thousands of images
  config.ema_rampup = 0.05          # half-life at most this fraction of images shown
  config.mirror = True              # random left-right flips of the real images
  config.total_kimg = 240.0
  config.checkpoint_every = 500     # steps
  config.sample_every = 500
  config.log_every = 50
  config.lock()
  return config


def _render_toy_cars(seed: int, count: int, size: int) -> np.ndarray:
  from dgan_jax.toy import render  # pylint: disable=import-outside-toplevel
  return render.render(seed, np.arange(count), size, progress='render')[0]


TRAINING_DATA = {'toy_cars': _render_toy_cars}


def real_images(config, workdir: str, resolution: int | None = None) -> np.ndarray:
  """The training images (config.data, config.num_reals, at `resolution`, default
  config.generator.resolution), rendered on the first call and kept in workdir/reals.npy."""
  resolution = resolution or config.generator.resolution
  path = os.path.join(workdir, 'reals.npy')
  if os.path.exists(path):
    reals = np.load(path, mmap_mode='r')
    if reals.shape[0] == config.num_reals and reals.shape[1] == resolution:
      return np.asarray(reals)
  if config.data not in TRAINING_DATA:
    raise InputError(f'config.data: unknown image source {config.data!r}; '
                     f'known: {sorted(TRAINING_DATA)}')
  # The real images come from a stream separate from the generator's draws.
  reals = TRAINING_DATA[config.data](config.seed + 1_000_003, config.num_reals, resolution)
  io.save_npy(path, reals)
  return reals


def architectures(config) -> tuple[stylegan1.StyleGAN1Arch, discriminator.DiscriminatorArch]:
  g = config.generator
  g_arch = stylegan1.StyleGAN1Arch(
      resolution=g.resolution, fmap_base=g.fmap_base, fmap_max=g.fmap_max,
      latent_size=g.latent_size, dlatent_size=g.dlatent_size, mapping_layers=g.mapping_layers,
      mapping_fmaps=g.mapping_fmaps)
  d_arch = discriminator.DiscriminatorArch(resolution=g.resolution,
                                           fmap_base=config.discriminator.fmap_base,
                                           fmap_max=config.discriminator.fmap_max)
  return g_arch, d_arch


@dataclasses.dataclass(frozen=True)
class _Losses:
  g_arch: stylegan1.StyleGAN1Arch
  d_arch: discriminator.DiscriminatorArch

  def generate(self, g_params, z, noise_keys):
    """z [B, latent] -> images [B, R, R, 3]."""
    w = stylegan1.mapping(g_params, self.g_arch, z)
    noise = style.noise_from_keys(self.g_arch, noise_keys)
    return stylegan1.synthesis(g_params, self.g_arch, w, noise)[0]

  def generator_loss(self, g_params, d_params, z, noise_keys):
    fake = self.generate(g_params, z, noise_keys)
    return jnp.mean(jax.nn.softplus(-discriminator.discriminate(d_params, self.d_arch, fake)))

  def discriminator_loss(self, d_params, reals, fakes):
    both = discriminator.discriminate(d_params, self.d_arch, jnp.concatenate([reals, fakes]))
    real_logits, fake_logits = jnp.split(both, 2)
    loss = jnp.mean(jax.nn.softplus(fake_logits)) + jnp.mean(jax.nn.softplus(-real_logits))
    return loss, (jnp.mean(real_logits), jnp.mean(fake_logits))

  def r1_penalty(self, d_params, reals):
    """mean over images of |dD(x)/dx|^2."""
    grad = jax.grad(lambda x: jnp.sum(discriminator.discriminate(d_params, self.d_arch, x)))(
        reals)
    return jnp.mean(jnp.sum(jnp.square(grad), axis=(1, 2, 3)))


def make_step(config, g_arch, d_arch, optimizer):
  """-> step(state, reals [B, R, R, 3] float, key, regularize: static bool) -> (state, logs)."""
  losses = _Losses(g_arch, d_arch)
  batch = config.batch_size

  @functools.partial(jax.jit, static_argnames=('regularize',))
  def step(state, reals, key, regularize):
    z_key, noise_key, g_z_key, g_noise_key = jax.random.split(key, 4)
    logs = {}
    # Discriminator.
    z = jax.random.normal(z_key, (batch, g_arch.latent_size))
    fakes = jax.lax.stop_gradient(
        losses.generate(state['g'], z, jax.random.split(noise_key, batch)))

    def d_objective(d_params):
      loss, (real_logit, fake_logit) = losses.discriminator_loss(d_params, reals, fakes)
      r1 = losses.r1_penalty(d_params, reals) if regularize else jnp.zeros(())
      total = loss + r1 * (config.r1_gamma / 2) * config.r1_every
      return total, (loss, real_logit, fake_logit, r1)

    d_grads, (d_loss, real_logit, fake_logit, r1) = jax.grad(d_objective, has_aux=True)(
        state['d'])
    if regularize:
      logs['r1'] = r1
    d_updates, d_opt = optimizer.update(d_grads, state['d_opt'], state['d'])
    d_params = optax.apply_updates(state['d'], d_updates)
    # Generator.
    z = jax.random.normal(g_z_key, (batch, g_arch.latent_size))
    g_loss, g_grads = jax.value_and_grad(losses.generator_loss)(
        state['g'], d_params, z, jax.random.split(g_noise_key, batch))
    g_updates, g_opt = optimizer.update(g_grads, state['g_opt'], state['g'])
    g_params = optax.apply_updates(state['g'], g_updates)
    # EMA of the generator: half-life ema_kimg, shorter early on.
    images_shown = (state['step'] + 1).astype(jnp.float32) * batch
    half_life = jnp.minimum(config.ema_kimg * 1000.0, images_shown * config.ema_rampup)
    beta = 0.5 ** (batch / jnp.maximum(half_life, 1e-8))
    g_ema = jax.tree.map(lambda e, p: p + (e - p) * beta, state['g_ema'], g_params)
    logs.update(d_loss=d_loss, g_loss=g_loss, real_logit=real_logit, fake_logit=fake_logit)
    state = {'step': state['step'] + 1, 'g': g_params, 'd': d_params, 'g_ema': g_ema,
             'g_opt': g_opt, 'd_opt': d_opt}
    return state, logs

  return step


def initial_state(config, g_arch, d_arch, optimizer) -> dict:
  key = jax.random.key(config.seed)
  g = jax.tree.map(jnp.asarray, stylegan1.init_params(g_arch, jax.random.fold_in(key, 0)))
  d = jax.tree.map(jnp.asarray, discriminator.init_params(d_arch, jax.random.fold_in(key, 1)))
  return {'step': jnp.zeros((), jnp.int32), 'g': g, 'd': d,
          'g_ema': jax.tree.map(jnp.copy, g), 'g_opt': optimizer.init(g),
          'd_opt': optimizer.init(d)}


def real_batch(config, reals: np.ndarray, step: int, stream: int = 2) -> np.ndarray:
  """The step's config.batch_size real images as float [-1, 1], drawn from (seed, stream,
  step), flipped left-right at random with config.mirror."""
  rng = np.random.default_rng([config.seed, stream, step])
  batch = reals[rng.integers(0, len(reals), config.batch_size)].astype(np.float32)
  if config.mirror:
    flip = rng.uniform(size=config.batch_size) < 0.5
    batch[flip] = batch[flip, :, ::-1]
  return batch / 127.5 - 1.0


def sample_grid(g_arch, g_params, seed: int, count: int = 64) -> np.ndarray:
  """A uint8 grid of `count` samples (fixed z and noise from `seed`), 8 per row."""
  key = jax.random.key(seed)
  z = jax.random.normal(key, (count, g_arch.latent_size))
  images = _Losses(g_arch, None).generate(g_params, z, jax.random.split(key, count))
  return image_utils.grid(image_utils.to_uint8(np.asarray(images)), 8)


def train(config, workdir: str) -> dict:
  """Trains until config.total_kimg thousand images were shown (resuming from the
  latest checkpoint) and returns the final state on the host."""
  os.makedirs(workdir, exist_ok=True)
  reals = real_images(config, workdir)
  g_arch, d_arch = architectures(config)
  optimizer = optax.adam(config.learning_rate, b1=0.0, b2=config.adam_b2, eps=1e-8)
  state = initial_state(config, g_arch, d_arch, optimizer)
  shardings = jax.tree.map(lambda x: x.sharding, state)
  with training.quiet_orbax_logging():
    manager, state = training.open_checkpoints(os.path.join(workdir, 'checkpoints'),
                                               config.checkpoint_every, state, shardings, 'gan')
  step_fn = make_step(config, g_arch, d_arch, optimizer)
  first = int(state['step'])
  # A total below the checkpoint's step stops there (`--config.total_kimg=0` exports it).
  total_steps = max(first, -(-int(config.total_kimg * 1000) // config.batch_size))
  bar = tqdm(total=total_steps * config.batch_size, initial=first * config.batch_size,
             desc='gan', unit='img', unit_scale=True)
  history = {}
  with training.quiet_orbax_logging(), open(os.path.join(workdir, 'log.jsonl'), 'a') as log:
    run_start, last_r1 = None, jnp.nan
    for step in range(first, total_steps):
      # Steps 0 and 1 reuse the keys that initialised G and D (fold_in(key, 0 and 1)),
      # which is harmless; kept so that the published weights stay reproducible.
      key = jax.random.fold_in(jax.random.key(config.seed), step)
      regularize = step % config.r1_every == 0
      state, logs = step_fn(state, real_batch(config, reals, step), key, regularize)
      if regularize:
        last_r1 = logs.pop('r1')
      if run_start is None:
        jax.block_until_ready(state)
        run_start = time.perf_counter()
      done = step + 1
      if done % config.log_every == 0 or done == total_steps:
        logs = {k: round(float(v), 4) for k, v in {**logs, 'r1': last_r1}.items()}
        bar.update(done * config.batch_size - bar.n)
        bar.set_postfix(g=logs['g_loss'], d=logs['d_loss'])
        log.write(json.dumps({'step': done, 'kimg': done * config.batch_size / 1000, **logs})
                  + '\n')
        log.flush()
      if done % config.sample_every == 0 or done == total_steps:
        image_utils.save_png(os.path.join(workdir, 'samples.png'),
                             sample_grid(g_arch, state['g_ema'], config.seed))
      if manager is not None:
        manager.save(done, args=_standard_save(state))
    if manager is not None and manager.latest_step() != total_steps:
      manager.save(total_steps, args=_standard_save(state), force=True)
    # The bar counts images, so finish_run closes it; the manager is closed here.
    state, _ = training.finish_run(state, total_steps * config.batch_size, bar, None, history,
                                   run_start, (total_steps - first) * config.batch_size)
    if manager is not None:
      manager.wait_until_finished()
      manager.close()
  return state


def _standard_save(state):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  return ocp.args.StandardSave(state)


def export(config, g_params, out_dir: str, info: dict | None = None) -> None:
  """Writes the generator (EMA weights) as a converted checkpoint directory: its
  architecture, parameters, constant noise from RandomState(seed) and the average W
  of 10,000 mapped z."""
  g_arch, _ = architectures(config)
  g_params = jax.tree.map(np.asarray, g_params)
  z = np.random.RandomState(config.seed).standard_normal((10000, g_arch.latent_size))
  avg_latent = np.asarray(stylegan1.mapping(g_params, g_arch, jnp.asarray(z, jnp.float32))[:, 0]
                          ).mean(axis=0)
  extras = {f'noise/{j}': n for j, n in
            enumerate(style.draw_const_noise(g_arch, config.seed))}
  extras['avg_latent'] = avg_latent
  checkpoint.save(out_dir, g_arch.to_json(), g_params, extras, info)
