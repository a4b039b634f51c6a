"""Per-pixel feature vectors from native-resolution feature maps, without upsampling.

DatasetGAN resizes every generator feature map to `feature_size` (H, W) with bilinear
interpolation (PyTorch `align_corners=False`, no antialiasing), concatenates them along
channels, crops rows (the car model keeps rows 64:448 of 512) and labels each pixel from
its column of D values. Bilinear resizing is separable and linear, so the feature vector
of output pixel (y, x) is, for each map of native size (h, w):

    src_y = max((y + crop_start + 0.5) * h / H - 0.5, 0)   (likewise src_x with w / W)
    y0 = floor(src_y), y1 = min(y0 + 1, h - 1), wy = src_y - y0   (likewise x0, x1, wx)
    v = (1 - wy) * ((1 - wx) * F[y0, x0] + wx * F[y0, x1])
        + wy * ((1 - wx) * F[y1, x0] + wx * F[y1, x1])

`FeatureLayout` holds these per-map index/weight tables; `pixel_features` evaluates the
formula for any set of pixels (4 row reads per map), `upsample` builds the full resized
map for one layer when that is wanted. Both agree with `torch.nn.functional.interpolate`
(bilinear, align_corners=False) to float rounding, for upsampling and downsampling alike
(the face model resizes its 1024 px maps to 512).

Only the native rows some output row reads are kept (`FeatureLayout.kept_rows`): for the
car crop that drops a quarter of the largest maps.
"""

import dataclasses
import functools
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from dgan_jax.errors import InputError


