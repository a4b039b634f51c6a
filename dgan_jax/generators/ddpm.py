"""A DDPM (openai guided-diffusion's UNet and Gaussian diffusion) as a labelled-data
generator, with features as ddpm-segmentation ("Label-Efficient Semantic Segmentation
with Diffusion Models") takes them.

Features of an image x_0 in [-1, 1]: for each step t of `steps` (50, 150, 250), x_t =
q_sample(x_0, t, noise) with one noise tensor shared by every image and step (their
`share_noise`: N(0, I) from fold_in(key(seed), FEATURE_NOISE_STREAM)), the UNet runs at
timestep t, and the outputs of the decoder blocks `blocks` (5, 6, 7, 8, 12) are the
feature maps `t{t}.out{b}`, in that order (steps outer). Bilinear resizing to the image
(their `collect_features`) is the pipeline's FeatureLayout (config.data.feature_size =
the image size): 8448 channels for the 256 px LSUN / FFHQ models.

Features come from a noised copy of any image, so annotated photographs are encoded as
they are (`encodes_images`, as VQGAN): no latents, no inversion. Samples (the sample and
generate stages: DatasetDDPM) run the reverse process, ancestral DDPM or DDIM over the
(respaced) steps, as one lax.scan inside the compiled step; sample i's x_T and every
step's noise come from fold_in(fold_in(key(seed), stream), index), so sample i is the
same whatever the batch. The sample (clipped to [-1, 1]) is labelled from its features.

Parameters: guided-diffusion's state-dict names with '/' (dgan_jax/generators/ddpm_unet.py).
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dgan_jax import latents
from dgan_jax.errors import InputError
from dgan_jax.generators import base
from dgan_jax.generators import checkpoint
from dgan_jax.generators import ddpm_unet
from dgan_jax.generators import diffusion

Params = dict[str, Any]

# ddpm-segmentation's experiments/*/ddpm.json
DEFAULT_STEPS = (50, 150, 250)
DEFAULT_BLOCKS = (5, 6, 7, 8, 12)

# Streams (latents.py: 0, 1; interpreter.py: 2, 3; base.py: 10, 11, 14; bigdatasetgan: 12,
# 13). The sample and generate stages share one stream, so generated sample i below
# sample.num_samples is annotated sample i, as for StyleGAN; stand-in test images another.
SAMPLE_STREAM = 30
TEST_STREAM = 32
FEATURE_NOISE_STREAM = 33
STREAMS = {'annotate': SAMPLE_STREAM, 'generate': SAMPLE_STREAM, 'test': TEST_STREAM}
_UNET_FIELDS = tuple(f.name for f in dataclasses.fields(ddpm_unet.UNetArch))
_DIFFUSION_FIELDS = tuple(f.name for f in dataclasses.fields(diffusion.DiffusionArch))


@dataclasses.dataclass(frozen=True)
class DDPMArch:
  """The UNet's and the diffusion's settings (guided-diffusion's MODEL_FLAGS, one flat
  record: generator.json's arch). Defaults: ddpm-segmentation's 256 px models
  (lsun_bedroom.pt, ffhq.pt, lsun_cat.pt, lsun_horse.pt)."""
  image_size: int = 256
  model_channels: int = 256
  num_res_blocks: int = 2
  channel_mult: tuple[float, ...] = (1, 1, 2, 2, 4, 4)
  attention_resolutions: tuple[int, ...] = (32, 16, 8)
  num_heads: int = 4
  num_head_channels: int = 64
  num_heads_upsample: int = -1
  use_scale_shift_norm: bool = True
  resblock_updown: bool = True
  use_new_attention_order: bool = False
  learn_sigma: bool = True
  num_classes: int = 0
  in_channels: int = 3
  conv_resample: bool = True
  diffusion_steps: int = 1000
  noise_schedule: str = 'linear'
  predict_xstart: bool = False
  rescale_timesteps: bool = False
  sigma_small: bool = False

  def __post_init__(self):
    for name in ('channel_mult', 'attention_resolutions'):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    if self.in_channels != 3:
      raise ValueError(f'in_channels must be 3 (RGB images), got {self.in_channels}')
    self.unet   # pylint: disable=pointless-statement  (checks the fields)
    self.diffusion

  @property
  def unet(self) -> ddpm_unet.UNetArch:
    return ddpm_unet.UNetArch(**{k: getattr(self, k) for k in _UNET_FIELDS})

  @property
  def diffusion(self) -> diffusion.DiffusionArch:
    return diffusion.DiffusionArch(**{k: getattr(self, k) for k in _DIFFUSION_FIELDS})

  @property
  def resolution(self) -> int:
    return self.image_size


def param_shapes(arch: DDPMArch) -> dict[str, tuple[int, ...]]:
  return ddpm_unet.param_shapes(arch.unet)


def _block_dtype(name: str, dtype) -> Any:
  """The dtype a parameter is kept in: the input, middle and output blocks' convolutions
  and attention projections in the compute dtype; norms, embeddings, the embedding
  projections and the `out` head in float32 (guided-diffusion's use_fp16 split)."""
  in_torso = name.split('/')[0] in ('input_blocks', 'middle_block', 'output_blocks')
  kept = any(part in name for part in ('in_layers/0/', 'out_layers/0/', '/norm/',
                                       'emb_layers/'))
  return dtype if in_torso and not kept else jnp.float32


def check_selection(arch: DDPMArch, steps, blocks, field: str = 'config.ddpm') -> tuple:
  """(steps, blocks) -> tuples of ints; InputError naming `field` when a step is outside
  [0, diffusion_steps) or a block outside the UNet's output blocks."""
  num_blocks = len(arch.unet.blocks()['output_blocks'])
  out = []
  for name, values, limit in (('steps', steps, arch.diffusion_steps),
                              ('blocks', blocks, num_blocks)):
    values = tuple(values) if isinstance(values, (tuple, list)) else (values,)
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                         for v in values):
      raise InputError(f'{field}.{name} must be a non-empty list of integers, got '
                       f'{list(values)}')
    bad = [int(v) for v in values if not 0 <= v < limit]
    if bad:
      raise InputError(f'{field}.{name}: {bad} outside [0, {limit})' +
                       (' (the UNet\'s output blocks)' if name == 'blocks' else
                        ' (the diffusion steps)'))
    if len(set(values)) != len(values):
      raise InputError(f'{field}.{name} repeats a value: {list(values)}')
    out.append(tuple(int(v) for v in values))
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class DDPMSampling(base.Sampling):
  """config.ddpm: the reverse process that draws samples (sampler 'ddpm' (ancestral) or
  'ddim' with eta, over timestep_respacing's steps, x_0 predictions clipped to [-1, 1]
  with clip_denoised) and the features' steps and blocks. Counts: config.sample.num_samples,
  config.generate.num_samples, config.evaluate.synthetic_test_images.

  Inputs: 'index' [B] uint32, from which x_T and every step's noise derive; 'z' [B, 1]
  float32, the sample's number (a DDPM has no compact latent: the stored z only names
  the sample); annotated images: 'image' [B, R, R, 3] in [-1, 1]."""
  seed: int
  resolution: int
  sampler: str
  timestep_respacing: str
  eta: float
  clip_denoised: bool
  steps: tuple[int, ...]
  blocks: tuple[int, ...]

  @classmethod
  def from_config(cls, config, arch: DDPMArch) -> 'DDPMSampling':
    d = config.ddpm   # sampler among the choices, eta >= 0: config.validate
    steps, blocks = check_selection(arch, d.steps, d.blocks)
    try:
      diffusion.Diffusion(arch.diffusion, arch.learn_sigma, d.timestep_respacing)
    except ValueError as e:
      raise InputError(f'config.ddpm.timestep_respacing {d.timestep_respacing!r}: {e}') from None
    return cls(config.seed, arch.image_size, d.sampler, d.timestep_respacing, float(d.eta),
               bool(d.clip_denoised), steps, blocks)

  def count(self, purpose: str, config) -> int:
    return {'annotate': config.sample.num_samples, 'generate': config.generate.num_samples,
            'test': config.evaluate.synthetic_test_images}[purpose]

  def draw(self, purpose: str, indices: jax.Array) -> base.Inputs:
    numbers = jnp.asarray(indices).astype(jnp.uint32)
    index = numbers + jnp.uint32(2 ** 31 if purpose == 'test' else 0)
    return {'index': index, 'z': numbers.astype(jnp.float32)[:, None]}

  def from_annotations(self, latents_, latent_kind, ids, class_ids) -> base.Inputs:
    raise InputError('a DDPM encodes annotated images; it has no latents to regenerate '
                     'them from')

  def from_images(self, images: np.ndarray, class_ids: np.ndarray | None) -> base.Inputs:
    """Annotated images uint8 [N, R, R, 3] -> {'image' in [-1, 1] (their 2 x / 255 - 1),
    'z' zeros [N, 1]}."""
    del class_ids
    return {'image': np.asarray(images, np.float32) / 127.5 - 1.0,
            'z': np.zeros((len(images), 1), np.float32)}

  def record(self) -> dict:
    return {'sampler': self.sampler, 'timestep_respacing': self.timestep_respacing,
            'eta': self.eta, 'clip_denoised': self.clip_denoised, 'steps': list(self.steps),
            'blocks': list(self.blocks)}

  def feature_noise(self) -> jax.Array:
    return feature_noise(self.seed, self.resolution)


def feature_noise(seed: int, resolution: int) -> jax.Array:
  """The features' shared noise [1, R, R, 3] ~ N(0, I) from fold_in(key(seed),
  FEATURE_NOISE_STREAM)."""
  key = jax.random.fold_in(jax.random.key(seed), FEATURE_NOISE_STREAM)
  return jax.random.normal(key, (1, resolution, resolution, 3))


class DDPMGenerator(base.Generator):
  """guided-diffusion's UNetModel and GaussianDiffusion.

    g = dgan_jax.generators.load('checkpoints/ddpm_bedroom256')
    maps = g.features(images)                 # [B, R, R, 3] in [-1, 1] -> feature_specs' maps
    out, named = g.unet(x_t, timesteps)       # eps (and variance values); 'in{i}', 'out{i}'
    images = g.sample(np.arange(4), seed=0, timestep_respacing='100')   # [B, R, R, 3]

  The feature selection (steps, blocks) is ddpm-segmentation's until `select_features`
  (which `sampling(config)` calls with config.ddpm's) changes it.
  """

  family = 'ddpm'

  def __init__(self, arch: DDPMArch, params: Params, dtype=jnp.float32):
    self.arch = arch
    self.dtype = jnp.dtype(dtype)
    flat = checkpoint.flatten(params)
    self.params = checkpoint.unflatten(
        {k: jnp.asarray(v, _block_dtype(k, self.dtype)) for k, v in flat.items()})
    num_blocks = len(arch.unet.blocks()['output_blocks'])
    blocks = (DEFAULT_BLOCKS if max(DEFAULT_BLOCKS) < num_blocks
              else tuple(range(num_blocks)))
    steps = tuple(s for s in DEFAULT_STEPS if s < arch.diffusion_steps) or (0,)
    self.steps, self.blocks = steps, blocks
    self._compiled, self._processes = {}, {}

  @classmethod
  def from_checkpoint(cls, arch_json, arrays, source, dtype):
    arch = checkpoint.build_arch(DDPMArch, arch_json, source)
    checkpoint.check_names_and_shapes(arrays, param_shapes(arch), source)
    return cls(arch, checkpoint.unflatten(arrays), dtype=dtype)

  @classmethod
  def random(cls, arch_kwargs, seed, dtype):
    arch = base.build_random_arch(DDPMArch, arch_kwargs)
    flat = ddpm_unet.random_params(arch.unet, jax.random.key(seed))
    return cls(arch, checkpoint.unflatten(flat), dtype=dtype)

  @property
  def resolution(self) -> int:
    return self.arch.image_size

  @property
  def latent_size(self) -> int:
    return 1

  @property
  def encodes_images(self) -> bool:
    return True

  def select_features(self, steps, blocks) -> None:
    """The steps and decoder blocks `feature_specs` and `apply` use; InputError naming
    config.ddpm's fields when out of range."""
    self.steps, self.blocks = check_selection(self.arch, steps, blocks)

  @property
  def feature_specs(self) -> tuple[base.FeatureSpec, ...]:
    shapes = self.arch.unet.block_shapes('output_blocks')
    return tuple(base.FeatureSpec(f't{t}.out{b}', shapes[b][0], shapes[b][0], shapes[b][1])
                 for t in self.steps for b in self.blocks)

  def sampling(self, config) -> DDPMSampling:
    if self.arch.num_classes:
      raise InputError('this DDPM is class-conditional (class_cond): the pipeline draws '
                       'unconditional samples only; use the library API (g.unet(x, t, y), '
                       'g.sample(..., class_ids=...))')
    s = DDPMSampling.from_config(config, self.arch)
    self.select_features(s.steps, s.blocks)
    return s

  def variables(self, sampling: DDPMSampling) -> Any:
    return {'params': self.params, 'feature_noise': sampling.feature_noise()}

  def apply(self, variables, inputs, sampling: DDPMSampling):
    """'image' [B, R, R, 3] (annotated images) or 'index' [B] (a sample drawn by the
    reverse process, clipped to [-1, 1]) -> (image float32, the features
    (`feature_specs`, for sampling.steps and blocks), None)."""
    params = variables['params']
    if 'image' in inputs:
      x0 = jnp.asarray(inputs['image'], jnp.float32)
    else:
      x0 = jnp.clip(self._sample(params, inputs['index'], sampling.seed, sampling.sampler,
                                 sampling.timestep_respacing, sampling.eta,
                                 sampling.clip_denoised), -1, 1)
    maps = self._features(params, x0, variables['feature_noise'], sampling.steps,
                          sampling.blocks)
    return x0, maps, None

  # The pure pieces.

  def _unet(self, params, x, timesteps, class_ids=None):
    return ddpm_unet.apply(params, self.arch.unet, x, timesteps, class_ids, self.dtype)

  def diffusion(self, timestep_respacing: str = '') -> diffusion.Diffusion:
    """The process over `timestep_respacing`'s steps ('' = all diffusion_steps)."""
    if timestep_respacing not in self._processes:
      self._processes[timestep_respacing] = diffusion.Diffusion(
          self.arch.diffusion, self.arch.learn_sigma, timestep_respacing)
    return self._processes[timestep_respacing]

  def _features(self, params, x0, noise, steps, blocks) -> list[jax.Array]:
    """x0 [B, R, R, 3] -> the maps t{t}.out{b}, t in steps, b in blocks: one UNet pass on
    the B * len(steps) noised images."""
    process = self.diffusion('')
    batch = x0.shape[0]
    t = jnp.repeat(jnp.asarray(steps, jnp.int32), batch)
    x0s = jnp.tile(x0, (len(steps), 1, 1, 1))
    x_t = process.q_sample(x0s, t, jnp.broadcast_to(noise, x0s.shape).astype(jnp.float32))
    _, named = self._unet(params, x_t, process.model_timesteps(t))
    maps = []
    for k in range(len(steps)):
      maps += [named[f'out{b}'][k * batch:(k + 1) * batch] for b in blocks]
    return maps

  def _sample(self, params, index, seed, sampler, respacing, eta, clip_denoised,
              class_ids=None):
    """index [B] uint32 -> x_0 [B, R, R, 3] float32: x_T = N(0, I) from fold_in(key_i, 0),
    step k's noise from fold_in(key_i, k + 1), key_i = fold_in(fold_in(key(seed),
    SAMPLE_STREAM), index[i]) (test indices carry their 2**31 offset)."""
    r = self.resolution
    shape = (r, r, 3)
    keys = jax.vmap(lambda i: latents.sample_key(seed, SAMPLE_STREAM, i))(
        jnp.asarray(index, jnp.uint32))
    x_t = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shape))(keys)
    step_noise = lambda step: jax.vmap(
        lambda k: jax.random.normal(jax.random.fold_in(k, step + 1), shape))(keys)
    model = lambda x, t: self._unet(params, x, t, class_ids)[0]
    return self.diffusion(respacing).sample(model, x_t, step_noise, sampler, clip_denoised,
                                            eta)

  # The library API (compiled).

  def unet(self, x, timesteps, class_ids=None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """x [B, R, R, 3], timesteps [B] (the model's scale), class ids [B] for class_cond
    models -> (output [B, R, R, 3 or 6] float32, every block's output 'in{i}', 'out{i}')."""
    return self._jitted('_unet')(self.params, jnp.asarray(x, jnp.float32),
                                 jnp.asarray(timesteps, jnp.float32),
                                 None if class_ids is None else jnp.asarray(class_ids))

  def features(self, images, steps=None, blocks=None, noise=None, seed: int = 0
               ) -> list[jax.Array]:
    """images [B, R, R, 3] in [-1, 1] -> the maps of `steps` x `blocks` (default: the
    current selection), [B, r, r, C] each; noise [1 or B, R, R, 3] (default: the shared
    noise of `seed`)."""
    steps, blocks = check_selection(self.arch, steps or self.steps, blocks or self.blocks,
                                    'features')
    noise = feature_noise(seed, self.resolution) if noise is None else jnp.asarray(noise)
    return self._jitted('_features', 3, 4)(self.params, jnp.asarray(images, jnp.float32),
                                          noise, steps, blocks)

  def sample(self, indices, seed: int = 0, sampler: str = 'ddpm',
             timestep_respacing: str = '', eta: float = 0.0, clip_denoised: bool = True,
             class_ids=None) -> jax.Array:
    """Sample numbers [B] -> x_0 [B, R, R, 3] float32 (not clipped), as the pipeline's
    sample and generate stages draw them for the same seed and settings."""
    return self._jitted('_sample', 3, 4, 5, 6)(
        self.params, jnp.asarray(indices, jnp.uint32), seed, sampler, timestep_respacing,
        eta, clip_denoised, None if class_ids is None else jnp.asarray(class_ids))

  def _jitted(self, method: str, *static_argnums):
    if (method, static_argnums) not in self._compiled:
      self._compiled[method, static_argnums] = jax.jit(getattr(self, method),
                                                       static_argnums=static_argnums)
    return self._compiled[method, static_argnums]


Generator = DDPMGenerator
