"""Per-class sampling and the compiled BigGAN generate step.

Sample i of a run with class list (c_0, .., c_{K-1}) and n samples per class is number
j = i mod n of class c_{i div n}. Its latent depends only on (seed, stream, class, j):

  z = z_std * N(0, I) drawn from fold_in(fold_in(fold_in(key(seed), stream), class), j)

(BigDatasetGAN's sample_dataset.py draws z ~ N(0, z_var^2) the same way, from a global
generator), so sample j of class c is the same whatever the batching, the class list or
n. The `sample` stage (images to annotate) and the `generate` stage use different
streams, so generated samples never repeat annotated ones.
"""

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dgan_jax import features as features_lib
from dgan_jax import uncertainty
from dgan_jax.bigdatasetgan import head as head_lib
from dgan_jax.errors import InputError
from dgan_jax.generators import biggan

ANNOTATE_STREAM = 10   # latents.py uses streams 0 and 1, interpreter.py 2 and 3
GENERATE_STREAM = 11


def check_class_idx(class_idx: Sequence, num_classes: int) -> tuple[int, ...]:
  """config.biggan.class_idx -> tuple of ints; InputError naming the field otherwise."""
  values = tuple(class_idx) if isinstance(class_idx, (tuple, list)) else (class_idx,)
  if not values:
    raise InputError('config.biggan.class_idx is empty: give class ids, e.g. '
                     '--config.biggan.class_idx=225,200')
  bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, np.integer))]
  if bad:
    raise InputError(f'config.biggan.class_idx must be integer class ids, got {bad!r}')
  out_of_range = [int(v) for v in values if not 0 <= v < num_classes]
  if out_of_range:
    raise InputError(f'config.biggan.class_idx: class ids {out_of_range} are outside the '
                     f"generator's [0, {num_classes})")
  if len(set(values)) != len(values):
    raise InputError(f'config.biggan.class_idx repeats a class: {list(values)}')
  return tuple(int(v) for v in values)


def sample_plan(class_idx: Sequence[int], samples_per_class: int,
                indices) -> tuple[np.ndarray, np.ndarray]:
  """Global sample indices [B] -> (class ids [B] int32, numbers within the class [B])."""
  indices = np.asarray(indices, np.int64)
  slots, numbers = np.divmod(indices, samples_per_class)
  return np.asarray(class_idx, np.int32)[slots], numbers.astype(np.int32)


def class_z(seed: int, stream: int, class_ids, numbers, dim_z: int,
            z_std: float) -> jax.Array:
  """class ids [B], numbers [B] -> z [B, dim_z] ~ N(0, z_std^2 I) (see the module doc)."""
  base = jax.random.fold_in(jax.random.key(seed), stream)

  def one(class_id, number):
    key = jax.random.fold_in(jax.random.fold_in(base, class_id), number)
    return z_std * jax.random.normal(key, (dim_z,))

  return jax.vmap(one)(jnp.asarray(class_ids, jnp.uint32), jnp.asarray(numbers, jnp.uint32))


def check_generator(g) -> None:
  if getattr(g, 'kind', '') != 'biggan':
    raise InputError(f'the BigDatasetGAN head needs a BigGAN (BigGAN-PyTorch layout, e.g. '
                     f'biggan-512.pth); the generator is {getattr(g, "kind", type(g).__name__)!r}')


def head_arch_for(g, head_config, num_members: int | None = None) -> head_lib.HeadArch:
  """The head for generator g from config.biggan.head; InputError naming the fields."""
  try:
    return head_lib.HeadArch(
        feature_resolutions=tuple(g.feature_resolutions),
        feature_channels=tuple(g.feature_channels), cond_dim=g.embedding_dim,
        group_sizes=tuple(head_config.group_sizes),
        group_channels=tuple(head_config.group_channels),
        num_members=num_members or head_config.num_members)
  except (ValueError, TypeError) as e:
    raise InputError(f'config.biggan.head: {e}') from None


def to_uint8(image: jax.Array) -> jax.Array:
  """[-1, 1] -> uint8 as data/images.to_uint8 (x * 127.5 + 128, floored, clipped)."""
  return jnp.clip(jnp.floor(image.astype(jnp.float32) * 127.5 + 128.0), 0, 255).astype(
      jnp.uint8)


def label_and_score(logits: jax.Array, top_fraction: float):
  """Member logits [M, B, S, S, 1] -> (label [B, S, S] int32: the members' majority vote of
  logit > 0 (ties: background), pixel JS divergence [B, S, S], image score [B])."""
  member_labels = (logits[..., 0] > 0).astype(jnp.int32)
  label = uncertainty.majority_vote(member_labels, 2).astype(jnp.int32)
  pixel_js = uncertainty.js_divergence(head_lib.binary_predictions(logits))
  return label, pixel_js, uncertainty.image_scores(pixel_js, top_fraction)


