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
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dgan_jax import features as features_lib
from dgan_jax import io
from dgan_jax import labelers
from dgan_jax import parallel as parallel_lib
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
# Labelling whole images. The D-long per-pixel feature vector (5056 values for the car
# model, 4 GB per 384x512 image in float32) is never built. Member m's first layer is
# linear and so is bilinear resizing, so for every map l
#
#     resize(F_l) @ W1[m, rows of l] == resize(F_l @ W1[m, rows of l])
#
# and each map is projected at its native resolution, the [M, h_l, w_l, H1] projections
# resized and summed. Output rows are processed in chunks of `chunk_rows`: a chunk reads
# only the native rows its bilinear taps touch, so memory is bounded by the chunk.


@dataclasses.dataclass(frozen=True)
class GroupPlan:
  """How a chunk of output rows reads the maps of one native size (h, w).

  Maps of a block share their size, so their projections are summed before resizing.
  """
  maps: tuple[int, ...]        # indices of the feature maps in this group
  width: int                   # native w
  starts: np.ndarray           # int32 [num_chunks]: first kept native row a chunk reads
  span: int                    # native rows a chunk reads
  rows: np.ndarray | None      # float32 [num_chunks, chunk_rows, span]: vertical bilinear
                               # weights; None when rows map one to one (no resizing)


