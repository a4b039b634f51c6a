"""Training DeepLabV3: one jitted, data-parallel step; a checkpoint every epoch; resume.

DatasetGAN's recipe (train_deeplab.py): Adam (lr 1e-3, PyTorch defaults otherwise),
batch 8, 20 epochs, pixel-wise cross-entropy averaged over the batch's pixels,
BatchNorm in training mode, no pretrained weights. Pixels labelled IGNORE_LABEL (the
padding of down-scaled crops) are left out of the loss.

Parallelism: a 1-D mesh with axis 'data' over all devices (every process's); the batch
is sharded along it, the state replicated; XLA all-reduces the gradients and the
BatchNorm statistics, so the step equals a single-device step on the whole batch. Each
process prepares only its rows of the global batch (`data.Batches`).

A run directory holds:
  epochs/{e}/     orbax checkpoint of {'params', 'batch_stats'} after epoch e (0-based);
                  all kept: evaluation picks among them
  state/{n}/      the full training state after n epochs (Adam moments, step); only the
                  newest is kept; a rerun resumes from it
  history.json    per epoch: mean loss, pixel accuracy, seconds, images/s
  train_batch.png the first training batch (augmented images | labels)
  run.json        what the checkpoints depend on (arch, options but epochs, seed, number
                  of examples, the run it was initialised from); a rerun with other values
                  starts over, with more epochs it continues
  train.json      written last: the run is complete
"""

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from dgan_jax import io
from dgan_jax import parallel
from dgan_jax import training
from dgan_jax.data import images as image_utils
from dgan_jax.downstream import data as data_lib
from dgan_jax.downstream import deeplab
from dgan_jax.errors import InputError
from dgan_jax.generators import checkpoint as checkpoint_lib

DROPOUT_STREAM = 22
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class TrainOptions:
  """What a run needs from config.downstream (see dgan_jax/config.py)."""
  batch_size: int = 8
  epochs: int = 20
  learning_rate: float = 1e-3
  resolution: int = 512
  flip: bool = True
  scale_range: tuple[float, float] = (0.5, 2.0)
  steps_per_epoch: int = 0          # 0: floor(examples / batch_size)
  pretrained_backbone: str = ''
  dtype: str = 'float32'
  log_every: int = 10
  workers: int = 4

  def augment(self) -> data_lib.Augment:
    return data_lib.Augment(self.resolution, self.flip, tuple(self.scale_range))


@dataclasses.dataclass(frozen=True)
class InitFrom:
  """Fine-tuning: the epoch checkpoint of another run that initialises this one: its
  backbone and, with `head`, its classifier (otherwise torchvision's initialization)."""
  run_dir: str
  epoch: int
  head: bool = False

  def arch(self) -> deeplab.DeepLabArch:
    record = io.read_json(os.path.join(self.run_dir, 'train.json'))
    if record is None:
      raise InputError(f'{self.run_dir}: training is not complete (no train.json), so it '
                       'cannot initialise a fine-tuning run')
    return deeplab.DeepLabArch.from_json(record['arch'])

  def record(self) -> dict:
    """What the initial weights depend on (a retrained source restarts the run)."""
    return {'run_dir': os.path.abspath(self.run_dir), 'epoch': self.epoch, 'head': self.head,
            'train_json': io.file_digest(os.path.join(self.run_dir, 'train.json'))}


