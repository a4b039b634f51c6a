"""DatasetGAN's style interpreter: an ensemble of per-pixel MLP classifiers.

Each member is the original's pixel classifier, for C classes and D feature values:

  Linear(D, H1) - ReLU - BatchNorm1d(H1) - Linear(H1, H2) - ReLU - BatchNorm1d(H2)
  - Linear(H2, C),    (H1, H2) = (128, 32) when C < 32, else (256, 128)

BatchNorm follows PyTorch: in training, batch mean and biased variance (eps 1e-5), running
statistics updated with momentum 0.1 and the unbiased variance; in evaluation, the
running statistics. Weights start N(0, 0.02), biases 0, BatchNorm scale 1 and bias 0.

All M members are stored stacked on a leading member axis:

  params['linear0'] = {'weight': [M, D, H1], 'bias': [M, H1]}
  params['norm0']   = {'scale': [M, H1], 'bias': [M, H1]}
  params['linear1'] = {'weight': [M, H1, H2], 'bias': [M, H2]}
  params['norm1']   = {'scale': [M, H2], 'bias': [M, H2]}
  params['linear2'] = {'weight': [M, H2, C], 'bias': [M, C]}
  batch_stats['norm0'] = {'mean': [M, H1], 'var': [M, H1]}   (likewise 'norm1', H2)

Weights are [in, out] (x @ weight). The rows of `linear0/weight` follow the concatenation
order of the generator's feature maps: rows offset_l .. offset_l + C_l - 1 multiply map
l's channels (`features.FeatureLayout.channel_offsets`). Because bilinear resizing is
linear, member m's first layer can be applied to each map at its native resolution
(`weight[m, offset_l:offset_l + C_l]`), the [h_l, w_l, H1] results resized and summed,
plus the bias; `head` takes it from there.

Training (`train`) runs every member at once: one `jax.jit`-compiled step, `jax.vmap`-ed
over members, each member with its own initial weights and its own shuffled stream of
pixels (a fresh permutation of all annotated pixels per epoch). Pixels' feature vectors
are read from the native maps on the fly (`features.pixel_features`). The step is
data-parallel over the local devices through a `jax.sharding.Mesh` with axis 'data':
either the pixel batch is split across devices (parameters replicated, gradients and
BatchNorm statistics reduced by XLA) or the member axis is.
"""

import dataclasses
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from dgan_jax import features as features_lib
from dgan_jax import training
from dgan_jax import uncertainty
from dgan_jax.errors import InputError
from dgan_jax.generators import checkpoint as checkpoint_lib

Params = dict[str, Any]

BATCHNORM_EPS = 1e-5
BATCHNORM_MOMENTUM = 0.1
INIT_STD = 0.02
FORMAT = 'dgan_jax.interpreter'
FORMAT_VERSION = 1
PIXEL_STREAM = 2  # seeds the pixel permutations (latents.py streams are 0 and 1)
INIT_STREAM = 3


