"""What the style-based families (StyleGAN v1, StyleGAN2) share: z -> W mapping, truncation
toward the average W, per-layer noise inputs, and the public map / truncate / synthesize API.

A family subclasses `StyleGenerator` and provides its pure `mapping(params, arch, z, c)`
and `synthesis(params, arch, w, noise)` as static methods; its arch provides resolution,
num_ws, latent_size, dlatent_size and noise_shapes.
"""

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dgan_jax.errors import InputError
from dgan_jax.generators import base
from dgan_jax.generators import checkpoint

Params = dict[str, Any]


def truncate(w: jax.Array, avg_latent: jax.Array, psi: float, cutoff: int) -> jax.Array:
  """w [B, num_ws, D]; avg_latent [D] or [num_ws, D]. Layers < cutoff move toward the average."""
  layer = jnp.arange(w.shape[1])[None, :, None]
  return jnp.where(layer < cutoff, avg_latent + psi * (w - avg_latent), w)


def separable_filter(x: jax.Array, taps: Sequence[float], pad: int) -> jax.Array:
  """The same 1-D `taps` along rows and columns of every channel (a symmetric filter's
  flip does not matter), zero padding `pad` on each side: [B, H, W, C] ->
  [B, H + 2 pad - k + 1, W + 2 pad - k + 1, C]. Two passes of k shifted, weighted adds,
  which XLA fuses. XLA:CPU's depthwise convolution took 12-30x as long (2026-12-07)."""
  x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  for axis in (1, 2):
    n = x.shape[axis] - len(taps) + 1
    x = sum(float(t) * jax.lax.slice_in_dim(x, k, k + n, axis=axis) for k, t in enumerate(taps))
  return x


def noise_from_keys(arch, keys: jax.Array, dtype=jnp.float32) -> list[jax.Array]:
  """One key per sample, keys [B] -> noise list of [B, h, w, 1]; layer j uses fold_in(key, j)."""
  def one(key):
    return [jax.random.normal(jax.random.fold_in(key, j), (h, w, 1), dtype)
            for j, (h, w) in enumerate(arch.noise_shapes)]
  return jax.vmap(one)(keys)


def draw_const_noise(arch, seed: int) -> list[np.ndarray]:
  """Constant noise inputs [1, h, w, 1] from numpy RandomState(seed), for networks that
  store none (DatasetGAN's .pt files, random-weight generators)."""
  rng = np.random.RandomState(seed)
  return [rng.standard_normal((1, h, w, 1)).astype(np.float32) for h, w in arch.noise_shapes]


@functools.lru_cache(maxsize=None)
def jitted(mapping: Callable, synthesis: Callable, arch):
  """Compiled (map, synthesis, synthesis-from-keys) for one family's architecture."""
  map_fn = jax.jit(lambda params, z, c: mapping(params, arch, z, c))

  @functools.partial(jax.jit, static_argnames=('return_features',))
  def synth_fn(params, w, noise, return_features=True):
    image, features = synthesis(params, arch, w, noise)
    return image, (features if return_features else [])

  @functools.partial(jax.jit, static_argnames=('return_features',))
  def synth_keys_fn(params, w, keys, return_features=True):
    image, features = synthesis(params, arch, w, noise_from_keys(arch, keys, w.dtype))
    return image, (features if return_features else [])

  return map_fn, synth_fn, synth_keys_fn


def split_checkpoint(arrays: dict[str, np.ndarray], num_noise: int):
  """A converted checkpoint's flat arrays -> (flat params, constant noise list (noise/0 ..
  noise/{num_noise-1}) or None, average W or None)."""
  params = {k: v for k, v in arrays.items() if k != 'avg_latent' and not k.startswith('noise/')}
  noise_names = [f'noise/{j}' for j in range(num_noise)]
  const_noise = [arrays[n] for n in noise_names] if all(n in arrays for n in noise_names) \
      else None
  return params, const_noise, arrays.get('avg_latent')