def plan_chunks(layout: features_lib.FeatureLayout, chunk_rows: int) -> list[GroupPlan]:
  """Per group of equally sized maps, the native rows each chunk of output rows needs
  and the bilinear weights that produce the chunk from them."""
  height = layout.output_shape[0]
  num_chunks = -(-height // chunk_rows)
  padded = num_chunks * chunk_rows
  groups: dict[tuple[int, int], list[int]] = {}
  for i, shape in enumerate(layout.map_shapes):
    groups.setdefault(shape, []).append(i)
  tables = layout.tables()
  plans = []
  for (_, width), maps in groups.items():
    rows = tables[maps[0]][0]
    kept = layout.kept_shapes[maps[0]][0]
    # Rows past the last output row repeat its taps; their results are discarded.
    pad = lambda a: np.concatenate([a, np.repeat(a[-1:], padded - height)])
    r0, r1, rw = (pad(a).reshape(num_chunks, chunk_rows)
                  for a in (rows.index0, rows.index1, rows.weight1))
    span = min(int((r1.max(axis=1) - r0.min(axis=1)).max()) + 1, kept)
    starts = np.clip(np.minimum(r0.min(axis=1), kept - span), 0, None).astype(np.int32)
    one_to_one = (not rw.any() and span == chunk_rows
                  and (r0 - starts[:, None] == np.arange(chunk_rows)).all())
    matrix = None
    if not one_to_one:
      matrix = np.zeros((num_chunks, chunk_rows, span), np.float32)
      c, r = np.meshgrid(np.arange(num_chunks), np.arange(chunk_rows), indexing='ij')
      np.add.at(matrix, (c, r, r0 - starts[:, None]), 1 - rw)
      np.add.at(matrix, (c, r, r1 - starts[:, None]), rw)
    plans.append(GroupPlan(tuple(maps), width, starts, span, matrix))
  return plans


def _project(maps: jax.Array, weight: jax.Array) -> jax.Array:
  """maps [h, w, C] x one member's weight rows [C, H1] -> [h, w, H1] float32."""
  return jnp.einsum('hwc,ck->hwk', maps, weight, preferred_element_type=jnp.float32)


def label_image(feature_maps, params, batch_stats, layout: features_lib.FeatureLayout,
                plans: list[GroupPlan], top_fraction: float):
  """One image. feature_maps: list of [kept_l, w_l, C_l] (`features.keep_rows`).

  Returns (label [H', W] int32, pixel_uncertainty [H', W] float32, score float32).
  """
  w1 = params['linear0']['weight']                       # [M, D, H1]
  num_members, _, hidden = w1.shape
  offsets = layout.channel_offsets
  height, width = layout.output_shape
  num_chunks = len(plans[0].starts)
  chunk_rows = -(-height // num_chunks)
  group_weights = [
      jnp.concatenate([w1[:, offsets[i]:offsets[i] + layout.channels[i]] for i in plan.maps],
                      axis=1).astype(feature_maps[0].dtype)
      for plan in plans]                                  # per group [M, C_group, H1]

  def per_member(x):
    return jnp.broadcast_to(x, (num_members,) + x.shape)

  # Per group, its maps' channels side by side, edge-padded when upsampled (see
  # features.resize_columns): [kept, w (+ 2), C_group], built once per image. Groups whose
  # projection of all kept rows, [M, kept, w (+ 2), H1], is no larger than a chunk's
  # first-layer output are projected once per image (chunks would project overlapping
  # rows again) and only sliced per chunk.
  padded = [plan.width < width and width % plan.width == 0 for plan in plans]
  chunk_values = num_members * chunk_rows * width * hidden
  group_inputs = []
  for plan, pad, weight in zip(plans, padded, group_weights):
    maps = jnp.concatenate([feature_maps[i] for i in plan.maps], axis=-1)
    if pad:
      maps = jnp.pad(maps, ((0, 0), (1, 1), (0, 0)), mode='edge')
    projected = num_members * maps.shape[0] * maps.shape[1] * hidden <= chunk_values
    if projected:   # a member at a time, so the result is member-major without a transpose
      maps = jax.lax.map(functools.partial(_project, maps), weight)
    group_inputs.append((maps, projected))

  def one_chunk(chunk):
    first = params['linear0']['bias'][:, None, None]      # [M, 1, 1, H1]
    for plan, weight, (maps, projected), edge_padded in zip(plans, group_weights,
                                                            group_inputs, padded):
      start = jnp.asarray(plan.starts)[chunk]
      if projected:
        projection = jax.lax.dynamic_slice_in_dim(maps, start, plan.span, axis=1)
      else:
        rows = jax.lax.dynamic_slice_in_dim(maps, start, plan.span, axis=0)
        # Member-major from here on, as the head reads it: [M, s, w, H1]. The rows are
        # copied per member, which costs less than transposing a pixel-major projection.
        projection = jnp.einsum('mswc,mck->mswk', per_member(rows), weight,
                                preferred_element_type=jnp.float32)
      if plan.rows is not None:
        projection = jnp.einsum('mrs,mswk->mrwk', per_member(jnp.asarray(plan.rows)[chunk]),
                                projection)
      resized = features_lib.resize_columns(
          projection.reshape((-1,) + projection.shape[2:]), width, edge_padded)
      first = first + resized.reshape(num_members, chunk_rows, width, hidden)
    first = first.reshape(num_members, chunk_rows * width, hidden)
    member_logits = head(params, batch_stats, first)      # [M, P, C]
    member_labels = jnp.argmax(member_logits, axis=-1)
    label = uncertainty.majority_vote(member_labels, member_logits.shape[-1])
    pixel_js = uncertainty.js_divergence(jax.nn.softmax(member_logits, axis=-1))
    return label.reshape(chunk_rows, width), pixel_js.reshape(chunk_rows, width)

  labels, pixel_js = jax.lax.map(one_chunk, jnp.arange(num_chunks))
  label = labels.reshape(-1, width)[:height]
  pixel_js = pixel_js.reshape(-1, width)[:height]
  score = uncertainty.image_scores(pixel_js[None], top_fraction)[0]
  return label.astype(jnp.int32), pixel_js, score


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
  shared_pixels: bool = False  # every member on member 0's pixel batch (gathered once)
  steps_per_call: int = 10     # steps one compiled call runs (a loop on the device)

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
                     steps_per_epoch: int, freeze_stopped: bool,
                     store_dtypes: tuple | None = None) -> Callable:
  """The compiled ensemble steps (state, stores, labels, permutation, count=1) ->
  (state, metrics of the last step): `count` steps in one call, a loop on the device. On
  CPU a call costs more than its step's work: each call allocates XLA's temporaries
  afresh (40 MB for the car's ensemble, 9.9k page faults), and ten steps per call ran
  1.30-1.47x faster than one (2026-12-07).

  freeze_stopped: keep the parameters and BatchNorm statistics of members the stopping
  rule has stopped (their optimizer moments may drift: they are never used again). The
  variant without it saves a pass over the weights while every member trains.

  store_dtypes: the maps' float dtypes when the stores are their bits
  (`features.as_bits`).
  """
  tables = features_lib.device_tables(layout)
  out_h, out_w = layout.output_shape
  tx = _optimizer(options.learning_rate)
  batch_sharding = NamedSharding(mesh, _batch_spec(parallel))
  decode = {'store_dtypes': store_dtypes} if store_dtypes else {}

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
    if options.shared_pixels:
      pixels = pixels[:1]                                                # [1, B]
    else:
      pixels = jax.lax.with_sharding_constraint(pixels, batch_sharding)
    image, rest = pixels // (out_h * out_w), pixels % (out_h * out_w)
    y, x = rest // out_w, rest % out_w
    x_batch = features_lib.pixel_features(stores, tables, image, y, x,
                                          **decode)               # [M or 1, B, D]
    y_batch = labels[image, y, x].astype(jnp.int32)
    if options.shared_pixels:
      x_batch = jnp.broadcast_to(x_batch, (arch.num_members,) + x_batch.shape[1:])
      y_batch = jnp.broadcast_to(y_batch, (arch.num_members,) + y_batch.shape[1:])
    x_batch = jax.lax.with_sharding_constraint(x_batch, batch_sharding)
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

  def steps_fn(state, stores, labels, permutation, count=1):
    metrics_shape = jax.eval_shape(step_fn, state, stores, labels, permutation)[1]
    no_metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape)
    return jax.lax.fori_loop(
        0, count, lambda _, carry: step_fn(carry[0], stores, labels, permutation),
        (state, no_metrics))

  return jax.jit(steps_fn, donate_argnums=(0,),
                 compiler_options=parallel_lib.compiler_options(mesh.devices.flat[0].platform))


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
  _keep_freed_memory()
  mesh = mesh or parallel_lib.make_mesh()
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
  store_dtypes = tuple(s.dtype for s in stores)
  stores = [features_lib.as_bits(s) for s in stores]
  if all(s.dtype == d for s, d in zip(stores, store_dtypes)):
    store_dtypes = None
  labels = jax.device_put(data.labels, replicated)
  state = init_state(arch, options, seed)
  state_shardings = _state_shardings(state, mesh, parallel)
  state = jax.device_put(state, state_shardings)

  permutation_sharding = NamedSharding(mesh, P(None, *_batch_spec(parallel)))
  steps = {freeze: _make_train_step(arch, options, data.layout, mesh, parallel,
                                    steps_per_epoch, freeze, store_dtypes)
           for freeze in (False, True)}
  use_rule = not options.num_steps
  # Members still training (the stopping rule); the step variant depends on it.
  active = None
  permutation, permutation_epoch = None, None

  def step_fn(state, step, limit):
    nonlocal active, permutation, permutation_epoch
    if active is None:
      active = np.asarray(jax.device_get(state['active']))
    epoch = step // steps_per_epoch
    count = min(limit, steps_per_epoch - step % steps_per_epoch)
    if use_rule and epoch > options.patience_after_epoch:
      count = 1   # a member may stop at any step: the host picks the step variant
    if epoch != permutation_epoch:
      permutation = jax.device_put(
          pixel_permutations(seed, epoch, arch.num_members, num_pixels, options.batch_size),
          permutation_sharding)
      permutation_epoch = epoch
    trained = int(active.sum())
    state, metrics = steps[not active.all()](state, stores, labels, permutation,
                                             np.int32(count))
    if use_rule:
      active = np.asarray(jax.device_get(state['active']))
    return state, metrics, count * trained * options.batch_size, count

  def postfix(metrics):
    trained = metrics['active']
    return {'loss': f'{metrics["loss"][trained].mean():.4f}',
            'acc': f'{100 * metrics["accuracy"][trained].mean():.1f}%',
            'members': int(active.sum())}

  state, rate = training.run(
      state, checkpoint_dir, options.checkpoint_every, state_shardings, total_steps, step_fn,
      desc='interpreter', rate_name='px_s', log_every=options.log_every,
      steps_per_call=options.steps_per_call,
      metric_names=('loss', 'accuracy', 'active'), postfix=postfix, progress=progress,
      keep_going=lambda: active is None or bool(active.any()))
  state['pixels_per_second'] = rate
  return state