@dataclasses.dataclass(frozen=True)
class InterpreterArch:
  """The ensemble's shape: D inputs, C classes, M members."""
  feature_dim: int
  num_classes: int
  num_members: int = 10

  @property
  def hidden(self) -> tuple[int, int]:
    return (128, 32) if self.num_classes < 32 else (256, 128)

  def param_shapes(self) -> dict[str, tuple[int, ...]]:
    """Flat '/'-joined names of params and batch_stats -> stacked shapes."""
    m, (h1, h2) = self.num_members, self.hidden
    shapes = {}
    for i, (fan_in, fan_out) in enumerate(((self.feature_dim, h1), (h1, h2),
                                           (h2, self.num_classes))):
      shapes[f'params/linear{i}/weight'] = (m, fan_in, fan_out)
      shapes[f'params/linear{i}/bias'] = (m, fan_out)
    for i, width in enumerate((h1, h2)):
      shapes[f'params/norm{i}/scale'] = (m, width)
      shapes[f'params/norm{i}/bias'] = (m, width)
      shapes[f'batch_stats/norm{i}/mean'] = (m, width)
      shapes[f'batch_stats/norm{i}/var'] = (m, width)
    return shapes

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def init(arch: InterpreterArch, key: jax.Array) -> tuple[Params, Params]:
  """-> (params, batch_stats), stacked; member m draws from fold_in(key, m)."""
  h1, h2 = arch.hidden

  def one(member_key):
    keys = jax.random.split(member_key, 3)
    params = {}
    for i, (fan_in, fan_out) in enumerate(((arch.feature_dim, h1), (h1, h2),
                                           (h2, arch.num_classes))):
      params[f'linear{i}'] = {
          'weight': INIT_STD * jax.random.normal(keys[i], (fan_in, fan_out), jnp.float32),
          'bias': jnp.zeros((fan_out,), jnp.float32)}
    stats = {}
    for i, width in enumerate((h1, h2)):
      params[f'norm{i}'] = {'scale': jnp.ones((width,)), 'bias': jnp.zeros((width,))}
      stats[f'norm{i}'] = {'mean': jnp.zeros((width,)), 'var': jnp.ones((width,))}
    return params, stats

  member_keys = jax.vmap(lambda m: jax.random.fold_in(key, m))(jnp.arange(arch.num_members))
  return jax.jit(jax.vmap(one))(member_keys)


def _batch_norm(p, stats, x, train: bool):
  """x [B, F]; p, stats: one member's. -> (y, new stats or None)."""
  if train:
    mean = jnp.mean(x, axis=0)
    var = jnp.mean(jnp.square(x - mean), axis=0)
    n = x.shape[0]
    new_stats = {
        'mean': (1 - BATCHNORM_MOMENTUM) * stats['mean'] + BATCHNORM_MOMENTUM * mean,
        'var': (1 - BATCHNORM_MOMENTUM) * stats['var']
               + BATCHNORM_MOMENTUM * var * (n / max(n - 1, 1))}
  else:
    mean, var, new_stats = stats['mean'], stats['var'], None
  y = (x - mean) * jax.lax.rsqrt(var + BATCHNORM_EPS) * p['scale'] + p['bias']
  return y, new_stats


def _member_head(params, stats, pre_activation, train: bool):
  """One member after its first linear layer: [B, H1] -> ([B, C], new stats)."""
  x, new0 = _batch_norm(params['norm0'], stats['norm0'], jax.nn.relu(pre_activation), train)
  x = x @ params['linear1']['weight'] + params['linear1']['bias']
  x, new1 = _batch_norm(params['norm1'], stats['norm1'], jax.nn.relu(x), train)
  logits = x @ params['linear2']['weight'] + params['linear2']['bias']
  return logits, {'norm0': new0, 'norm1': new1}


def _member_apply(params, stats, x, train: bool):
  """One member: x [B, D] -> (logits [B, C], new stats)."""
  pre = x @ params['linear0']['weight'] + params['linear0']['bias']
  return _member_head(params, stats, pre, train)


@jax.jit
def logits(params: Params, batch_stats: Params, features: jax.Array) -> jax.Array:
  """Evaluation mode. features [P, D] (shared by all members) or [M, P, D] -> [M, P, C]."""
  in_axes = 0 if features.ndim == 3 else None
  return jax.vmap(lambda p, s, x: _member_apply(p, s, x, False)[0],
                  in_axes=(0, 0, in_axes))(params, batch_stats, features)


@jax.jit
def head(params: Params, batch_stats: Params, first_layer: jax.Array) -> jax.Array:
  """Evaluation mode from the first layer's output (bias included, before the ReLU):
  first_layer [M, P, H1] -> logits [M, P, C]. For callers that fold linear0 into the
  native feature maps."""
  return jax.vmap(lambda p, s, h: _member_head(p, s, h, False)[0])(
      params, batch_stats, first_layer)