def check_extras(arch, avg_latent, const_noise, source: str) -> None:
  """CheckpointError naming `source` when the average W or the constant noise arrays do
  not fit the architecture (at load, not at first use)."""
  d = arch.dlatent_size
  if avg_latent is not None and np.shape(avg_latent) not in ((d,), (arch.num_ws, d)):
    raise checkpoint.CheckpointError(
        f'{source}: average W must be [{d}] or [{arch.num_ws}, {d}], got '
        f'{list(np.shape(avg_latent))}')
  for j, (n, (h, w)) in enumerate(zip(const_noise or (), arch.noise_shapes)):
    if np.shape(n) != (1, h, w, 1):
      raise checkpoint.CheckpointError(f'{source}: noise/{j} must be [1, {h}, {w}, 1], got '
                                       f'{list(np.shape(n))}')


def read_avg_latent(path: str, arch) -> np.ndarray:
  """An average-W .npy file ([D] or [num_ws, D], read as data) -> float32 array;
  InputError naming the file when it is unreadable or of the wrong shape."""
  try:
    avg = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise InputError(f'{path}: not a readable .npy array ({e})') from None
  check_extras(arch, avg, None, path)
  return avg.astype(np.float32)


def _is_key_array(x) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


class StyleGenerator(base.Generator):
  """A style-based network: params (pytree) + architecture; methods are jitted.

    g = dgan_jax.generators.load(path)
    w = g.truncate(g.map(z), psi=0.7, cutoff=8)        # z [B, 512] -> w [B, num_ws, 512]
    image, feature_maps = g.synthesize(w, noise='const')

  `noise` is one of:
    'const'  the constant noise stored in the checkpoint (the default),
    'zero'   no noise,
    a PRNG key (one key: the whole batch; a batch of keys [B]: one per sample, so
             sample i does not depend on the batch it is in),
    a list of num_ws arrays [B, h, w, 1] or [B, 1, h, w] (B may be 1), layer order.
  """

  # The family's architecture record and pure functions: mapping(params, arch, z [B, Z],
  # c [B, C] or None) -> w [B, num_ws, D]; synthesis(params, arch, w, noise list) ->
  # (image, feature maps); param_shapes(arch) -> {flat name: shape}; init_params(arch,
  # key) -> nested params.
  arch_class: type
  mapping: Callable
  synthesis: Callable
  param_shapes: Callable
  init_params: Callable

  def __init__(self, arch, params: Params, avg_latent=None,
               const_noise: Sequence[np.ndarray] | None = None, dtype=jnp.float32):
    self.arch = arch
    self.dtype = jnp.dtype(dtype)
    self.params = jax.tree.map(lambda a: jnp.asarray(a, self.dtype), params)
    self.avg_latent = None if avg_latent is None else jnp.asarray(avg_latent, jnp.float32)
    self.const_noise = None if const_noise is None else [
        jnp.asarray(n, self.dtype) for n in const_noise]
    self._map, self._synthesize, self._synthesize_keys = jitted(
        type(self).mapping, type(self).synthesis, arch)

  @classmethod
  def from_checkpoint(cls, arch_json, arrays, source, dtype) -> 'StyleGenerator':
    arch = checkpoint.build_arch(cls.arch_class, arch_json, source)
    params, const_noise, avg_latent = split_checkpoint(arrays, len(arch.noise_shapes))
    checkpoint.check_names_and_shapes(params, cls.param_shapes(arch), source)
    check_extras(arch, avg_latent, const_noise, source)
    return cls(arch, checkpoint.unflatten(params), avg_latent=avg_latent,
               const_noise=const_noise, dtype=dtype)

  @classmethod
  def random(cls, arch_kwargs, seed, dtype) -> 'StyleGenerator':
    """NVIDIA's initialisation (`init_params`), constant noise from RandomState(seed) and
    the average W of 1024 mapped z."""
    arch = base.build_random_arch(cls.arch_class, arch_kwargs)
    g = cls(arch, cls.init_params(arch, jax.random.key(seed)),
            const_noise=draw_const_noise(arch, seed), dtype=dtype)
    z = np.random.RandomState(seed).standard_normal((1024, arch.latent_size))
    g.avg_latent = jnp.mean(g.map(z)[:, 0], axis=0)
    return g

  @property
  def resolution(self) -> int:
    return self.arch.resolution

  @property
  def num_ws(self) -> int:
    return self.arch.num_ws

  @property
  def latent_size(self) -> int:
    return self.arch.latent_size

  @property
  def feature_channels(self) -> list[int]:
    return [spec.channels for spec in self.feature_specs]

  def files_for_annotators(self) -> dict[str, np.ndarray]:
    if self.avg_latent is None:
      return {}
    return {'avg_latent.npy': np.asarray(self.avg_latent, np.float32)}

  def set_avg_latent(self, path: str) -> None:
    """Replaces the checkpoint's average W by a .npy file ([D] or [num_ws, D])."""
    self.avg_latent = jnp.asarray(read_avg_latent(path, self.arch))

  def sampling(self, config) -> base.StyleSampling:
    sampling = base.StyleSampling.from_config(config, self.arch.latent_size, self.num_ws)
    if self.avg_latent is None and sampling.truncation_psi != 1:
      raise InputError('config.generator.truncation_psi: this checkpoint has no average W '
                       'to truncate toward; convert it with --avg-latent, set '
                       'config.generator.avg_latent, or set truncation_psi=1')
    if sampling.noise == 'const' and self.const_noise is None:
      raise InputError("config.generator.noise: this checkpoint stores no constant noise; "
                       "use 'zero' or 'per_sample'")
    return sampling

  def variables(self, sampling: base.StyleSampling) -> dict:
    avg = self.avg_latent
    if avg is None:   # truncation_psi is 1: truncating toward zeros leaves w as it is
      avg = jnp.zeros((self.arch.dlatent_size,), jnp.float32)
    noise = None if sampling.noise == 'per_sample' else self.noise(sampling.noise, 1)
    return {'params': self.params, 'avg_latent': avg, 'noise': noise}

  def regenerate(self, inputs, sampling: base.StyleSampling):
    """Through the public API: synthesize(truncate(map(z))) (or synthesize(w))."""
    if 'w' in inputs:
      w = inputs['w']
    else:
      avg = self.variables(sampling)['avg_latent']
      w = self.truncate(self.map(inputs['z']), sampling.truncation_psi,
                        sampling.truncation_cutoff, avg_latent=avg)
    noise = sampling.noise
    if noise == 'per_sample':
      noise = sampling.noise_keys(jnp.asarray(inputs['index']))
    return self.synthesize(w, noise=noise)

  def apply(self, variables, inputs, sampling: base.StyleSampling):
    """inputs 'z' [B, latent_size] (mapped and truncated) or 'w' [B, num_ws, D], and
    'index' [B] (per-sample noise) -> (image, feature maps, None)."""
    params = variables['params']
    if 'w' in inputs:
      w = inputs['w']
    else:
      w = truncate(self.mapping(params, self.arch, inputs['z'], None),
                   variables['avg_latent'], sampling.truncation_psi,
                   sampling.truncation_cutoff)
    if sampling.noise == 'per_sample':
      noise = noise_from_keys(self.arch, sampling.noise_keys(inputs['index']), self.dtype)
    else:
      noise = variables['noise']
    image, features = self.synthesis(params, self.arch, w.astype(self.dtype), noise)
    return image, features, None

  def map(self, z: jax.Array, c: jax.Array | None = None) -> jax.Array:
    """z [B, latent_size] (c [B, c_dim] for conditional networks) -> w [B, num_ws, D]
    (float32)."""
    z = jnp.asarray(z, jnp.float32)
    if z.ndim != 2 or z.shape[1] != self.arch.latent_size:
      raise ValueError(f'z must be [B, {self.arch.latent_size}], got {z.shape}')
    mapping_params = jax.tree.map(lambda a: a.astype(jnp.float32), self.params['mapping'])
    return self._map({'mapping': mapping_params}, z,
                     None if c is None else jnp.asarray(c, jnp.float32))

  def truncate(self, w: jax.Array, psi: float = 0.7, cutoff: int = 8,
               avg_latent=None) -> jax.Array:
    """w [B, num_ws, D] -> w moved toward the average W by psi for layers < cutoff."""
    avg = self.avg_latent if avg_latent is None else jnp.asarray(avg_latent, jnp.float32)
    if avg is None:
      raise ValueError('this checkpoint has no average W: pass avg_latent=, or convert with '
                       '--avg-latent avg_latent.npy')
    return truncate(jnp.asarray(w, jnp.float32), avg, psi, cutoff)

  def noise(self, noise, batch: int) -> list[jax.Array]:
    """Resolves a `noise` argument (see the class docstring) to arrays [B|1, h, w, 1]."""
    shapes = self.arch.noise_shapes
    if isinstance(noise, str):
      if noise == 'zero':
        return [jnp.zeros((1, h, w, 1), self.dtype) for h, w in shapes]
      if noise == 'const':
        if self.const_noise is None:
          raise ValueError("this checkpoint stores no constant noise: pass noise='zero', "
                           'a PRNG key or arrays')
        return self.const_noise
      raise ValueError(f"noise must be 'const', 'zero', a PRNG key or arrays, got {noise!r}")
    if isinstance(noise, (list, tuple)):
      if len(noise) != len(shapes):
        raise ValueError(f'expected {len(shapes)} noise arrays, got {len(noise)}')
      resolved = []
      for j, (n, (h, w)) in enumerate(zip(noise, shapes)):
        n = jnp.asarray(n, self.dtype)
        if n.ndim == 4 and n.shape[1:] == (1, h, w):
          n = jnp.transpose(n, (0, 2, 3, 1))
        if n.ndim != 4 or n.shape[1:] != (h, w, 1) or n.shape[0] not in (1, batch):
          raise ValueError(f'noise[{j}] must be [{batch}, {h}, {w}, 1] or [{batch}, 1, {h}, {w}],'
                           f' got {tuple(n.shape)}')
        resolved.append(n)
      return resolved
    raise ValueError(f'unsupported noise argument of type {type(noise).__name__}')

  def synthesize(self, w: jax.Array, noise='const', return_features: bool = True):
    """w [B, num_ws, D] -> (image [B, H, W, 3] float32 about [-1, 1], not clipped;
    feature_maps: list of [B, r, r, C] as `feature_specs`, in the compute dtype)."""
    w = jnp.asarray(w, self.dtype)
    if w.ndim != 3 or w.shape[1:] != (self.num_ws, self.arch.dlatent_size):
      raise ValueError(f'w must be [B, {self.num_ws}, {self.arch.dlatent_size}], got {w.shape}')
    if _is_key_array(noise) or (isinstance(noise, (jax.Array, np.ndarray))
                                and noise.dtype == np.uint32):
      keys = noise
      single = keys.ndim == (0 if _is_key_array(keys) else 1)
      if single:
        keys = jax.random.split(keys, w.shape[0])
      image, features = self._synthesize_keys(self.params, w, keys, return_features)
    else:
      image, features = self._synthesize(self.params, w, self.noise(noise, w.shape[0]),
                                         return_features)
    return image.astype(jnp.float32), features

  def __call__(self, z, psi: float = 0.7, cutoff: int = 8, noise='const', c=None):
    """z [B, latent_size] -> synthesize(truncate(map(z))). psi=1 skips truncation."""
    w = self.map(z, c)
    if psi != 1:
      w = self.truncate(w, psi, cutoff)
    return self.synthesize(w, noise)
