"""Training the segmentation head ensemble on annotated samples, and the head as the
pipeline's labeler 'conv_head'.

As BigDatasetGAN's train.py: every step regenerates a batch of annotated samples from
what their folder stores (z and class for BigGAN) with the frozen generator, runs the
head in training mode (batch statistics, power-iteration updates) and takes an Adam
step (PyTorch's defaults) on the mean binary cross-entropy between the foreground
logit and the mask (softmax cross-entropy with more than two classes). Batches follow a fresh permutation of the annotated samples every
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

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dgan_jax import io
from dgan_jax import labelers
from dgan_jax import parallel
from dgan_jax import training
from dgan_jax.bigdatasetgan import head as head_lib
from dgan_jax.errors import InputError

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


def init_state(arch: head_lib.HeadArch, options: TrainOptions, seed: int) -> dict:
  """{'params', 'sn', 'batch_stats', 'opt_state', 'step'}, members stacked."""
  variables = head_lib.init(arch, (seed, INIT_STREAM))
  return {**variables, 'opt_state': optax.adam(options.learning_rate).init(variables['params']),
          'step': jnp.zeros((), jnp.int32)}


def head_arch_for(g, head_config, num_classes: int = 2,
                  num_members: int | None = None) -> head_lib.HeadArch:
  """The head for generator g's feature maps (`g.feature_specs`, which must be square)
  from config.biggan.head: one foreground logit for 2 classes, else one logit per
  class. InputError naming the fields when they do not fit."""
  specs = g.feature_specs
  if any(s.height != s.width for s in specs):
    raise InputError('the segmentation head reads square feature maps; the generator gives '
                     + ', '.join(f'{s.name} {s.height}x{s.width}' for s in specs))
  try:
    return head_lib.HeadArch(
        feature_resolutions=tuple(s.height for s in specs),
        feature_channels=tuple(s.channels for s in specs), cond_dim=g.cond_dim,
        group_sizes=tuple(head_config.group_sizes),
        group_channels=tuple(head_config.group_channels),
        num_outputs=1 if num_classes == 2 else num_classes,
        num_members=num_members or head_config.num_members)
  except (ValueError, TypeError) as e:
    raise InputError(f'config.biggan.head: {e}') from None


def losses(logits: jax.Array, masks: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Logits [M, B, H, W, O] on the labelled grid, masks [B, H, W] -> per-member mean loss
  and pixel accuracy [M]: binary cross-entropy of the foreground logit (O = 1), else
  softmax cross-entropy over the O classes."""
  if logits.shape[-1] == 1:
    target = masks.astype(jnp.float32)[None]                   # [1, B, H, W]
    logits = logits[..., 0]                                    # [M, B, H, W]
    loss = optax.sigmoid_binary_cross_entropy(logits, target).mean(axis=(1, 2, 3))
    accuracy = jnp.mean((logits > 0) == (target > 0.5), axis=(1, 2, 3))
    return loss, accuracy
  labels = jnp.broadcast_to(masks.astype(jnp.int32)[None], logits.shape[:-1])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(axis=(1, 2, 3))
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels, axis=(1, 2, 3))
  return loss, accuracy


def make_train_step(g, sampling, arch: head_lib.HeadArch, options: TrainOptions,
                    layout=None):
  """The compiled step (state, generator variables, inputs [B, ...] (`Sampling`), masks
  [B, H', W] on the labelled grid) -> (state, {'loss': [M], 'accuracy': [M]}); one per
  generator, architecture and grid (`layout`; None: the head's output grid)."""
  return _train_step(g, sampling, arch, options, layout)


@functools.lru_cache(maxsize=8)
def _train_step(g, sampling, arch: head_lib.HeadArch, options: TrainOptions, layout):
  tx = optax.adam(options.learning_rate)   # PyTorch's defaults: b1 0.9, b2 0.999, eps 1e-8

  def step_fn(state, generator_variables, inputs, masks):
    _, maps, cond = jax.lax.stop_gradient(g.apply(generator_variables, inputs, sampling))

    def loss_fn(params):
      variables = {'params': params, 'sn': state['sn'], 'batch_stats': state['batch_stats']}
      logits, new = head_lib.apply(arch, variables, maps, cond, train=True)
      if layout is not None:
        logits = head_lib.logits_to_grid(logits, layout)
      member_losses, accuracy = losses(logits, masks)
      return member_losses.sum(), (member_losses, accuracy, new)

    grads, (member_losses, accuracy, new) = jax.grad(loss_fn, has_aux=True)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    new_state = {'params': optax.apply_updates(state['params'], updates), 'sn': new['sn'],
                 'batch_stats': new['batch_stats'], 'opt_state': opt_state,
                 'step': state['step'] + 1}
    return new_state, {'loss': member_losses, 'accuracy': accuracy}

  return jax.jit(step_fn, donate_argnums=(0,))