def majority_vote(member_logits: jax.Array) -> jax.Array:
  """[M, P, C] -> [P] int32: the class most members pick (ties: the smallest id, as
  scipy.stats.mode in the original)."""
  return uncertainty.majority_vote(jnp.argmax(member_logits, axis=-1),
                                   member_logits.shape[-1]).astype(jnp.int32)


@jax.jit
def predict(params: Params, batch_stats: Params, features: jax.Array) -> jax.Array:
  """features [P, D] -> labels [P] int32, the members' majority vote."""
  return majority_vote(logits(params, batch_stats, features))


# ----------------------------------------------------------------------------------------
# Saving and loading a trained ensemble: `interpreter.json` + `params.npz` (flat names of
# `InterpreterArch.param_shapes`), read with allow_pickle=False.


def save(directory: str, arch: InterpreterArch, params: Params, batch_stats: Params,
         info: dict | None = None) -> None:
  """Writes `interpreter.json` and `params.npz` into `directory` (created if needed),
  each under a temporary name first; `interpreter.json` last, so a directory that has
  it holds a complete ensemble."""
  flat = checkpoint_lib.flatten({'params': jax.device_get(params),
                                 'batch_stats': jax.device_get(batch_stats)})
  checkpoint_lib.check_names_and_shapes(flat, arch.param_shapes(), directory)
  checkpoint_lib.write_arrays_and_meta(
      directory, 'interpreter.json', flat,
      {'format': FORMAT, 'format_version': FORMAT_VERSION, 'arch': arch.to_json(),
       **(info or {})})


def load(directory: str) -> tuple[InterpreterArch, Params, Params, dict]:
  """-> (arch, params, batch_stats, interpreter.json contents)."""
  meta, arrays = checkpoint_lib.read_arrays_and_meta(
      directory, 'interpreter.json', f'{directory} is not a saved interpreter')
  meta_path = os.path.join(directory, 'interpreter.json')
  params_path = os.path.join(directory, 'params.npz')
  try:
    arch = InterpreterArch(**meta['arch'])
  except (KeyError, TypeError) as e:
    raise checkpoint_lib.CheckpointError(f'{meta_path}: not a {FORMAT} file ({e})') from None
  checkpoint_lib.check_names_and_shapes(arrays, arch.param_shapes(), params_path)
  tree = jax.tree.map(jnp.asarray, checkpoint_lib.unflatten(arrays))
  return arch, tree['params'], tree['batch_stats'], meta


# ----------------------------------------------------------------------------------------
# Training.


@dataclasses.dataclass(frozen=True)
class TrainOptions:
  """What `train` needs from config.interpreter (see dgan_jax/config.py)."""
  batch_size: int = 64
  learning_rate: float = 1e-3
  num_steps: int = 0           # 0: the original's stopping rule below
  patience: int = 50
  patience_after_epoch: int = 3
  max_epochs: int = 100
  checkpoint_every: int = 5000
  parallel: str = 'auto'       # 'auto', 'batch' or 'members'
  log_every: int = 100

  @classmethod
  def from_config(cls, interpreter_config) -> 'TrainOptions':
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: interpreter_config[k] for k in fields if k in interpreter_config})


