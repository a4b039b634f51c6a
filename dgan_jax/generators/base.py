"""The interface every generator family implements, and the registry that finds one.

A family is a module `dgan_jax/generators/<family>.py` whose `Generator` class subclasses
`base.Generator` with `family = '<family>'` (as big_vision finds `models.<name>`). The
name comes from a converted checkpoint's generator.json (`arch.type`) or from
config.generator.random_init.type; nothing else in the pipeline names a family. A new
family adds its module (and a converter), nothing more.

What a stage gets from a generator, without knowing its family:
  feature_specs    the native feature maps: name, (h, w), channels, in output order
  sampling(config) how sample i of a purpose ('annotate', 'generate', 'test') is drawn
                   from (seed, stream, i), and how annotated samples are regenerated
  variables(s)     the arrays the pure function reads (params, average W, noise, ...)
  apply(v, inputs, s)  inputs -> (image, feature maps, class conditioning): pure, for
                   jit and shard_map
  encodes_images   whether annotated images are encoded (autoencoders: the sampling's
                   from_images) rather than regenerated from their stored latents
"""

import abc
import dataclasses
import functools
import importlib
import re
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from dgan_jax import latents
from dgan_jax.data import classes
from dgan_jax.errors import InputError

Inputs = dict[str, jax.Array]   # per-sample arrays with a leading batch axis


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """One native feature map: its name (e.g. 'b8.conv0'), size and channels."""
  name: str
  height: int
  width: int
  channels: int

  @property
  def shape(self) -> tuple[int, int]:
    return self.height, self.width


class Sampling(abc.ABC):
  """A run's sampling settings for one generator (read from the config by the family).

  Sample i of a purpose depends only on (seed, purpose, i) and these settings, never on
  batching or device count. Inputs always hold 'z' [B, latent_size] (the latent stored
  with each sample); conditional families add 'class_id' [B] int32.
  """
  seed: int

  @abc.abstractmethod
  def count(self, purpose: str, config) -> int:
    """How many samples `purpose` draws (the sample stage's, the generate stage's, the
    stand-in test set's)."""

  @abc.abstractmethod
  def draw(self, purpose: str, indices: jax.Array) -> Inputs:
    """Sample indices [B] (uint32) -> their inputs. Pure: usable inside jit."""

  @abc.abstractmethod
  def from_annotations(self, latents: np.ndarray, latent_kind: str, ids: np.ndarray,
                       class_ids: np.ndarray | None) -> Inputs:
    """What an annotation folder stores -> inputs that regenerate those samples.

    latents: [N, ...] as stored (z, or W when latent_kind is 'w'); ids: the annotated
    samples' numbers [N] (the sample stage's indices); class_ids: [N] or None."""

  def from_images(self, images: np.ndarray, class_ids: np.ndarray | None) -> Inputs:
    """Annotated images uint8 [N, R, R, 3] (class ids [N] or None) -> inputs that encode
    them; only for generators that `encodes_images`."""
    raise NotImplementedError(f'{type(self).__name__} regenerates samples from latents')

  @abc.abstractmethod
  def record(self) -> dict:
    """JSON: the settings sample i depends on (besides the seed), so that a stage can
    tell when they changed."""

  @property
  def extra_fields(self) -> dict[str, Any]:
    """Per-sample integer inputs stored with each generated sample: name -> numpy dtype."""
    return {}

  def class_names(self) -> list[tuple[int, str]]:
    """(class id, name) of the classes drawn, for conditional families; [] otherwise."""
    return []