def bilinear_source(in_size: int, out_size: int, start: int = 0,
                    stop: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Source indices and weights of output positions start..stop-1 when a length-in_size
  axis is resized to out_size (half-pixel centres, PyTorch align_corners=False).

  Returns (index0 int32 [n], index1 int32 [n], weight1 float32 [n]): output position i
  is (1 - weight1[i]) * input[index0[i]] + weight1[i] * input[index1[i]].
  """
  stop = out_size if stop is None else stop
  positions = np.arange(start, stop, dtype=np.float64)
  source = np.maximum((positions + 0.5) * (in_size / out_size) - 0.5, 0.0)
  index0 = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
  weight1 = source - index0
  index1 = np.where(weight1 > 0, np.minimum(index0 + 1, in_size - 1), index0)  # no 0-weight reads
  return index0.astype(np.int32), index1.astype(np.int32), weight1.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class AxisTable:
  """Bilinear taps along one axis of one map, for every output position."""
  index0: np.ndarray   # int32 [n_out], into the kept native rows/columns
  index1: np.ndarray   # int32 [n_out]
  weight1: np.ndarray  # float32 [n_out]


@dataclasses.dataclass(frozen=True)
class FeatureLayout:
  """Geometry of per-pixel features: native map shapes -> cropped output grid.

  map_shapes: native (h_l, w_l) of each feature map, in concatenation order.
  channels: C_l of each map; feature vector rows follow this order (D = sum C_l).
  feature_size: (H, W) every map is resized to before cropping.
  crop_rows: (start, stop) rows of the resized grid kept; the output is
    [stop - start, W].
  """
  map_shapes: tuple[tuple[int, int], ...]
  channels: tuple[int, ...]
  feature_size: tuple[int, int]
  crop_rows: tuple[int, int]

  @classmethod
  def create(cls, map_shapes: Sequence[Sequence[int]], channels: Sequence[int],
             feature_size: Sequence[int] = (), crop_rows: Sequence[int] = ()) -> 'FeatureLayout':
    """feature_size empty: the largest map's size; crop_rows empty: every row."""
    map_shapes = tuple((int(h), int(w)) for h, w in map_shapes)
    if len(map_shapes) != len(channels):
      raise ValueError(f'{len(map_shapes)} map shapes but {len(channels)} channel counts')
    if not feature_size:
      feature_size = max(map_shapes)
    feature_size = (int(feature_size[0]), int(feature_size[1]))
    crop_rows = (0, feature_size[0]) if not crop_rows else (int(crop_rows[0]), int(crop_rows[1]))
    if not 0 <= crop_rows[0] < crop_rows[1] <= feature_size[0]:
      raise ValueError(f'crop_rows {crop_rows} outside the {feature_size[0]} rows of feature_size')
    return cls(map_shapes, tuple(int(c) for c in channels), feature_size, crop_rows)

  @property
  def output_shape(self) -> tuple[int, int]:
    """(H', W): the cropped grid pixels are labelled on."""
    return self.crop_rows[1] - self.crop_rows[0], self.feature_size[1]

  @property
  def dim(self) -> int:
    """D, the length of a pixel's feature vector."""
    return sum(self.channels)

  @property
  def channel_offsets(self) -> list[int]:
    """First row of each map's channels in the D-long feature vector (and in the
    interpreter's first-layer weight)."""
    return [int(o) for o in np.cumsum((0,) + self.channels[:-1])]

  @property
  def kept_rows(self) -> list[tuple[int, int]]:
    """(first, stop) native rows of each map that some output row reads."""
    kept = []
    for h, _ in self.map_shapes:
      index0, index1, _ = bilinear_source(h, self.feature_size[0], *self.crop_rows)
      kept.append((int(index0.min()), int(index1.max()) + 1))
    return kept

  @property
  def kept_shapes(self) -> list[tuple[int, int, int]]:
    """[rows kept, w, C] of each stored map."""
    return [(stop - first, w, c) for (first, stop), (_, w), c
            in zip(self.kept_rows, self.map_shapes, self.channels)]

  def tables(self) -> list[tuple[AxisTable, AxisTable]]:
    """(rows, columns) tables per map; row indices count from the first kept row."""
    out = []
    for (h, w), (first, _) in zip(self.map_shapes, self.kept_rows):
      r0, r1, rw = bilinear_source(h, self.feature_size[0], *self.crop_rows)
      c0, c1, cw = bilinear_source(w, self.feature_size[1])
      out.append((AxisTable(r0 - first, r1 - first, rw), AxisTable(c0, c1, cw)))
    return out

  def to_json(self) -> dict:
    return {'map_shapes': [list(s) for s in self.map_shapes], 'channels': list(self.channels),
            'feature_size': list(self.feature_size), 'crop_rows': list(self.crop_rows)}

  def bytes_per_image(self, dtype=np.float32) -> int:
    """Host/device bytes one image's kept native maps take."""
    return int(sum(np.prod(s) for s in self.kept_shapes)) * np.dtype(dtype).itemsize


def layout_for(g, data_config) -> FeatureLayout:
  """Where generator g's feature maps (`g.feature_specs`) land: resized to
  config.data.feature_size (default: the largest map's size), rows config.data.crop_rows
  kept."""
  specs = g.feature_specs
  try:
    return FeatureLayout.create([s.shape for s in specs], [s.channels for s in specs],
                                data_config.feature_size, data_config.crop_rows)
  except ValueError as e:
    raise InputError(f'config.data.crop_rows / feature_size: {e}') from None


def keep_rows(feature_maps: Sequence[jax.Array], layout: FeatureLayout) -> list[jax.Array]:
  """feature_maps: list of [B, h_l, w_l, C_l] -> list of [B, kept_l, w_l, C_l]."""
  return [m[:, first:stop] for m, (first, stop) in zip(feature_maps, layout.kept_rows)]


def device_tables(layout: FeatureLayout) -> list[dict[str, jax.Array]]:
  """The layout's tables as arrays for jitted code: per map
  {'row0', 'row1', 'row_w', 'col0', 'col1', 'col_w'}."""
  out = []
  for rows, cols in layout.tables():
    out.append({'row0': jnp.asarray(rows.index0), 'row1': jnp.asarray(rows.index1),
                'row_w': jnp.asarray(rows.weight1), 'col0': jnp.asarray(cols.index0),
                'col1': jnp.asarray(cols.index1), 'col_w': jnp.asarray(cols.weight1)})
  return out


def _on_one_cpu(x: jax.Array) -> bool:
  devices = x.devices()
  return len(devices) == 1 and next(iter(devices)).platform == 'cpu'


def _bits_dtype(dtype) -> np.dtype | None:
  """uint16 for 16-bit floats, whose rows XLA:CPU moves as float32 (see `as_bits`)."""
  dtype = np.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize == 2:
    return np.dtype(np.uint16)
  return None


def _view(x: jax.Array, dtype) -> jax.Array:
  """x's memory read as `dtype` (same item size). One CPU device: no copy."""
  return jax.device_put(np.asarray(x).view(dtype), x.sharding)


def as_bits(store: jax.Array) -> jax.Array:
  """A 16-bit float store on one CPU device as its uint16 bit patterns, in the same
  memory; any other store as it is. `pixel_features(..., store_dtypes=)` reads them.

  XLA:CPU computes 16-bit floats in float32, gathers and dynamic updates included, and
  hoists the conversion out of the loop: reading rows of a bfloat16 store first converts
  the whole store (a float32 copy of every map, twice the stored bytes); reading rows of
  its bits converts only those rows.
  """
  if _bits_dtype(store.dtype) is None or not _on_one_cpu(store):
    return store
  return _view(store, np.uint16)


def pixel_features(stores: Sequence[jax.Array], tables: Sequence[dict[str, jax.Array]],
                   image: jax.Array, y: jax.Array, x: jax.Array,
                   dtype=jnp.float32, store_dtypes: Sequence | None = None) -> jax.Array:
  """Feature vectors of chosen pixels, read from the kept native maps.

  stores: per map [N, kept_l, w_l, C_l] (see `keep_rows`), any float dtype, or its bit
    patterns (`as_bits`) with that float dtype in `store_dtypes`.
  tables: `device_tables(layout)`.
  image, y, x: integer arrays of one shape [...]: image index, output row (0 = first
    cropped row) and column.
  Returns [..., D] in `dtype`: the pixels' rows of the resized, concatenated, cropped maps.
  """
  store_dtypes = store_dtypes or [s.dtype for s in stores]
  parts = []
  for store, store_dtype, t in zip(stores, store_dtypes, tables):
    _, kept, width, channels = store.shape
    store = store.reshape(-1, channels)
    row_base = image * kept
    top = (row_base + t['row0'][y]) * width
    bottom = (row_base + t['row1'][y]) * width
    left, right = t['col0'][x], t['col1'][x]
    wy = t['row_w'][y][..., None]
    wx = t['col_w'][x][..., None]
    corners = jnp.stack([top + left, top + right, bottom + left, bottom + right], axis=-1)
    v = jnp.take(store, corners, axis=0, mode='clip')  # [..., 4, C]
    if v.dtype != store_dtype:
      v = jax.lax.bitcast_convert_type(v, store_dtype)
    v = v.astype(dtype)
    upper = (1 - wx) * v[..., 0, :] + wx * v[..., 1, :]
    lower = (1 - wx) * v[..., 2, :] + wx * v[..., 3, :]
    parts.append((1 - wy) * upper + wy * lower)
  return jnp.concatenate(parts, axis=-1)


def upsample(feature_map: jax.Array, table: tuple[AxisTable, AxisTable] | dict) -> jax.Array:
  """One map's kept rows [B, kept, w, C] -> its resized, cropped map [B, H', W, C]
  (the full tensor `pixel_features` avoids; for folding per-map results)."""
  if isinstance(table, dict):
    r0, r1, rw, c0, c1, cw = (table[k] for k in ('row0', 'row1', 'row_w', 'col0', 'col1', 'col_w'))
  else:
    rows, cols = table
    r0, r1, rw = rows.index0, rows.index1, rows.weight1
    c0, c1, cw = cols.index0, cols.index1, cols.weight1
  x = feature_map
  rw = jnp.asarray(rw, jnp.float32)[None, :, None, None]
  x = (1 - rw) * jnp.take(x, r0, axis=1) + rw * jnp.take(x, r1, axis=1)
  cw = jnp.asarray(cw, jnp.float32)[None, None, :, None]
  return (1 - cw) * jnp.take(x, c0, axis=2) + cw * jnp.take(x, c1, axis=2)


def resize_columns(x: jax.Array, out_width: int, edge_padded: bool = False) -> jax.Array:
  """x [R, w, K] -> [R, out_width, K], bilinear with half-pixel centres (PyTorch
  align_corners=False), edges clamped. Integer factors use strided slices, not gathers.

  edge_padded: x is [R, w + 2, K], its first and last columns copies of its edge columns
  (`jnp.pad(..., mode='edge')` of the unpadded x). Integer factors then read shifted
  slices of it instead of concatenating the clamped neighbours inside the fused
  expression, which XLA:CPU ran 2.3x slower (2026-12-07).
  """
  padded = x if edge_padded else None
  if edge_padded:
    x = x[:, 1:-1]
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
    if padded is not None:
      left, right = padded[:, :-2], padded[:, 2:]
    else:
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
  index0, index1, weight1 = bilinear_source(width, out_width)
  weight1 = jnp.asarray(weight1)[None, :, None]
  return (1 - weight1) * jnp.take(x, index0, axis=1) + weight1 * jnp.take(x, index1, axis=1)


def to_grid(x: jax.Array, layout: FeatureLayout) -> jax.Array:
  """One square map at its own resolution, x [B, S, S, C] (the generator's image, a
  labeler's logits) -> [B, H', W, C] on the layout's labelled grid: resized to
  feature_size (bilinear) and rows cropped as the feature maps are; x itself when that
  grid is S x S."""
  size = x.shape[1]
  grid = FeatureLayout.create([(size, size)], [x.shape[-1]], layout.feature_size,
                              layout.crop_rows)
  if grid.output_shape == (size, size):
    return x
  return upsample(keep_rows([x], grid)[0], grid.tables()[0])


def extract_stores(synthesize: Callable[[int], tuple[jax.Array, Sequence[jax.Array]]],
                   count: int, layout: FeatureLayout, dtype=jnp.float32,
                   progress: bool = True) -> tuple[list[jax.Array], np.ndarray, float]:
  """Runs the generator once per annotated image and keeps its native maps.

  synthesize(i) -> (image [1, R, R, 3] in [-1, 1], feature maps list of [1, h_l, w_l, C_l]).
  Returns (stores: per map [count, kept_l, w_l, C_l] in `dtype`, filled in place so only
  one copy ever exists; images [count, H', W, 3] uint8 on the labelled grid; seconds per
  image, the first (compiling) one excluded when there are several).
  """
  dtype = np.dtype(dtype)
  # 16-bit floats on one CPU device are written as their bits (see `as_bits`): XLA:CPU
  # would convert the whole store to float32 and back for every image's update.
  storage = _bits_dtype(dtype)
  if storage is None or not _on_one_cpu(jnp.zeros((), dtype)):
    storage = dtype
  stores = [jnp.zeros((count,) + shape, storage) for shape in layout.kept_shapes]

  @functools.partial(jax.jit, donate_argnums=(0,))
  def put(stores, index, maps):
    values = [m[0].astype(dtype) for m in keep_rows(maps, layout)]
    if storage != dtype:
      values = [jax.lax.bitcast_convert_type(v, storage) for v in values]
    return [s.at[index].set(v) for s, v in zip(stores, values)]

  images = np.zeros((count,) + layout.output_shape + (3,), np.uint8)
  seconds = []
  for i in tqdm(range(count), desc='features', unit='img', disable=not progress):
    start = time.perf_counter()
    image, maps = synthesize(i)
    stores = put(stores, i, list(maps))
    rgb = to_grid(jnp.asarray(image, jnp.float32), layout)
    images[i] = np.clip(np.floor(np.asarray(rgb[0]) * 127.5 + 128.0), 0, 255).astype(np.uint8)
    jax.block_until_ready(stores)
    seconds.append(time.perf_counter() - start)
  per_image = float(np.mean(seconds[1:] if len(seconds) > 1 else seconds))
  if storage != dtype:
    stores = [_view(s, dtype) for s in stores]
  return stores, images, per_image
