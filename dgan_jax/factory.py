"""The labeled-data factory: sample indices -> images, label maps and uncertainty scores
in one compiled step.

Per sample i: z_i from fold_in(seed, i) -> mapping + truncation -> synthesis (feature
maps) -> every ensemble member's logits for every pixel -> majority vote (ties: smallest
class id) and the per-pixel Jensen-Shannon divergence of the members' probabilities ->
the image's score, the mean of its top `top_fraction` pixel values.

The D-long per-pixel feature vector (5056 values for the car model, 4 GB per 384x512
image in float32) is never built. Member m's first layer is linear and so is bilinear
resizing, so for every map l

    resize(F_l) @ W1[m, rows of l] == resize(F_l @ W1[m, rows of l])

and the factory projects each map at its native resolution, resizes the [h_l, w_l, M*H1]
projections and sums them. Output rows are processed in chunks of `chunk_rows`: a chunk
reads only the native rows its bilinear taps touch, so memory is bounded by the chunk,
not the image.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from dgan_jax import features as features_lib
from dgan_jax import interpreter
from dgan_jax import latents
from dgan_jax import uncertainty
from dgan_jax.generators import stylegan1


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


def resize_columns(x: jax.Array, out_width: int) -> jax.Array:
  """x [R, w, K] -> [R, out_width, K], bilinear with half-pixel centres (PyTorch
  align_corners=False), edges clamped. Integer factors use strided slices, not gathers."""
  width = x.shape[1]
  if width == out_width:
    return x
  if out_width % width == 0:
    # Output column factor*i + j reads columns i and i-1 (phases left of the centre of
    # column i) or i and i+1 (right of it). Repeating each column `factor` times and
    # weighting per output column keeps this one elementwise (fusible) expression.
    factor = out_width // width
    offsets = (np.arange(factor) + 0.5) / factor - 0.5
    centre_w, left_w, right_w = (np.tile(a, width)[None, :, None].astype(np.float32) for a in
                                 (1 - np.abs(offsets), np.maximum(-offsets, 0),
                                  np.maximum(offsets, 0)))
    left = jnp.concatenate([x[:, :1], x[:, :-1]], axis=1)     # edges clamp
    right = jnp.concatenate([x[:, 1:], x[:, -1:]], axis=1)
    repeat = lambda a: jnp.broadcast_to(a[:, :, None], a.shape[:2] + (factor,) + a.shape[2:]
                                        ).reshape(a.shape[0], out_width, a.shape[2])
    return centre_w * repeat(x) + left_w * repeat(left) + right_w * repeat(right)
  if width % out_width == 0:
    factor = width // out_width
    grouped = x.reshape(x.shape[0], out_width, factor, x.shape[2])
    first, frac = divmod((factor - 1) / 2, 1)  # source position factor*i + (factor-1)/2
    first = int(first)
    if frac == 0:
      return grouped[:, :, first]
    return (1 - frac) * grouped[:, :, first] + frac * grouped[:, :, first + 1]
  index0, index1, weight1 = features_lib.bilinear_source(width, out_width)
  weight1 = jnp.asarray(weight1)[None, :, None]
  return (1 - weight1) * jnp.take(x, index0, axis=1) + weight1 * jnp.take(x, index1, axis=1)


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
                      axis=1).transpose(1, 0, 2).reshape(-1, num_members * hidden)
      for plan in plans]                                  # per group [C_group, M * H1]

  def one_chunk(chunk):
    first = params['linear0']['bias'].reshape(1, 1, -1)
    for plan, weight in zip(plans, group_weights):
      rows = jnp.concatenate([
          jax.lax.dynamic_slice_in_dim(feature_maps[i], jnp.asarray(plan.starts)[chunk],
                                       plan.span, axis=0) for i in plan.maps], axis=-1)
      projection = jnp.einsum('hwc,ck->hwk', rows, weight.astype(rows.dtype),
                              preferred_element_type=jnp.float32)
      if plan.rows is not None:
        projection = jnp.einsum('rs,swk->rwk', jnp.asarray(plan.rows)[chunk], projection)
      first = first + resize_columns(projection, width)
    first = first.reshape(chunk_rows * width, num_members, hidden).transpose(1, 0, 2)
    member_logits = interpreter.head(params, batch_stats, first)      # [M, P, C]
    member_labels = jnp.argmax(member_logits, axis=-1)
    label = uncertainty.majority_vote(member_labels, member_logits.shape[-1])
    pixel_js = uncertainty.js_divergence(jax.nn.softmax(member_logits, axis=-1))
    return label.reshape(chunk_rows, width), pixel_js.reshape(chunk_rows, width)

  labels, pixel_js = jax.lax.map(one_chunk, jnp.arange(num_chunks))
  label = labels.reshape(-1, width)[:height]
  pixel_js = pixel_js.reshape(-1, width)[:height]
  score = uncertainty.image_scores(pixel_js[None], top_fraction)[0]
  return label.astype(jnp.int32), pixel_js, score


@dataclasses.dataclass
class Factory:
  """A compiled `step(indices [B]) -> dict` for one generator + interpreter.

  Outputs: image uint8 [B, H', W, 3], label int32 [B, H', W], uncertainty float32 [B]
  (the image score), z float32 [B, 512]. B must be a multiple of the device count;
  the batch is sharded over the local devices.
  """
  generator: stylegan1.StyleGAN1Generator
  interpreter_params: dict
  batch_stats: dict
  layout: features_lib.FeatureLayout
  seed: int
  truncation_psi: float = 0.7
  truncation_cutoff: int = 8
  noise: str = 'const'           # 'const', 'zero' or 'per_sample' (keys from seed, index)
  top_fraction: float = 0.1
  chunk_rows: int = 32
  devices: tuple = ()

  def __post_init__(self):
    g = self.generator
    if self.layout.dim != sum(g.feature_channels):
      raise ValueError(f'interpreter expects {self.layout.dim} feature values per pixel, '
                       f'the generator gives {sum(g.feature_channels)}')
    self.devices = tuple(self.devices) or tuple(jax.local_devices())
    self.mesh = Mesh(np.asarray(self.devices), ('data',))
    self.plans = plan_chunks(self.layout, min(self.chunk_rows, self.layout.output_shape[0]))
    res = g.resolution
    self.image_layout = features_lib.FeatureLayout.create(
        [(res, res)], [3], self.layout.feature_size, self.layout.crop_rows)
    self._noise = None if self.noise == 'per_sample' else g.noise(self.noise, 1)
    self._step = self._build()

  def _per_device(self, gen_params, avg_latent, const_noise, params, batch_stats, indices):
    g = self.generator
    arch = g.arch
    z = latents.sample_z(self.seed, indices, arch.latent_size)
    w = stylegan1.truncate(stylegan1.mapping(gen_params, arch, z), avg_latent,
                           self.truncation_psi, self.truncation_cutoff)
    if self.noise == 'per_sample':
      keys = jax.vmap(lambda i: latents.sample_key(self.seed, latents.NOISE_STREAM, i))(indices)
      noise = stylegan1.noise_from_keys(arch, keys, g.dtype)
    else:
      noise = const_noise
    image, feature_maps = stylegan1.synthesis(gen_params, arch, w.astype(g.dtype), noise)
    feature_maps = features_lib.keep_rows(feature_maps, self.layout)
    image = features_lib.upsample(
        features_lib.keep_rows([image.astype(jnp.float32)], self.image_layout)[0],
        self.image_layout.tables()[0])
    image = jnp.clip(jnp.floor(image * 127.5 + 128.0), 0, 255).astype(jnp.uint8)
    label, _, score = jax.lax.map(
        lambda maps: label_image(maps, params, batch_stats, self.layout, self.plans,
                                 self.top_fraction), feature_maps)
    return {'image': image, 'label': label, 'uncertainty': score, 'z': z}

  def _build(self):
    replicated = P()
    fn = jax.shard_map(self._per_device, mesh=self.mesh,
                       in_specs=(replicated,) * 5 + (P('data'),), out_specs=P('data'),
                       check_vma=False)
    return jax.jit(fn)

  def _arguments(self, indices):
    g = self.generator
    if g.avg_latent is None:
      raise ValueError('the generator has no average W for truncation')
    return (g.params, g.avg_latent, self._noise, self.interpreter_params, self.batch_stats,
            jnp.asarray(indices, jnp.uint32))

  def memory_analysis(self, batch_size: int) -> dict:
    """XLA's memory figures of the compiled step for `batch_size` samples per device."""
    indices = np.arange(batch_size * self.num_devices)
    stats = self._step.lower(*self._arguments(indices)).compile().memory_analysis()
    return {'temp_bytes': stats.temp_size_in_bytes,
            'total_bytes': (stats.temp_size_in_bytes + stats.argument_size_in_bytes
                            + stats.output_size_in_bytes)}

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  def __call__(self, indices) -> dict:
    """indices [B] global sample ids -> numpy outputs (see the class docstring)."""
    indices = np.asarray(indices, np.int64)
    n = len(indices)
    padded = -(-n // self.num_devices) * self.num_devices
    padded_indices = np.concatenate([indices, np.repeat(indices[-1:], padded - n)])
    out = self._step(*self._arguments(padded_indices))
    return {k: np.asarray(v)[:n] for k, v in out.items()}