class Generator(abc.ABC):
  """A pretrained generator: parameters, architecture and the pure function over them.

  Subclasses set `family` and implement the abstract members; their public methods (such
  as StyleGAN's map / truncate / synthesize) are the library API for people who use the
  network directly.
  """
  family: ClassVar[str] = ''

  arch: Any
  params: Any
  dtype: jnp.dtype

  @classmethod
  @abc.abstractmethod
  def from_checkpoint(cls, arch_json: dict, arrays: dict[str, np.ndarray], source: str,
                      dtype) -> 'Generator':
    """A converted checkpoint (generator.json's arch, params.npz's arrays) -> generator.
    Raises CheckpointError naming `source` when they do not fit."""

  @classmethod
  @abc.abstractmethod
  def random(cls, arch_kwargs: dict, seed: int, dtype) -> 'Generator':
    """Random weights for tests and smoke runs; arch_kwargs are the architecture's fields
    (config.generator.random_init.arch). Raises InputError naming a bad field."""

  @property
  def kind(self) -> str:
    """The family name (the name generator.json's arch record uses: 'type')."""
    return self.family

  @property
  @abc.abstractmethod
  def resolution(self) -> int:
    """Side of the square output image."""

  @property
  @abc.abstractmethod
  def latent_size(self) -> int:
    """Width of the latent z stored with each sample."""

  @property
  @abc.abstractmethod
  def feature_specs(self) -> tuple[FeatureSpec, ...]:
    """The feature maps `apply` returns, in order."""

  @property
  def num_classes(self) -> int:
    """Classes of a class-conditional generator; 0 for unconditional ones."""
    return 0

  @property
  def cond_dim(self) -> int:
    """Width of the per-sample class conditioning `apply` returns (0: none)."""
    return 0

  @property
  def encodes_images(self) -> bool:
    """True for autoencoders (VQGAN): an annotated image is encoded, not regenerated from
    a stored latent, so masks drawn on any image train the labeler
    (`Sampling.from_images`; data/annotated.py)."""
    return False

  @abc.abstractmethod
  def sampling(self, config) -> Sampling:
    """The run's sampling settings, read from the family's own config fields; InputError
    naming a bad field."""

  def variables(self, sampling: Sampling) -> Any:
    """The arrays `apply` reads (a pytree; passed as arguments, not baked into code)."""
    del sampling
    return {'params': self.params}

  @abc.abstractmethod
  def apply(self, variables, inputs: Inputs, sampling: Sampling
            ) -> tuple[jax.Array, list[jax.Array], jax.Array | None]:
    """inputs (see `Sampling`) -> (image [B, R, R, 3] in [-1, 1] (float32 or the compute
    dtype), feature maps: list of [B, h, w, C] as `feature_specs`, class conditioning
    [B, cond_dim] float or None). Pure: usable inside jit and shard_map."""

  def regenerate(self, inputs: Inputs, sampling: Sampling
                 ) -> tuple[jax.Array, list[jax.Array]]:
    """`apply` outside a compiled step, for one batch of inputs (the samples to annotate,
    regenerating annotated ones) -> (image [B, R, R, 3] float32, feature maps). Families
    with a public API (StyleGAN's map / truncate / synthesize) run it, so that these
    images are exactly what users who call it get."""
    fn = _jitted_apply(self, sampling)
    image, features = fn(self.variables(sampling), inputs)
    return image.astype(jnp.float32), features

  def draw_images(self, sampling: Sampling, purpose: str, count: int, batch_size: int = 8,
                  progress: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Samples 0..count-1 of `purpose` -> (images uint8 [count, R, R, 3], their inputs
    (numpy, [count, ...])), drawn op by op (uncompiled, as the stored latents always
    were) and `regenerate`d batch_size at a time."""
    images, inputs = [], []
    for begin in tqdm(range(0, count, batch_size), desc=purpose, unit='batch',
                      disable=not progress):
      drawn = sampling.draw(purpose,
                            np.arange(begin, min(begin + batch_size, count), dtype=np.uint32))
      images.append(np.asarray(to_uint8(self.regenerate(drawn, sampling)[0])))
      inputs.append(jax.device_get(drawn))
    return (np.concatenate(images),
            jax.tree.map(lambda *parts: np.concatenate(parts), *inputs))

  def files_for_annotators(self) -> dict[str, np.ndarray]:
    """Arrays the sample stage writes beside the images to annotate (file name -> array;
    StyleGAN: DatasetGAN's avg_latent.npy)."""
    return {}


@functools.lru_cache(maxsize=8)
def _jitted_apply(g: Generator, sampling: Sampling):
  return jax.jit(lambda variables, inputs: g.apply(variables, inputs, sampling)[:2])


def to_uint8(image: jax.Array) -> jax.Array:
  """Generator output in [-1, 1] -> uint8, as DatasetGAN does: x * 127.5 + 128, floored,
  clipped to [0, 255] (`data.images.to_uint8` on the host)."""
  return jnp.clip(jnp.floor(image.astype(jnp.float32) * 127.5 + 128.0), 0, 255).astype(
      jnp.uint8)


# ----------------------------------------------------------------------------------------
# The registry.

_NAME = re.compile(r'^[a-z][a-z0-9_]*$')


def family_class(name: str) -> type[Generator]:
  """The Generator class of family `name` (module dgan_jax.generators.<name>)."""
  if not isinstance(name, str) or not _NAME.match(name):
    raise InputError(f'unknown generator type {name!r}')
  try:
    module = importlib.import_module(f'dgan_jax.generators.{name}')
  except ModuleNotFoundError as e:
    if e.name != f'dgan_jax.generators.{name}':
      raise
    raise InputError(f'unknown generator type {name!r} (no module '
                     f'dgan_jax/generators/{name}.py)') from None
  cls = getattr(module, 'Generator', None)
  if not (isinstance(cls, type) and issubclass(cls, Generator) and cls.family == name):
    raise InputError(f'unknown generator type {name!r} (dgan_jax/generators/{name}.py '
                     'defines no Generator of that family)')
  return cls


# ----------------------------------------------------------------------------------------
# Class-conditional sampling, shared by the families that draw (class, z) pairs.

ANNOTATE_STREAM = 10   # latents.py uses streams 0 and 1, interpreter.py 2 and 3
GENERATE_STREAM = 11
TEST_STREAM = 14       # bigdatasetgan/train.py uses 12 and 13
CLASS_STREAMS = {'annotate': ANNOTATE_STREAM, 'generate': GENERATE_STREAM,
                 'test': TEST_STREAM}


def check_class_idx(class_idx, num_classes: int) -> tuple[int, ...]:
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


def class_z(seed: int, stream: int, class_ids, numbers, dim_z: int,
            z_std: float) -> jax.Array:
  """class ids [B], numbers [B] -> z [B, dim_z] = z_std * N(0, I) drawn from
  fold_in(fold_in(fold_in(key(seed), stream), class), number)."""
  base = jax.random.fold_in(jax.random.key(seed), stream)

  def one(class_id, number):
    key = jax.random.fold_in(jax.random.fold_in(base, class_id), number)
    return z_std * jax.random.normal(key, (dim_z,))

  return jax.vmap(one)(jnp.asarray(class_ids, jnp.uint32), jnp.asarray(numbers, jnp.uint32))


@dataclasses.dataclass(frozen=True)
class ClassSampling(Sampling):
  """Per-class samples (BigDatasetGAN's sample_dataset.py; config.biggan): sample i of
  purpose 'annotate' or 'generate' is number j = i mod n of class class_idx[i div n]
  (n: annotate_per_class or samples_per_class); of purpose 'test', number i of class
  class_idx[i mod K]. Its z = z_std * N(0, I) depends only on (seed, purpose, class, j),
  so a sample does not depend on batching, the class list or n."""
  seed: int
  class_idx: tuple[int, ...]
  annotate_per_class: int
  samples_per_class: int
  z_std: float
  dim_z: int
  num_classes: int

  @classmethod
  def from_config(cls, config, dim_z: int, num_classes: int) -> 'ClassSampling':
    b = config.biggan
    for field in ('annotate_per_class', 'samples_per_class'):
      if b[field] < 1:
        raise InputError(f'config.biggan.{field} must be at least 1')
    return cls(config.seed, check_class_idx(b.class_idx, num_classes), b.annotate_per_class,
               b.samples_per_class, float(b.z_std), dim_z, num_classes)

  def count(self, purpose: str, config) -> int:
    if purpose == 'test':
      return config.evaluate.synthetic_test_images
    return len(self.class_idx) * self._per_class(purpose)

  def _per_class(self, purpose: str) -> int:
    return self.annotate_per_class if purpose == 'annotate' else self.samples_per_class

  def plan(self, purpose: str, indices) -> tuple[jax.Array, jax.Array]:
    """indices [B] -> (class ids [B] int32, numbers within the class [B] int32)."""
    indices = jnp.asarray(indices, jnp.uint32)
    classes = jnp.asarray(self.class_idx, jnp.int32)
    if purpose == 'test':
      return classes[indices % len(self.class_idx)], indices.astype(jnp.int32)
    per_class = self._per_class(purpose)
    return classes[indices // per_class], (indices % per_class).astype(jnp.int32)

  def draw(self, purpose: str, indices: jax.Array) -> Inputs:
    class_ids, numbers = self.plan(purpose, indices)
    z = class_z(self.seed, CLASS_STREAMS[purpose], class_ids, numbers, self.dim_z,
                self.z_std)
    return {'z': z, 'class_id': class_ids}

  def from_annotations(self, latents, latent_kind, ids, class_ids) -> Inputs:
    if latent_kind != 'z' or class_ids is None:
      raise InputError('a class-conditional generator regenerates annotated samples from '
                       'their z and class (the BigDatasetGAN layout), not from '
                       f'{latent_kind} latents without classes')
    return {'z': np.asarray(latents, np.float32).reshape(len(latents), self.dim_z),
            'class_id': np.asarray(class_ids, np.int32)}

  def record(self) -> dict:
    return {'class_idx': list(self.class_idx), 'annotate_per_class': self.annotate_per_class,
            'samples_per_class': self.samples_per_class, 'z_std': self.z_std}

  @property
  def extra_fields(self) -> dict[str, Any]:
    return {'class_id': np.int64}

  def class_names(self) -> list[tuple[int, str]]:
    return [(c, classes.class_folder(c, self.num_classes)) for c in self.class_idx]


# ----------------------------------------------------------------------------------------
# Unconditional W-space sampling, shared by the style-based families.

# z of sample i is N(0, I) from fold_in(seed, LATENT_STREAM, offset + i). The sample
# stage and the generate stage share offset 0 (generated sample i < num_annotated is the
# annotated image i, as before round two); stand-in test images start at 2**31.
STYLE_OFFSETS = {'annotate': 0, 'generate': 0, 'test': 2 ** 31}


@dataclasses.dataclass(frozen=True)
class StyleSampling(Sampling):
  """z ~ N(0, I) per sample (latents.sample_z), mapped to W and truncated toward the
  average W by psi on the first `cutoff` layers; noise 'const' (stored in the
  checkpoint), 'zero' or 'per_sample' (drawn from (seed, index)). config.generator's
  truncation_psi, truncation_cutoff and noise."""
  seed: int
  latent_size: int
  num_ws: int             # W latents from annotation folders: [N, num_ws, D] or [N, D]
  truncation_psi: float
  truncation_cutoff: int
  noise: str

  @classmethod
  def from_config(cls, config, latent_size: int, num_ws: int) -> 'StyleSampling':
    g = config.generator   # its noise is one of the three (config.validate)
    return cls(config.seed, latent_size, num_ws, float(g.truncation_psi),
               int(g.truncation_cutoff), g.noise)

  def count(self, purpose: str, config) -> int:
    return {'annotate': config.sample.num_samples, 'generate': config.generate.num_samples,
            'test': config.evaluate.synthetic_test_images}[purpose]

  def draw(self, purpose: str, indices: jax.Array) -> Inputs:
    index = jnp.asarray(indices).astype(jnp.uint32) + jnp.uint32(STYLE_OFFSETS[purpose])
    return {'z': latents.sample_z(self.seed, index, self.latent_size), 'index': index}

  def from_annotations(self, latents, latent_kind, ids, class_ids) -> Inputs:
    del class_ids   # unconditional
    return {latent_kind: np.asarray(latents, np.float32),
            'index': np.asarray(ids, np.uint32)}

  def noise_keys(self, index: jax.Array) -> jax.Array:
    """Per-sample noise keys [B] from (seed, latents.NOISE_STREAM, index)."""
    return jax.vmap(lambda i: latents.sample_key(self.seed, latents.NOISE_STREAM, i))(index)

  def record(self) -> dict:
    return {'truncation_psi': self.truncation_psi,
            'truncation_cutoff': self.truncation_cutoff, 'noise': self.noise}


def build_random_arch(arch_class, arch_kwargs: dict):
  """config.generator.random_init.arch -> arch_class; InputError naming the field."""
  kwargs = dict(arch_kwargs)
  known = {f.name for f in dataclasses.fields(arch_class)}
  unknown = sorted(set(kwargs) - known)
  if unknown:
    raise InputError(f'config.generator.random_init.arch: unknown field(s) {unknown} for '
                     f'{arch_class.__name__} (known: {sorted(known)})')
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  try:
    return arch_class(**kwargs)
  except (TypeError, ValueError) as e:
    raise InputError(f'config.generator.random_init.arch: {e}') from None