@dataclasses.dataclass
class TrainData:
  """Annotated pixels, kept on the devices for the whole training.

  stores: per map [N, kept_l, w_l, C_l] (features.keep_rows of the native maps).
  labels: [N, H', W] integer class ids on the layout's output grid.
  """
  stores: list[jax.Array]
  labels: jax.Array
  layout: features_lib.FeatureLayout

  @property
  def num_pixels(self) -> int:
    return int(np.prod(self.labels.shape))


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis 'data' over the local devices."""
  return Mesh(np.asarray(devices if devices is not None else jax.local_devices()), ('data',))


def choose_parallel(parallel: str, num_members: int, batch_size: int, num_devices: int) -> str:
  """'members' shards the ensemble axis (no communication), 'batch' each member's
  pixel batch (gradients all-reduced). 'auto': members when they divide evenly."""
  if parallel == 'auto':
    if num_devices == 1 or num_members % num_devices == 0:
      return 'members'
    parallel = 'batch'
  if parallel not in ('members', 'batch'):
    raise InputError(f"config.interpreter.parallel must be 'auto', 'batch' or 'members', "
                     f'got {parallel!r}')
  if parallel == 'members' and num_members % num_devices:
    raise InputError(f'config.interpreter.parallel: {num_members} members do not split over '
                     f'{num_devices} devices (use parallel="batch")')
  if parallel == 'batch' and batch_size % num_devices:
    raise InputError(f'config.interpreter.parallel: batch size {batch_size} does not split '
                     f'over {num_devices} devices')
  return parallel


def _optimizer(learning_rate: float) -> optax.GradientTransformation:
  return optax.adam(learning_rate)  # PyTorch's defaults: b1 0.9, b2 0.999, eps 1e-8


def init_state(arch: InterpreterArch, options: TrainOptions, seed: int) -> dict:
  """The training state pytree: params, batch_stats, opt_state, step and the stopping
  rule's per-member best_loss, since_best, active."""
  params, batch_stats = init(arch, jax.random.fold_in(jax.random.key(seed), INIT_STREAM))
  m = arch.num_members
  return {'params': params, 'batch_stats': batch_stats,
          'opt_state': _optimizer(options.learning_rate).init(params),
          'step': jnp.zeros((), jnp.int32),
          'best_loss': jnp.full((m,), jnp.inf, jnp.float32),
          'since_best': jnp.zeros((m,), jnp.int32),
          'active': jnp.ones((m,), bool)}


def _state_shardings(state, mesh: Mesh, parallel: str):
  """Member-axis leaves sharded for 'members'; everything replicated for 'batch'."""
  replicated = NamedSharding(mesh, P())
  if parallel == 'batch':
    return jax.tree.map(lambda _: replicated, state)
  by_member = NamedSharding(mesh, P('data'))
  return jax.tree.map(lambda x: by_member if x.ndim >= 1 else replicated, state)


def _batch_spec(parallel: str) -> P:
  """Sharding of [M, B, ...] batch arrays."""
  return P(None, 'data') if parallel == 'batch' else P('data')


def pixel_permutations(seed: int, epoch: int, num_members: int, num_pixels: int,
                       batch_size: int) -> np.ndarray:
  """Member m's pixel order in `epoch`: a permutation of all annotated pixels drawn by
  numpy.random.default_rng([seed, PIXEL_STREAM, m, epoch]), cut into whole batches (each
  epoch leaves num_pixels % batch_size pixels out, different ones every epoch).

  Returns [steps_per_epoch, M, B] int32 flat pixel ids (image, row, column of the
  [N, H', W] label grid).
  """
  steps = num_pixels // batch_size
  out = np.empty((steps, num_members, batch_size), np.int32)
  for member in range(num_members):
    order = np.random.default_rng([seed, PIXEL_STREAM, member, epoch]).permutation(num_pixels)
    out[:, member] = order[:steps * batch_size].reshape(steps, batch_size)
  return out