def initial_variables(arch: deeplab.DeepLabArch, init: InitFrom, params: dict,
                      batch_stats: dict) -> tuple[dict, dict]:
  """(params, batch_stats) with the backbone (and with init.head the classifier) replaced
  by those of init's checkpoint; InputError when the shapes do not fit."""
  source = init.arch()
  parts = ('backbone', 'classifier') if init.head else ('backbone',)
  expected = {k: v for k, v in deeplab.variable_shapes(arch).items() if k.split('/')[1] in parts}
  found = {k: v for k, v in deeplab.variable_shapes(source).items() if k.split('/')[1] in parts}
  if expected != found:
    differ = sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))
    raise InputError(
        f'{init.run_dir} (epoch {init.epoch}) cannot initialise this run\'s '
        f'{" and ".join(parts)}: {len(differ)} variables differ, first {differ[0]} '
        f'{found.get(differ[0])} against {expected.get(differ[0])} (stage_sizes, width, '
        'aspp_channels' + (', classes' if init.head else '') + ' must match)')
  restored = restore_epoch(init.run_dir, init.epoch, source)
  params = {**params, **{p: restored['params'][p] for p in parts}}
  batch_stats = {**batch_stats, **{p: restored['batch_stats'][p] for p in parts}}
  return params, batch_stats


def _optimizer(learning_rate: float) -> optax.GradientTransformation:
  return optax.adam(learning_rate)  # PyTorch's defaults: b1 0.9, b2 0.999, eps 1e-8


def init_state(arch: deeplab.DeepLabArch, options: TrainOptions, seed: int,
               init: InitFrom | None = None) -> dict:
  """{'params', 'batch_stats', 'opt_state', 'step'}: torchvision's initialization
  (`deeplab.init(arch, seed)`), the backbone optionally replaced by converted weights,
  and for fine-tuning by another run's checkpoint (`init`)."""
  params, batch_stats = deeplab.init(arch, seed)
  if options.pretrained_backbone:
    params, batch_stats = deeplab.with_pretrained_backbone(
        params, batch_stats, options.pretrained_backbone, arch)
  if init is not None:
    params, batch_stats = initial_variables(arch, init, params, batch_stats)
  return {'params': params, 'batch_stats': batch_stats,
          'opt_state': _optimizer(options.learning_rate).init(params),
          'step': jnp.zeros((), jnp.int32)}