@dataclasses.dataclass
class ClassFactory:
  """A compiled `step(indices [B]) -> dict` for one BigGAN + segmentation head ensemble.

  Outputs (numpy): image uint8 [B, R, R, 3], label int32 [B, R, R] (1 = foreground),
  uncertainty float32 [B] (mean of the top `top_fraction` pixel JS divergences between
  the members' foreground probabilities), z float32 [B, dim_z], class_id int64 [B].
  Each compiled call takes `batch_size` samples (padded, rounded up to a multiple of the
  local devices) sharded over the devices; outputs do not depend on the padding.
  """
  generator: biggan.BigGANGenerator
  head_arch: head_lib.HeadArch
  head_variables: dict
  class_idx: tuple[int, ...]
  samples_per_class: int
  seed: int
  z_std: float = 0.9
  top_fraction: float = 0.1
  batch_size: int = 0            # samples per compiled call (0: the whole call at once)
  devices: tuple = ()

  def __post_init__(self):
    g = self.generator
    check_generator(g)
    self.class_idx = check_class_idx(self.class_idx, g.num_classes)
    if self.samples_per_class < 1:
      raise InputError('config.biggan.samples_per_class must be at least 1')
    self.devices = tuple(self.devices) or tuple(jax.local_devices())
    self.mesh = Mesh(np.asarray(self.devices), ('data',))
    size = self.head_arch.output_size
    # generate.py needs the labelled grid (and writes z of width generator.arch.dim_z).
    self.layout = features_lib.FeatureLayout.create(
        [(r, r) for r in g.feature_resolutions], g.feature_channels, (size, size))
    self.extra_features = {'class_id': np.int64}
    replicated = NamedSharding(self.mesh, P())
    self._variables = jax.device_put(self.head_variables, replicated)
    self._gen_params = jax.device_put(g.params, replicated)
    self._batch_sharding = NamedSharding(self.mesh, P('data'))
    self._step = compiled_step(g.arch, jnp.dtype(g.dtype).name, self.head_arch,
                               float(self.top_fraction))

  @property
  def num_samples(self) -> int:
    return len(self.class_idx) * self.samples_per_class

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  def __call__(self, indices) -> dict:
    """indices [B] global sample ids in [0, num_samples) -> numpy outputs, computed in
    chunks of batch_size (when set) so every call runs the same compiled shape."""
    indices = np.asarray(indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= self.num_samples):
      raise ValueError(f'sample indices must be in [0, {self.num_samples})')
    chunk = self.batch_size or max(len(indices), 1)
    parts = [self._run(indices[start:start + chunk])
             for start in range(0, len(indices), chunk)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def _run(self, indices: np.ndarray) -> dict:
    n = len(indices)
    padded = -(-max(n, self.batch_size) // self.num_devices) * self.num_devices
    indices = np.concatenate([indices, np.repeat(indices[-1:], padded - n)])
    class_ids, numbers = sample_plan(self.class_idx, self.samples_per_class, indices)
    class_ids, numbers = jax.device_put((class_ids, numbers), self._batch_sharding)
    out = self._step(self._gen_params, self._variables, np.int32(self.seed),
                     np.float32(self.z_std), class_ids, numbers)
    out = {k: np.asarray(v)[:n] for k, v in out.items()}
    out['class_id'] = out['class_id'].astype(np.int64)
    return out


@functools.lru_cache(maxsize=None)
def compiled_step(gen_arch: biggan.BigGANArch, dtype_name: str,
                  head_arch: head_lib.HeadArch, top_fraction: float):
  """(generator params, head variables, seed, z_std, class ids [B], numbers [B]) -> the
  ClassFactory outputs as device arrays; one compilation per architecture and shape."""
  dtype = jnp.dtype(dtype_name)

  @jax.jit
  def step(gen_params, variables, seed, z_std, class_ids, numbers):
    z = class_z(seed, GENERATE_STREAM, class_ids, numbers, gen_arch.dim_z, z_std)
    vectors = jax.nn.one_hot(class_ids, gen_arch.num_classes, dtype=dtype)
    embedding = biggan.embed_classes(gen_params, vectors)
    image, maps = biggan.synthesis(gen_params, gen_arch, z.astype(dtype), embedding)
    logits, _ = head_lib.apply(head_arch, variables, maps, embedding, train=False)
    label, _, score = label_and_score(logits, top_fraction)
    return {'image': to_uint8(image), 'label': label, 'uncertainty': score, 'z': z,
            'class_id': class_ids.astype(jnp.int32)}

  return step
