"""Training the segmentation head ensemble on annotated BigGAN samples.

As BigDatasetGAN's train.py: every step regenerates a batch of annotated samples from
their latents and classes with the frozen generator (stored batch-norm statistics),
runs the head in training mode (batch statistics, power-iteration updates) and takes an
Adam step (PyTorch's defaults) on the mean binary cross-entropy between the foreground
logit and the mask. Batches follow a fresh permutation of the annotated samples every
epoch (numpy.random.default_rng([seed, BATCH_STREAM, epoch])), cut into whole batches.

An ensemble of M heads trains at once: the members see the same batches (the generator
runs once per step) and differ in their initialisation (`head.init`); their
losses are summed, so their gradients stay apart. The step is jit-compiled and
data-parallel over the local devices (batch sharded, head replicated). The training
state is checkpointed with orbax every `checkpoint_every` steps; a rerun resumes from
the newest checkpoint with the same batches it would have seen.
"""

import concurrent.futures
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from dgan_jax import training
from dgan_jax.bigdatasetgan import factory as factory_lib
from dgan_jax.bigdatasetgan import head as head_lib
from dgan_jax.bigdatasetgan import layout as layout_lib
from dgan_jax.errors import InputError
from dgan_jax.generators import biggan

BATCH_STREAM = 12
INIT_STREAM = 13


@dataclasses.dataclass(frozen=True)
class TrainOptions:
  """What `train` needs from config.biggan.train (see dgan_jax/config.py)."""
  num_steps: int = 5000
  batch_size: int = 4
  learning_rate: float = 1e-3
  checkpoint_every: int = 1000
  log_every: int = 100

  @classmethod
  def from_config(cls, train_config) -> 'TrainOptions':
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: train_config[k] for k in fields if k in train_config})


def batch_order(seed: int, epoch: int, num_samples: int, batch_size: int) -> np.ndarray:
  """The batches of `epoch`: [num_samples // batch_size, batch_size] annotated-sample ids
  (a permutation cut into whole batches; the remainder waits for another epoch)."""
  order = np.random.default_rng([seed, BATCH_STREAM, epoch]).permutation(num_samples)
  steps = num_samples // batch_size
  return order[:steps * batch_size].reshape(steps, batch_size)


def make_mesh(devices=None) -> Mesh:
  return Mesh(np.asarray(devices if devices is not None else jax.local_devices()), ('data',))


def init_state(arch: head_lib.HeadArch, options: TrainOptions, seed: int) -> dict:
  """{'params', 'sn', 'batch_stats', 'opt_state', 'step'}, members stacked."""
  variables = head_lib.init(arch, (seed, INIT_STREAM))
  return {**variables, 'opt_state': optax.adam(options.learning_rate).init(variables['params']),
          'step': jnp.zeros((), jnp.int32)}


def generator_features(gen_arch: biggan.BigGANArch, dtype, gen_params, z: jax.Array,
                       class_ids: jax.Array):
  """-> (image [B, R, R, 3], feature maps, class embedding [B, shared_dim]), frozen."""
  vectors = jax.nn.one_hot(class_ids, gen_arch.num_classes, dtype=dtype)
  embedding = biggan.embed_classes(gen_params, vectors)
  image, maps = biggan.synthesis(gen_params, gen_arch, z.astype(dtype), embedding)
  return jax.lax.stop_gradient((image, maps, embedding))


def make_train_step(g, arch: head_lib.HeadArch, options: TrainOptions):
  """The compiled step (state, generator params, z [B, dim_z], class ids [B],
  masks [B, S, S]) -> (state, {'loss': [M], 'accuracy': [M]}); one per architecture."""
  return _train_step(g.arch, jnp.dtype(g.dtype).name, arch, options)


@functools.lru_cache(maxsize=None)
def _train_step(gen_arch, dtype_name: str, arch: head_lib.HeadArch, options: TrainOptions):
  tx = optax.adam(options.learning_rate)   # PyTorch's defaults: b1 0.9, b2 0.999, eps 1e-8
  dtype = jnp.dtype(dtype_name)

  def step_fn(state, gen_params, z, class_ids, masks):
    _, maps, embedding = generator_features(gen_arch, dtype, gen_params, z, class_ids)
    target = masks.astype(jnp.float32)[None]                    # [1, B, S, S]

    def loss_fn(params):
      variables = {'params': params, 'sn': state['sn'], 'batch_stats': state['batch_stats']}
      logits, new = head_lib.apply(arch, variables, maps, embedding, train=True)
      logits = logits[..., 0]                                   # [M, B, S, S]
      losses = optax.sigmoid_binary_cross_entropy(logits, target).mean(axis=(1, 2, 3))
      accuracy = jnp.mean((logits > 0) == (target > 0.5), axis=(1, 2, 3))
      return losses.sum(), (losses, accuracy, new)

    grads, (losses, accuracy, new) = jax.grad(loss_fn, has_aux=True)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    new_state = {'params': optax.apply_updates(state['params'], updates), 'sn': new['sn'],
                 'batch_stats': new['batch_stats'], 'opt_state': opt_state,
                 'step': state['step'] + 1}
    return new_state, {'loss': losses, 'accuracy': accuracy}

  return jax.jit(step_fn, donate_argnums=(0,))