def train(g, sampling, data, arch: head_lib.HeadArch, options: TrainOptions, seed: int,
          layout=None, checkpoint_dir: str | None = None, mesh: Mesh | None = None,
          progress: bool = True, stop_after: int | None = None) -> dict:
  """Trains the ensemble for options.num_steps steps (resuming from `checkpoint_dir`) on
  the annotated set `data` (dgan_jax/data/annotated.py: inputs, masks on the grid).

  `stop_after` ends the run after that many steps in total, as an interruption would.
  Returns the final state on the host (see `init_state`) plus 'history' (step, per-member
  loss and accuracy every log_every-th step of this run) and 'images_per_second' (over
  this run's steps after the first, compiling, one).
  """
  mesh = mesh or parallel.make_mesh()
  batch_size = options.batch_size
  if batch_size % mesh.size:
    raise InputError(f'config.biggan.train.batch_size {batch_size} does not split over '
                     f'{mesh.size} devices')
  steps_per_epoch = len(data) // batch_size
  if steps_per_epoch == 0:
    raise InputError(f'{len(data)} annotated samples in {data.folder} do not fill one batch '
                     f'of config.biggan.train.batch_size={batch_size}')
  total_steps = options.num_steps if stop_after is None else min(options.num_steps,
                                                                  stop_after)
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(parallel.DATA_AXIS))
  state = jax.device_put(init_state(arch, options, seed), replicated)
  generator_variables = jax.device_put(g.variables(sampling), replicated)
  step_fn = make_train_step(g, sampling, arch, options, layout)

  def host_batch(step):
    epoch, position = divmod(step, steps_per_epoch)
    ids = batch_order(seed, epoch, len(data), batch_size)[position]
    return {k: v[ids] for k, v in data.inputs.items()}, data.masks(ids)

  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    pending = {}

    def one_step(state, step, limit):
      del limit
      inputs, masks = (pending.pop(step, None) or pool.submit(host_batch, step)).result()
      if step + 1 < total_steps:
        pending[step + 1] = pool.submit(host_batch, step + 1)  # read while the step runs
      state, metrics = step_fn(state, generator_variables,
                               *jax.device_put((inputs, masks), batch_sharding))
      return state, metrics, batch_size, 1

    state, rate = training.run(
        state, checkpoint_dir, options.checkpoint_every,
        jax.tree.map(lambda _: replicated, state), total_steps, one_step,
        desc='segmentation head', rate_name='img_s', log_every=options.log_every,
        metric_names=('loss', 'accuracy'), progress=progress,
        postfix=lambda m: {'loss': f'{m["loss"].mean():.4f}',
                           'acc': f'{100 * m["accuracy"].mean():.1f}%'})
  state['images_per_second'] = rate
  return state


def variables_of(state: dict) -> dict:
  """The head's variables ({'params', 'sn', 'batch_stats'}) of a training state."""
  return {k: state[k] for k in ('params', 'sn', 'batch_stats')}


# ----------------------------------------------------------------------------------------
# The pipeline's labeler 'conv_head'.


class Labeler(labelers.Labeler):
  """BigDatasetGAN's segmentation head as the pipeline's labeler: trained on samples
  regenerated every step (the generator frozen), labelling whole images at the head's
  output size, resampled onto the labelled grid."""
  name = 'conv_head'
  folder = io.HEAD
  meta_file = 'head.json'

  def __init__(self, arch: head_lib.HeadArch, options: TrainOptions | None = None,
               variables: dict | None = None):
    self.arch = arch
    self.options = options or TrainOptions()
    self.variables = variables

  @classmethod
  def create(cls, config, g, layout) -> 'Labeler':
    del layout   # the head reads the native maps; its logits are resampled to the grid
    return cls(head_arch_for(g, config.biggan.head, config.data.num_classes),
               TrainOptions.from_config(config.biggan.train))

  @classmethod
  def load(cls, directory: str) -> 'Labeler':
    arch, variables, _ = head_lib.load(directory)
    return cls(arch, variables=variables)

  def save(self, directory: str, info: dict) -> None:
    head_lib.save(directory, self.arch, self.variables, info)

  def record(self) -> dict:
    return {'arch': self.arch.to_json(), 'options': dataclasses.asdict(self.options)}

  def check_layout(self, g, layout) -> None:
    del layout
    specs = g.feature_specs
    if ((tuple(s.height for s in specs), tuple(s.channels for s in specs), g.cond_dim)
        != (self.arch.feature_resolutions, self.arch.feature_channels, self.arch.cond_dim)):
      raise InputError('the segmentation head was trained on other feature maps than the '
                       'generator gives (retrain it: delete its folder)')

  def train(self, g, sampling, data, layout, seed: int, checkpoint_dir: str) -> dict:
    state = train(g, sampling, data, self.arch, self.options, seed, layout=layout,
                  checkpoint_dir=checkpoint_dir)
    self.variables = variables_of(state)
    return {'steps': int(state['step']), 'history': state['history'],
            'num_members': self.arch.num_members,
            'images_per_second': round(float(state['images_per_second']), 3)}

  def label_fn(self, layout, top_fraction: float, chunk_rows: int) -> labelers.LabelFn:
    del chunk_rows   # the head labels whole images
    arch = self.arch

    def label(variables, feature_maps, cond):
      logits, _ = head_lib.apply(arch, variables, feature_maps, cond, train=False)
      return head_lib.label_and_score(head_lib.logits_to_grid(logits, layout), top_fraction)

    return label