def _make_train_step(arch: InterpreterArch, options: TrainOptions,
                     layout: features_lib.FeatureLayout, mesh: Mesh, parallel: str,
                     steps_per_epoch: int, freeze_stopped: bool) -> Callable:
  """The compiled ensemble step (state, stores, labels, permutation) -> (state, metrics).

  freeze_stopped: keep the parameters and BatchNorm statistics of members the stopping
  rule has stopped (their optimizer moments may drift: they are never used again). The
  variant without it saves a pass over the weights while every member trains.
  """
  tables = features_lib.device_tables(layout)
  out_h, out_w = layout.output_shape
  tx = _optimizer(options.learning_rate)
  batch_sharding = NamedSharding(mesh, _batch_spec(parallel))

  def member_loss(params, stats, x, y):
    member_logits, new_stats = _member_apply(params, stats, x, True)
    loss = optax.softmax_cross_entropy_with_integer_labels(member_logits, y).mean()
    accuracy = jnp.mean(jnp.argmax(member_logits, -1) == y)
    return loss, (new_stats, accuracy)

  def ensemble_loss(params, stats, x, y):
    losses, (new_stats, accuracy) = jax.vmap(member_loss)(params, stats, x, y)
    return losses.sum(), (losses, new_stats, accuracy)  # members' gradients stay apart

  def step_fn(state, stores, labels, permutation):
    step = state['step']
    pixels = jax.lax.dynamic_index_in_dim(permutation, step % steps_per_epoch, 0,
                                          keepdims=False)               # [M, B]
    pixels = jax.lax.with_sharding_constraint(pixels, batch_sharding)
    image, rest = pixels // (out_h * out_w), pixels % (out_h * out_w)
    y, x = rest // out_w, rest % out_w
    x_batch = features_lib.pixel_features(stores, tables, image, y, x)  # [M, B, D]
    x_batch = jax.lax.with_sharding_constraint(x_batch, batch_sharding)
    y_batch = labels[image, y, x].astype(jnp.int32)
    grads, (losses, new_stats, accuracy) = jax.grad(ensemble_loss, has_aux=True)(
        state['params'], state['batch_stats'], x_batch, y_batch)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)

    active = state['active']
    if freeze_stopped:
      def keep(new_leaf, old_leaf):
        return jnp.where(active.reshape((-1,) + (1,) * (new_leaf.ndim - 1)), new_leaf,
                         old_leaf)
      params = jax.tree.map(keep, params, state['params'])
      new_stats = jax.tree.map(keep, new_stats, state['batch_stats'])

    # The original's rule, per member: from epoch patience_after_epoch + 1 on, count the
    # steps whose loss is not below the best so far; stop once the count exceeds patience.
    watching = (step // steps_per_epoch > options.patience_after_epoch) & active
    improved = losses < state['best_loss']
    best_loss = jnp.where(watching & improved, losses, state['best_loss'])
    since_best = jnp.where(watching, jnp.where(improved, 0, state['since_best'] + 1),
                           state['since_best'])
    still_active = active if options.num_steps else active & (since_best <= options.patience)
    new = {'params': params, 'batch_stats': new_stats, 'opt_state': opt_state,
           'step': step + 1, 'best_loss': best_loss, 'since_best': since_best,
           'active': still_active}
    return new, {'loss': losses, 'accuracy': accuracy, 'active': active}

  return jax.jit(step_fn, donate_argnums=(0,),
                 compiler_options=_compiler_options(mesh.devices.flat[0].platform))


def _compiler_options(platform: str) -> dict | None:
  """On CPU, XLA's YNNPACK fusions run the batched [M, B, D] x [M, D, H] first-layer
  product 2-3x slower than its own dot emitter (measured on a 2-core Xeon); off."""
  if platform == 'cpu':
    return {'xla_cpu_experimental_ynn_fusion_type': ''}
  return None


def _keep_freed_memory() -> None:
  """Asks glibc to keep freed large blocks instead of unmapping them: XLA allocates its
  temporaries afresh every step, and re-faulting tens of MB of pages each time costs
  about a fifth of a step on CPU. No effect elsewhere."""
  try:
    import ctypes  # pylint: disable=import-outside-toplevel
    libc = ctypes.CDLL('libc.so.6')
    libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD: blocks up to 256 MB from the heap
    libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD: keep up to 512 MB of it free
  except (OSError, AttributeError):
    pass


def train(data: TrainData, arch: InterpreterArch, options: TrainOptions, seed: int,
          checkpoint_dir: str | None = None, mesh: Mesh | None = None,
          progress: bool = True, stop_after: int | None = None) -> dict:
  """Trains the ensemble; resumes from the newest checkpoint in `checkpoint_dir`.

  Runs options.num_steps steps when that is set; otherwise until every member has met
  the original's stopping rule, or options.max_epochs epochs. `stop_after` ends the run
  after that many steps in total, as an interruption would (tests, benchmarks).
  Returns the final training state (see `init_state`, on the host) plus 'history': the
  step, per-member loss, accuracy and whether the member trained, of every log_every-th
  step of this run (and of the last), and
  'pixels_per_second': member-pixels trained per second over this run's steps after the
  first (compilation) one.
  """
  with training.quiet_orbax_logging():
    return _train(data, arch, options, seed, checkpoint_dir, mesh, progress, stop_after)


def _train(data, arch, options, seed, checkpoint_dir, mesh, progress, stop_after):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  _keep_freed_memory()
  mesh = mesh or make_mesh()
  parallel = choose_parallel(options.parallel, arch.num_members, options.batch_size,
                             mesh.size)
  num_pixels = data.num_pixels
  steps_per_epoch = num_pixels // options.batch_size
  if steps_per_epoch == 0:
    raise InputError(f'{num_pixels} annotated pixels do not fill one batch of '
                     f'{options.batch_size}')
  total_steps = options.num_steps or options.max_epochs * steps_per_epoch
  if stop_after is not None:
    total_steps = min(total_steps, stop_after)

  replicated = NamedSharding(mesh, P())
  stores = [jax.device_put(s, replicated) for s in data.stores]
  labels = jax.device_put(data.labels, replicated)
  state = init_state(arch, options, seed)
  state_shardings = _state_shardings(state, mesh, parallel)
  state = jax.device_put(state, state_shardings)

  manager, state = training.open_checkpoints(checkpoint_dir, options.checkpoint_every, state,
                                             state_shardings, 'interpreter')

  permutation_sharding = NamedSharding(mesh, P(None, *_batch_spec(parallel)))
  steps = {freeze: _make_train_step(arch, options, data.layout, mesh, parallel,
                                    steps_per_epoch, freeze) for freeze in (False, True)}
  use_rule = not options.num_steps

  step = int(state['step'])
  first_step = step
  history = {'step': [], 'loss': [], 'accuracy': [], 'active': []}
  permutation, permutation_epoch = None, None
  active = np.asarray(jax.device_get(state['active']))
  bar = tqdm(total=total_steps, initial=step, desc='interpreter', unit='step',
             disable=not progress, dynamic_ncols=True)
  window_start, window_pixels = time.perf_counter(), 0
  run_start, run_pixels = None, 0
  while step < total_steps and active.any():
    epoch = step // steps_per_epoch
    if epoch != permutation_epoch:
      permutation = jax.device_put(
          pixel_permutations(seed, epoch, arch.num_members, num_pixels, options.batch_size),
          permutation_sharding)
      permutation_epoch = epoch
    state, metrics = steps[not active.all()](state, stores, labels, permutation)
    step += 1
    pixels = int(active.sum()) * options.batch_size
    window_pixels += pixels
    if step == first_step + 1:
      jax.block_until_ready(metrics)
      run_start = time.perf_counter()
    else:
      run_pixels += pixels
    if use_rule:  # the next step's variant depends on who is still training
      active = np.asarray(jax.device_get(state['active']))
    if manager is not None:
      manager.save(step, args=ocp.args.StandardSave(state))
    if step % options.log_every == 0 or step == total_steps or not active.any():
      metrics = jax.device_get(metrics)
      if not use_rule:
        active = np.asarray(metrics['active'])
      trained = metrics['active']
      now = time.perf_counter()
      history['step'].append(step)
      history['loss'].append(metrics['loss'])
      history['accuracy'].append(metrics['accuracy'])
      history['active'].append(trained)
      bar.set_postfix(loss=f'{metrics["loss"][trained].mean():.4f}',
                      acc=f'{100 * metrics["accuracy"][trained].mean():.1f}%',
                      members=int(active.sum()),
                      px_s=f'{window_pixels / (now - window_start):,.0f}')
      bar.update(step - bar.n)
      window_start, window_pixels = now, 0
  state, rate = training.finish_run(state, step, bar, manager, history, run_start, run_pixels)
  state['pixels_per_second'] = rate
  return state