# ----------------------------------------------------------------------------------------
# The pipeline's labeler 'mlp'.


class Labeler(labelers.Labeler):
  """DatasetGAN's MLP ensemble as the pipeline's labeler: trained on the native feature
  maps of the annotated samples (kept on the devices, read per pixel), labelling whole
  images with its first layer folded into the native maps."""
  name = 'mlp'
  folder = io.INTERPRETER
  meta_file = 'interpreter.json'

  def __init__(self, arch: InterpreterArch, options: TrainOptions | None = None,
               variables: dict | None = None, feature_dtype: str = 'float32'):
    self.arch = arch
    self.options = options or TrainOptions()
    self.variables = variables
    self.feature_dtype = feature_dtype

  @classmethod
  def create(cls, config, g, layout) -> 'Labeler':
    del g   # the layout holds what the generator gives
    arch = InterpreterArch(feature_dim=layout.dim, num_classes=config.data.num_classes,
                           num_members=config.interpreter.num_members)
    return cls(arch, TrainOptions.from_config(config.interpreter),
               feature_dtype=config.interpreter.feature_dtype)

  @classmethod
  def load(cls, directory: str) -> 'Labeler':
    arch, params, batch_stats, _ = load(directory)
    return cls(arch, variables={'params': params, 'batch_stats': batch_stats})

  def save(self, directory: str, info: dict) -> None:
    save(directory, self.arch, self.variables['params'], self.variables['batch_stats'], info)

  def record(self) -> dict:
    return {'arch': self.arch.to_json(), 'options': dataclasses.asdict(self.options),
            'feature_dtype': self.feature_dtype}

  def check_layout(self, g, layout) -> None:
    del g
    if layout.dim != self.arch.feature_dim:
      raise InputError(f'the interpreter expects {self.arch.feature_dim} feature values per '
                       f'pixel; the generator gives {layout.dim}')

  def train(self, g, sampling, data, layout, seed: int, checkpoint_dir: str) -> dict:
    dtype = jnp.dtype(self.feature_dtype)
    stores, _, seconds_per_image = features_lib.extract_stores(
        lambda i: g.regenerate({k: v[i:i + 1] for k, v in data.inputs.items()}, sampling),
        len(data), layout, dtype)
    masks = jnp.asarray(data.masks(range(len(data))))
    state = train(TrainData(stores, masks, layout), self.arch, self.options, seed,
                  checkpoint_dir=checkpoint_dir)
    self.variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
    return {'steps': int(state['step']), 'history': state['history'],
            'stopped_by_rule': [bool(not a) for a in state['active']],
            'best_loss': [float(x) if np.isfinite(x) else None for x in state['best_loss']],
            'pixels_per_second': round(float(state['pixels_per_second']), 1),
            'feature_seconds_per_image': round(seconds_per_image, 3),
            'feature_megabytes': round(layout.bytes_per_image(dtype) * len(data) / 2**20, 1)}

  def label_fn(self, layout, top_fraction: float, chunk_rows: int) -> labelers.LabelFn:
    plans = plan_chunks(layout, min(chunk_rows, layout.output_shape[0]))

    def label(variables, feature_maps, cond):
      del cond   # the MLP reads the feature maps alone
      kept = features_lib.keep_rows(feature_maps, layout)
      return jax.lax.map(
          lambda maps: label_image(maps, variables['params'], variables['batch_stats'],
                                   layout, plans, top_fraction), kept)

    return label