def loss_and_accuracy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """logits [B, H, W, C], labels [B, H, W] -> (mean cross-entropy, pixel accuracy) over
  the pixels whose label is a class (not IGNORE_LABEL)."""
  valid = labels < logits.shape[-1]
  safe = jnp.where(valid, labels, 0).astype(jnp.int32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
  count = jnp.maximum(valid.sum(), 1)
  loss = jnp.where(valid, ce, 0.0).sum() / count
  accuracy = ((jnp.argmax(logits, -1) == safe) & valid).sum() / count
  return loss, accuracy


def make_train_step(model: deeplab.DeepLabV3, options: TrainOptions, seed: int):
  """-> jitted step(state, images uint8 [B, R, R, 3], labels uint8 [B, R, R]) ->
  (state, {'loss', 'accuracy'}); the state is donated."""
  tx = _optimizer(options.learning_rate)
  dropout_key = jax.random.fold_in(jax.random.key(seed), DROPOUT_STREAM)

  def step(state, images, labels):
    rng = jax.random.fold_in(dropout_key, state['step'])

    def loss_fn(params):
      logits, mutated = model.apply(
          {'params': params, 'batch_stats': state['batch_stats']}, deeplab.normalize(images),
          train=True, mutable=['batch_stats'], rngs={'dropout': rng})
      loss, accuracy = loss_and_accuracy(logits, labels)
      return loss, (mutated['batch_stats'], accuracy)

    (loss, (batch_stats, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    new_state = {'params': optax.apply_updates(state['params'], updates),
                 'batch_stats': batch_stats, 'opt_state': opt_state,
                 'step': state['step'] + 1}
    return new_state, {'loss': loss, 'accuracy': accuracy}

  # The shardings come from the arguments (the state replicated, batches split over
  # 'data'). Stating them as in/out_shardings made the step several times slower on CPU
  # (jax 0.10).
  return jax.jit(step, donate_argnums=(0,), compiler_options=parallel.compiler_options())


def _managers(run_dir: str):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  epochs = ocp.CheckpointManager(os.path.join(run_dir, 'epochs'),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=None))
  state = ocp.CheckpointManager(os.path.join(run_dir, 'state'),
                                options=ocp.CheckpointManagerOptions(max_to_keep=1))
  return ocp, epochs, state


def preview_batch(images: np.ndarray, labels: np.ndarray, palette: np.ndarray,
                  columns: int = 4) -> np.ndarray:
  """images [B, R, R, 3], labels [B, R, R] -> grid of (image | colored label) tiles;
  ignored pixels black."""
  colors = np.concatenate([palette, np.zeros((256 - len(palette), 3), np.uint8)])
  tiles = np.concatenate([images, colors[labels]], axis=2)
  return image_utils.grid(np.stack([image_utils.enlarge(t) for t in tiles]), columns)


def train(arch: deeplab.DeepLabArch, source, options: TrainOptions, seed: int, run_dir: str,
          palette: np.ndarray | None = None, mesh: Mesh | None = None, progress: bool = True,
          stop_after_epochs: int | None = None, description: str = '',
          init: InitFrom | None = None) -> dict:
  """Trains (or resumes) the run in `run_dir` on `source` (len, get(indices) -> pairs),
  from torchvision's initialization or, for fine-tuning, from `init`.

  `stop_after_epochs` ends this call after that many epochs in total, leaving the run
  unfinished (tests of resuming). Returns the train.json record, or None when stopped
  early.
  """
  mesh = mesh or parallel.make_mesh(scope='global')
  num_devices = mesh.size
  if options.batch_size % num_devices:
    raise InputError(f'config.downstream.batch_size {options.batch_size} does not split over '
                     f'{num_devices} devices')
  steps_per_epoch = options.steps_per_epoch or len(source) // options.batch_size
  if steps_per_epoch < 1:
    raise InputError(f'{len(source)} training images do not fill one batch of '
                     f'{options.batch_size}')
  os.makedirs(run_dir, exist_ok=True)
  # What the weights depend on (more epochs extend a run; logging and threads do not count).
  recipe = {k: v for k, v in dataclasses.asdict(options).items()
            if k not in ('epochs', 'log_every', 'workers')}
  run = {'arch': arch.to_json(), 'options': recipe, 'seed': seed,
         'num_examples': len(source), 'steps_per_epoch': steps_per_epoch}
  if init is not None:
    run['init'] = init.record()
  io.start_over_if_changed(
      os.path.join(run_dir, 'run.json'), run,
      [os.path.join(run_dir, name) for name in ('epochs', 'state', 'history.json',
                                                'train_batch.png', 'train.json')],
      f'downstream {description}', write=jax.process_index() == 0)
  batches = data_lib.Batches(source, options.batch_size, seed, options.augment(),
                             jax.process_index(), jax.process_count(), options.workers)
  model = deeplab.DeepLabV3(arch, DTYPES[options.dtype])
  replicated = NamedSharding(mesh, P())
  by_batch = NamedSharding(mesh, P('data'))
  state = jax.device_put(init_state(arch, options, seed, init), replicated)
  ocp, epoch_manager, state_manager = _managers(run_dir)
  epochs_done = state_manager.latest_step() or 0
  history = []
  if epochs_done:
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state)
    state = state_manager.restore(epochs_done, args=ocp.args.StandardRestore(abstract))
    history_path = os.path.join(run_dir, 'history.json')
    if os.path.exists(history_path):
      with open(history_path) as f:
        history = json.load(f)[:epochs_done]
    logging.info('downstream %s: resumed after epoch %d', description, epochs_done - 1)
  if palette is not None and jax.process_index() == 0 and not os.path.exists(
      os.path.join(run_dir, 'train_batch.png')):
    images, labels = batches.get(0)
    image_utils.save_png(os.path.join(run_dir, 'train_batch.png'),
                         preview_batch(images, labels, palette))

  train_step = make_train_step(model, options, seed)
  last_epoch = options.epochs if stop_after_epochs is None else min(options.epochs,
                                                                    stop_after_epochs)
  bar = tqdm(total=options.epochs * steps_per_epoch, initial=epochs_done * steps_per_epoch,
             desc=f'deeplab {description}'.strip(), unit='step', disable=not progress,
             dynamic_ncols=True)
  for epoch in range(epochs_done, last_epoch):
    epoch_start = window_start = time.perf_counter()
    sums = jnp.zeros((2,), jnp.float32)
    window = 0
    first = epoch * steps_per_epoch
    for step, (images, labels) in enumerate(batches.iterate(first, first + steps_per_epoch),
                                            start=first):
      images = jax.make_array_from_process_local_data(by_batch, images)
      labels = jax.make_array_from_process_local_data(by_batch, labels)
      state, metrics = train_step(state, images, labels)
      sums = sums + jnp.stack([metrics['loss'], metrics['accuracy']])
      window += 1
      if window == options.log_every or step + 1 == first + steps_per_epoch:
        loss, accuracy = (float(v) for v in jax.device_get(
            jnp.stack([metrics['loss'], metrics['accuracy']])))
        now = time.perf_counter()
        bar.set_postfix(epoch=epoch, loss=f'{loss:.4f}', acc=f'{100 * accuracy:.1f}%',
                        img_s=f'{window * options.batch_size / (now - window_start):.2f}')
        bar.update(window)
        window, window_start = 0, now
    seconds = time.perf_counter() - epoch_start
    mean_loss, mean_accuracy = (float(v) for v in jax.device_get(sums) / steps_per_epoch)
    if epoch in epoch_manager.all_steps():  # written before an interruption: replace it
      epoch_manager.delete(epoch)
    epoch_manager.save(epoch, args=ocp.args.StandardSave(
        {'params': state['params'], 'batch_stats': state['batch_stats']}))
    epoch_manager.wait_until_finished()
    state_manager.save(epoch + 1, args=ocp.args.StandardSave(state))
    state_manager.wait_until_finished()
    history.append({'epoch': epoch, 'loss': mean_loss, 'pixel_accuracy': mean_accuracy,
                    'seconds': round(seconds, 3),
                    'images_per_second': round(steps_per_epoch * options.batch_size / seconds,
                                               3)})
    if jax.process_index() == 0:
      io.write_json(os.path.join(run_dir, 'history.json'), history)
    logging.info('downstream %s: epoch %d loss %.4f accuracy %.4f (%.1f s)', description,
                 epoch, mean_loss, mean_accuracy, seconds)
  bar.close()
  epoch_manager.close()
  state_manager.close()
  if last_epoch < options.epochs:
    return None
  record = {'description': description, 'num_examples': len(source),
            'steps_per_epoch': steps_per_epoch, 'epochs': options.epochs,
            'batch_size': options.batch_size, 'num_devices': num_devices,
            'num_processes': jax.process_count(), 'arch': arch.to_json(),
            'num_params': deeplab.count_params(state['params']),
            'options': dataclasses.asdict(options), 'seed': seed, 'history': history}
  if init is not None:
    record['init'] = run['init']
  if jax.process_index() == 0:
    io.write_json(os.path.join(run_dir, 'train.json'), record)
  return record


def is_complete(run_dir: str) -> bool:
  return os.path.isfile(os.path.join(run_dir, 'train.json'))


def epoch_checkpoints(run_dir: str) -> list[int]:
  """Epochs (0-based) whose checkpoint is in run_dir/epochs, ascending."""
  directory = os.path.join(run_dir, 'epochs')
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def restore_epoch(run_dir: str, epoch: int, arch: deeplab.DeepLabArch) -> dict:
  """-> {'params', 'batch_stats'} saved after `epoch`, on the default device."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = checkpoint_lib.unflatten({
      name: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=device)
      for name, shape in deeplab.variable_shapes(arch).items()})
  with training.quiet_orbax_logging(), ocp.CheckpointManager(
      os.path.join(run_dir, 'epochs'),
      options=ocp.CheckpointManagerOptions(create=False)) as manager:
    return manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