def make_predict(g, arch: head_lib.HeadArch):
  """Compiled evaluation: (generator params, head variables, z [B, dim_z], class ids [B])
  -> (image uint8 [B, R, R, 3], label [B, S, S] majority vote, pixel JS [B, S, S])."""
  return _predict(g.arch, jnp.dtype(g.dtype).name, arch)


@functools.lru_cache(maxsize=None)
def _predict(gen_arch, dtype_name: str, arch: head_lib.HeadArch):
  dtype = jnp.dtype(dtype_name)

  @jax.jit
  def predict(gen_params, variables, z, class_ids):
    image, maps, embedding = generator_features(gen_arch, dtype, gen_params, z, class_ids)
    logits, _ = head_lib.apply(arch, variables, maps, embedding, train=False)
    label, pixel_js, _ = factory_lib.label_and_score(logits, 1.0)
    return factory_lib.to_uint8(image), label, pixel_js

  return predict


def train(g, data: layout_lib.Annotations, arch: head_lib.HeadArch, options: TrainOptions,
          seed: int, checkpoint_dir: str | None = None, mesh: Mesh | None = None,
          progress: bool = True, stop_after: int | None = None) -> dict:
  """Trains the ensemble for options.num_steps steps (resuming from `checkpoint_dir`).

  `stop_after` ends the run after that many steps in total, as an interruption would.
  Returns the final state on the host (see `init_state`) plus 'history' (step, per-member
  loss and accuracy every log_every-th step of this run) and 'images_per_second' (over
  this run's steps after the first, compiling, one).
  """
  with training.quiet_orbax_logging():
    return _train(g, data, arch, options, seed, checkpoint_dir, mesh, progress, stop_after)


def _train(g, data, arch, options, seed, checkpoint_dir, mesh, progress, stop_after):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  mesh = mesh or make_mesh()
  batch_size = options.batch_size
  if batch_size % mesh.size:
    raise InputError(f'config.biggan.train.batch_size {batch_size} does not split over '
                     f'{mesh.size} devices')
  steps_per_epoch = len(data) // batch_size
  if steps_per_epoch == 0:
    raise InputError(f'{len(data)} annotated samples in {data.root} do not fill one batch '
                     f'of config.biggan.train.batch_size={batch_size}')
  total_steps = options.num_steps if stop_after is None else min(options.num_steps,
                                                                  stop_after)
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P('data'))
  state = jax.device_put(init_state(arch, options, seed), replicated)
  gen_params = jax.device_put(g.params, replicated)

  manager, state = training.open_checkpoints(
      checkpoint_dir, options.checkpoint_every, state,
      jax.tree.map(lambda _: replicated, state), 'segmentation head')

  step_fn = make_train_step(g, arch, options)
  size = arch.output_size

  def host_batch(step):
    epoch, position = divmod(step, steps_per_epoch)
    ids = batch_order(seed, epoch, len(data), batch_size)[position]
    return data.latents[ids], data.class_ids[ids], data.masks(ids, size)

  step = int(state['step'])
  first_step = step
  history = {'step': [], 'loss': [], 'accuracy': []}
  bar = tqdm(total=total_steps, initial=step, desc='segmentation head', unit='step',
             disable=not progress, dynamic_ncols=True)
  window_start, window_images = time.perf_counter(), 0
  run_start, run_images = None, 0
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    pending = pool.submit(host_batch, step) if step < total_steps else None
    while step < total_steps:
      z, class_ids, masks = pending.result()
      if step + 1 < total_steps:
        pending = pool.submit(host_batch, step + 1)   # masks load while the step runs
      batch = jax.device_put((z, class_ids, masks), batch_sharding)
      state, metrics = step_fn(state, gen_params, *batch)
      step += 1
      window_images += batch_size
      if step == first_step + 1:
        jax.block_until_ready(metrics)
        run_start = time.perf_counter()
      else:
        run_images += batch_size
      if manager is not None:
        manager.save(step, args=ocp.args.StandardSave(state))
      if step % options.log_every == 0 or step == total_steps:
        metrics = jax.device_get(metrics)
        now = time.perf_counter()
        history['step'].append(step)
        history['loss'].append(metrics['loss'])
        history['accuracy'].append(metrics['accuracy'])
        bar.set_postfix(loss=f'{metrics["loss"].mean():.4f}',
                        acc=f'{100 * metrics["accuracy"].mean():.1f}%',
                        img_s=f'{window_images / (now - window_start):.2f}')
        bar.update(step - bar.n)
        window_start, window_images = now, 0
  state, rate = training.finish_run(state, step, bar, manager, history, run_start, run_images)
  state['images_per_second'] = rate
  return state


def variables_of(state: dict) -> dict:
  """The head's variables ({'params', 'sn', 'batch_stats'}) of a training state."""
  return {k: state[k] for k in ('params', 'sn', 'batch_stats')}
