"""The labelled-data factory: sample indices -> images, label maps and uncertainty scores
in one compiled step, for any generator and labeler.

Per sample i: its inputs from (seed, 'generate', i) (`Sampling.draw`: z, and the class
for conditional generators) -> the generator's pure function (image, feature maps,
class conditioning) -> the labeler's labelling function: every member's prediction for
every pixel of the labelled grid, their majority vote (ties: the smallest class id),
the per-pixel Jensen-Shannon divergence of their probabilities, H(mean_m p_m) -
mean_m H(p_m) -> the image's score, the mean of its top `top_fraction` pixel values.

The step runs under `jax.shard_map` over the local devices, each device labelling its
share of the batch; sample i is the same whatever the batch size or device count.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from dgan_jax import features
from dgan_jax import generators
from dgan_jax import labelers
from dgan_jax import parallel
from dgan_jax.errors import InputError
from dgan_jax.generators import base


@dataclasses.dataclass
class Factory:
  """A compiled `step(indices [B]) -> dict` for one generator + labeler.

  Outputs (numpy): image uint8 [B, H', W, 3] on the labelled grid, label int32 [B, H', W],
  uncertainty float32 [B] (the image score), z float32 [B, latent_size], and the
  sampling's extra fields (class_id [B] for conditional generators). Each compiled call
  takes `batch_size` samples (padded, rounded up to a multiple of the local devices),
  so every call runs one compiled shape; outputs do not depend on the padding.
  """
  generator: base.Generator
  sampling: base.Sampling
  labeler: labelers.Labeler
  layout: features.FeatureLayout
  top_fraction: float = 0.1
  chunk_rows: int = 32
  batch_size: int = 0            # samples per compiled call (0: the whole call at once)
  devices: tuple = ()

  def __post_init__(self):
    self.labeler.check_layout(self.generator, self.layout)
    self.mesh = parallel.make_mesh(self.devices or None)
    self.devices = tuple(self.mesh.devices.flat)
    self._label = self.labeler.label_fn(self.layout, self.top_fraction, self.chunk_rows)
    self._generator_variables = self.generator.variables(self.sampling)
    self._compiled = {}

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  @property
  def latent_size(self) -> int:
    return self.generator.latent_size

  @property
  def extra_features(self) -> dict:
    """Per-sample scalars stored beside the base features: name -> numpy dtype."""
    return self.sampling.extra_fields

  def _image_on_grid(self, image: jax.Array) -> jax.Array:
    """[B, R, R, 3] in [-1, 1] -> uint8 [B, H', W, 3] on the labelled grid."""
    return base.to_uint8(features.to_grid(image.astype(jnp.float32), self.layout))

  def _outputs(self, generator_variables, labeler_variables, inputs, what: str):
    image, feature_maps, cond = self.generator.apply(generator_variables, inputs,
                                                     self.sampling)
    if what == 'images':
      return {'image': self._image_on_grid(image)}
    label, pixel_js, score = self._label(labeler_variables, feature_maps, cond)
    out = {'image': self._image_on_grid(image), 'label': label.astype(jnp.int32),
           'uncertainty': score, 'z': inputs['z']}
    out.update({k: inputs[k] for k in self.sampling.extra_fields})
    if what == 'pixels':
      out['pixel_uncertainty'] = pixel_js
    return out

  def _step(self, from_indices: bool, what: str):
    """The compiled step: (generator variables, labeler variables, sample indices [B] or
    inputs [B, ...]) -> outputs ('labels', plus 'pixels' uncertainty maps, or only the
    'images'), sharded over the mesh's 'data' axis."""
    key = (from_indices, what)
    if key not in self._compiled:
      def per_device(generator_variables, labeler_variables, batch):
        inputs = self.sampling.draw('generate', batch) if from_indices else batch
        return self._outputs(generator_variables, labeler_variables, inputs, what)

      replicated, split = P(), P(parallel.DATA_AXIS)
      self._compiled[key] = jax.jit(jax.shard_map(
          per_device, mesh=self.mesh, in_specs=(replicated, replicated, split),
          out_specs=split, check_vma=False))
    return self._compiled[key]

  def _padded(self, count: int) -> int:
    return -(-max(count, self.batch_size) // self.num_devices) * self.num_devices

  def _run(self, batch, count: int, from_indices: bool, what: str) -> dict:
    """One compiled call on `count` samples, padded by repeating the last."""
    padded = self._padded(count)
    batch = jax.tree.map(lambda a: np.concatenate([a, np.repeat(a[-1:], padded - count,
                                                                axis=0)]), batch)
    out = self._step(from_indices, what)(self._generator_variables, self.labeler.variables,
                                         batch)
    return {k: np.asarray(v)[:count] for k, v in out.items()}

  def _chunked(self, batch, from_indices: bool, what: str) -> dict:
    count = len(jax.tree.leaves(batch)[0])
    chunk = self.batch_size or max(count, 1)
    parts = [self._run(jax.tree.map(lambda a: a[start:start + chunk], batch),
                       min(chunk, count - start), from_indices, what)
             for start in range(0, count, chunk)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def __call__(self, indices) -> dict:
    """indices [B] global sample ids -> numpy outputs (see the class docstring), computed
    in chunks of batch_size (when set)."""
    indices = np.asarray(indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= 2 ** 32):
      raise ValueError('sample indices must be in [0, 2**32)')
    return self._chunked(indices.astype(np.uint32), True, 'labels')

  def label_inputs(self, inputs: dict) -> dict:
    """Given generator inputs [N, ...] (numpy; e.g. the annotated samples') -> the
    outputs plus 'pixel_uncertainty' [N, H', W] float32."""
    return self._chunked(inputs, False, 'pixels')

  def images(self, inputs: dict) -> np.ndarray:
    """Given generator inputs [N, ...] -> their images on the labelled grid, uint8
    [N, H', W, 3] (no labelling)."""
    return self._chunked(inputs, False, 'images')['image']

  def memory_analysis(self, batch_size: int) -> dict:
    """XLA's memory figures of the compiled step for `batch_size` samples per device."""
    indices = np.arange(batch_size * self.num_devices, dtype=np.uint32)
    stats = self._step(True, 'labels').lower(self._generator_variables, self.labeler.variables,
                                          indices).compile().memory_analysis()
    return {'temp_bytes': stats.temp_size_in_bytes,
            'total_bytes': (stats.temp_size_in_bytes + stats.argument_size_in_bytes
                            + stats.output_size_in_bytes)}


def image_labeler(config, workdir: str, batch_size: int = 0, what: str = '--labeler'
                  ) -> Factory:
  """The run's trained labeler (workdir's train_interpreter stage) over the features of
  images the generator encodes (`Generator.encodes_images`): labels of images uint8
  [N, R, R, 3] are `f.label_inputs(f.sampling.from_images(images, class_ids))`, R the
  generator's resolution. Batches of batch_size (default config.generate.batch_size).
  InputError, starting with `what`, for a generator that cannot encode images, cropped
  rows (config.data.crop_rows) or no trained labeler."""
  g = generators.from_config(config.generator, config.seed)
  if not g.encodes_images:
    raise InputError(f'{what}: a {g.family} generator regenerates samples from latents and '
                     'cannot encode a photograph; segment with a DeepLab run (--run) instead')
  if config.data.crop_rows:
    raise InputError(f'config.data.crop_rows: a {g.family} generator labels whole square '
                     f'images; {what} needs crop_rows empty')
  sampling = g.sampling(config)
  layout = features.layout_for(g, config.data)
  labeler_class = labelers.from_config(config)
  folder = labelers.workdir_folder(config, workdir)
  if not os.path.isfile(os.path.join(folder, labeler_class.meta_file)):
    raise InputError(f'{what}: {folder} holds no trained {config.labeler} labeler (run '
                     'the train_interpreter stage)')
  return Factory(g, sampling, labeler_class.load(folder), layout, config.generate.top_fraction,
                 config.generate.chunk_rows, batch_size or config.generate.batch_size)
