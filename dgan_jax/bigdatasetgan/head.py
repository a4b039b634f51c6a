"""BigDatasetGAN's segmentation head: a small class-conditional convolutional network on
a BigGAN's block outputs (pure functions over parameter pytrees, NHWC).

The generator's feature maps fall into G groups by resolution: map l joins the first
group whose size s_g is at least its resolution (BigGAN-512: 8, 16, 32 px -> 32;
64, 64 (attention), 128 -> 128; 256, 512 -> 512). Per group, the maps are resized to
s_g x s_g (bilinear, half-pixel centres as PyTorch's align_corners=False), concatenated
and projected by a bias-free 1x1 convolution to c_g channels (128, 64, 32). Then, for
k = 1 .. G-1, the running result is resized to s_k, concatenated before group k's
projection and passed through a residual mixing block of sum(c_0..c_k) channels:

  mix(x) = x + conv2(relu(ccbn2(conv1(relu(ccbn1(x, e))), e)))

with 3x3 convolutions (bias) and class-conditional batch norm:
ccbn(x, e) = bn(x) * (1 + e @ W_gain + b_gain) + (e @ W_bias + b_bias), e the generator's
shared class embedding [B, shared_dim]. The output layer is batch norm (scale, bias) -
ReLU - 3x3 convolution to `num_outputs` logits at s_{G-1} (the image resolution).

Spectral norm: the conditional-BN linears and the 3x3 convolutions are spectrally
normalised as BigGAN-PyTorch does (one power iteration per call from the stored vector u,
W / sigma with sigma = v^T W u' carrying the gradient, u' and v not): in training the
updated u' is returned in the state; in evaluation it is computed and dropped. Batch norm
as PyTorch: training normalises with the batch mean and biased variance and updates
running statistics (momentum 0.1, unbiased variance); evaluation uses them. Epsilons:
1e-4 in the conditional batch norms, 1e-5 in the output one; 1e-4 in the power
iteration's normalisation.

The 1x1 projection is linear, and so is bilinear resizing, so each map is projected at
its native resolution and the (narrow) projections are resized and summed; this equals
projecting the resized concatenation up to float rounding.

Parameters of one member ('/'-joined; C_g: group g's input channels, C_k = c_0 + .. + c_k,
D: cond_dim, O: num_outputs):

  params/proj{g}/weight                [1, 1, C_g, c_g]
  params/mix{k}/bn{1,2}/{gain,bias}/weight  [D, C_k];  .../bias  [C_k]
  params/mix{k}/conv{1,2}/weight       [3, 3, C_k, C_k];  .../bias  [C_k]
  params/out/bn/{scale,bias}           [C]    (C = C_{G-1})
  params/out/conv/{weight [3, 3, C, O], bias [O]}
  sn/...                               u [out] of every spectrally normalised weight
  batch_stats/mix{k}/bn{1,2}/{mean,var} [C_k];  batch_stats/out/bn/{mean,var} [C]

An ensemble of M heads stores every leaf stacked on a leading member axis [M, ...];
`apply` runs all members on the same features.
"""

import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dgan_jax import features as features_lib
from dgan_jax import uncertainty
from dgan_jax.generators import checkpoint as checkpoint_lib

Params = dict[str, Any]

CCBN_EPS = 1e-4
OUTPUT_BN_EPS = 1e-5
SN_EPS = 1e-4
BN_MOMENTUM = 0.1
FORMAT = 'dgan_jax.bigdatasetgan_head'
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class HeadArch:
  """The head's shape. Defaults are BigDatasetGAN's for BigGAN-512."""
  feature_resolutions: tuple[int, ...]   # r_l of each (square) generator map, in order
  feature_channels: tuple[int, ...]      # C_l of each map
  cond_dim: int                          # width of the class embedding (shared_dim); 0:
                                         # none (unconditional generators)
  group_sizes: tuple[int, ...] = (32, 128, 512)
  group_channels: tuple[int, ...] = (128, 64, 32)
  num_outputs: int = 1                   # 1: one foreground logit (binary cross-entropy);
                                         # C > 1: C class logits (softmax cross-entropy)
  num_members: int = 1

  def __post_init__(self):
    for name in ('feature_resolutions', 'feature_channels', 'group_sizes', 'group_channels'):
      object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
    if len(self.feature_resolutions) != len(self.feature_channels):
      raise ValueError(f'{len(self.feature_resolutions)} feature resolutions but '
                       f'{len(self.feature_channels)} channel counts')
    if not self.group_sizes or len(self.group_sizes) != len(self.group_channels):
      raise ValueError(f'group_sizes {self.group_sizes} and group_channels '
                       f'{self.group_channels} must be non-empty and of equal length')
    if list(self.group_sizes) != sorted(set(self.group_sizes)):
      raise ValueError(f'group_sizes must increase, got {self.group_sizes}')
    largest = max(self.feature_resolutions)
    if self.group_sizes[-1] != largest:
      raise ValueError(f'the last group size {self.group_sizes[-1]} must be the largest '
                       f'feature resolution {largest} (labels are at image resolution)')
    empty = [s for g, s in enumerate(self.group_sizes) if not self.group_maps(g)]
    if empty:
      raise ValueError(f'group sizes {empty} receive no feature map (resolutions '
                       f'{self.feature_resolutions}; a map joins the first group at least '
                       'as large)')
    if self.num_members < 1 or self.num_outputs < 1:
      raise ValueError('num_members and num_outputs must be at least 1')

  @property
  def num_groups(self) -> int:
    return len(self.group_sizes)

  def group_of_map(self, index: int) -> int:
    r = self.feature_resolutions[index]
    return next(g for g, s in enumerate(self.group_sizes) if s >= r)

  def group_maps(self, group: int) -> list[int]:
    """Indices of the feature maps in `group`, in feature order."""
    return [l for l in range(len(self.feature_resolutions)) if self.group_of_map(l) == group]

  def group_in_channels(self, group: int) -> int:
    return sum(self.feature_channels[l] for l in self.group_maps(group))

  def mix_channels(self, k: int) -> int:
    """C_k: channels after concatenating groups 0..k."""
    return sum(self.group_channels[:k + 1])

  @property
  def output_size(self) -> int:
    return self.group_sizes[-1]

  def member_shapes(self) -> dict[str, tuple[int, ...]]:
    """Flat names of one member's params/, sn/ and batch_stats/ leaves -> shapes."""
    shapes = {}
    for g in range(self.num_groups):
      shapes[f'params/proj{g}/weight'] = (1, 1, self.group_in_channels(g),
                                          self.group_channels[g])

    def ccbn(prefix, c):
      for part in ('gain', 'bias'):   # (this order fixes `init`'s random draws)
        if self.cond_dim:
          shapes[f'params/{prefix}/{part}/weight'] = (self.cond_dim, c)
        shapes[f'params/{prefix}/{part}/bias'] = (c,)
        if self.cond_dim:
          shapes[f'sn/{prefix}/{part}'] = (c,)
      shapes[f'batch_stats/{prefix}/mean'] = (c,)
      shapes[f'batch_stats/{prefix}/var'] = (c,)

    def conv(prefix, c_in, c_out):
      shapes[f'params/{prefix}/weight'] = (3, 3, c_in, c_out)
      shapes[f'params/{prefix}/bias'] = (c_out,)
      shapes[f'sn/{prefix}'] = (c_out,)

    for k in range(1, self.num_groups):
      c = self.mix_channels(k)
      ccbn(f'mix{k}/bn1', c)
      conv(f'mix{k}/conv1', c, c)
      ccbn(f'mix{k}/bn2', c)
      conv(f'mix{k}/conv2', c, c)
    c = self.mix_channels(self.num_groups - 1)
    shapes['params/out/bn/scale'] = (c,)
    shapes['params/out/bn/bias'] = (c,)
    shapes['batch_stats/out/bn/mean'] = (c,)
    shapes['batch_stats/out/bn/var'] = (c,)
    conv('out/conv', c, self.num_outputs)
    return shapes

  def param_shapes(self) -> dict[str, tuple[int, ...]]:
    """Flat names -> stacked shapes [M, ...] (the saved format)."""
    return {k: (self.num_members,) + v for k, v in self.member_shapes().items()}

  def to_json(self) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()}


# ----------------------------------------------------------------------------------------
# Building blocks.


def resize_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
  """[B, h, w, C] -> [B, height, width, C], bilinear with half-pixel centres
  (torch.nn.functional.interpolate(mode='bilinear', align_corners=False))."""
  b, h, w, c = x.shape
  if w != width:
    x = features_lib.resize_columns(x.reshape(b * h, w, c), width).reshape(b, h, width, c)
  if h != height:
    x = features_lib.resize_columns(x.reshape(b, h, width * c), height)
    x = x.reshape(b, height, width, c)
  return x


def _normalize(x: jax.Array) -> jax.Array:
  """x / max(|x|, SN_EPS) (torch.nn.functional.normalize with BigGAN's SN_eps)."""
  return x / jnp.maximum(jnp.linalg.norm(x), SN_EPS)


def spectral_normalize(weight: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
  """weight [..., out] (columns: outputs), u [out] -> (weight / sigma, u').

  One power iteration: v = normalize(W u), u' = normalize(W^T v), sigma = v^T W u', with
  W the weight as a [rows, out] matrix and no gradient through u, v, u'."""
  matrix = weight.reshape(-1, weight.shape[-1])
  u = jax.lax.stop_gradient(u)
  v = jax.lax.stop_gradient(_normalize(jax.lax.stop_gradient(matrix) @ u))
  u_new = jax.lax.stop_gradient(_normalize(jax.lax.stop_gradient(matrix).T @ v))
  sigma = v @ (matrix @ u_new)
  return weight / sigma, u_new


def _batch_norm(x: jax.Array, stats: Params, train: bool, eps: float):
  """x [B, H, W, C] -> (normalised x, new running statistics or the old ones)."""
  if train:
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
    n = x.shape[0] * x.shape[1] * x.shape[2]
    new_stats = {'mean': (1 - BN_MOMENTUM) * stats['mean'] + BN_MOMENTUM * mean,
                 'var': (1 - BN_MOMENTUM) * stats['var']
                        + BN_MOMENTUM * var * (n / max(n - 1, 1))}
  else:
    mean, var, new_stats = stats['mean'], stats['var'], stats
  return (x - mean) * jax.lax.rsqrt(var + eps), new_stats


def _sn_conv(p: Params, u: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  weight, u_new = spectral_normalize(p['weight'], u)
  y = jax.lax.conv_general_dilated(x, weight.astype(x.dtype), (1, 1), 'SAME',
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return y + p['bias'], u_new


def _ccbn(p: Params, u: Params, stats: Params, x: jax.Array, cond: jax.Array | None,
          train: bool):
  """Class-conditional batch norm -> (y, new u or None, new stats). Without a class
  (cond None: the head has cond_dim 0) the gain and bias are learned constants."""
  if cond is None:
    normed, new_stats = _batch_norm(x, stats, train, CCBN_EPS)
    return normed * (1 + p['gain']['bias']) + p['bias']['bias'], None, new_stats
  gain_w, u_gain = spectral_normalize(p['gain']['weight'], u['gain'])
  bias_w, u_bias = spectral_normalize(p['bias']['weight'], u['bias'])
  gain = 1 + cond @ gain_w + p['gain']['bias']
  bias = cond @ bias_w + p['bias']['bias']
  normed, new_stats = _batch_norm(x, stats, train, CCBN_EPS)
  return (normed * gain[:, None, None, :] + bias[:, None, None, :],
          {'gain': u_gain, 'bias': u_bias}, new_stats)


def _mix_block(p: Params, u: Params, stats: Params, x: jax.Array, cond: jax.Array | None,
               train: bool):
  h, u_bn1, s_bn1 = _ccbn(p['bn1'], u.get('bn1'), stats['bn1'], x, cond, train)
  h, u_conv1 = _sn_conv(p['conv1'], u['conv1'], jax.nn.relu(h))
  h, u_bn2, s_bn2 = _ccbn(p['bn2'], u.get('bn2'), stats['bn2'], h, cond, train)
  h, u_conv2 = _sn_conv(p['conv2'], u['conv2'], jax.nn.relu(h))
  new_u = {'bn1': u_bn1, 'conv1': u_conv1, 'bn2': u_bn2, 'conv2': u_conv2}
  return (x + h, {k: v for k, v in new_u.items() if v is not None},
          {'bn1': s_bn1, 'bn2': s_bn2})


def project_groups(arch: HeadArch, params: Params,
                   feature_maps: Sequence[jax.Array]) -> list[jax.Array]:
  """Per group g: sum over its maps of resize(F_l @ W_g[rows of l]) -> [B, s_g, s_g, c_g]."""
  out = []
  for g, size in enumerate(arch.group_sizes):
    weight = params[f'proj{g}']['weight'][0, 0]
    total, row = None, 0
    for l in arch.group_maps(g):
      channels = arch.feature_channels[l]
      projected = jnp.einsum('bhwc,ck->bhwk', feature_maps[l],
                             weight[row:row + channels].astype(feature_maps[l].dtype),
                             preferred_element_type=jnp.float32)
      projected = resize_bilinear(projected, size, size)
      total = projected if total is None else total + projected
      row += channels
    out.append(total)
  return out


def member_apply(arch: HeadArch, variables: Params, feature_maps: Sequence[jax.Array],
                 cond: jax.Array, train: bool = False) -> tuple[jax.Array, Params]:
  """One head. variables: {'params', 'sn', 'batch_stats'} of one member;
  feature_maps: list of [B, r_l, r_l, C_l]; cond: class embedding [B, cond_dim], or
  None when arch.cond_dim is 0.

  Returns (logits [B, S, S, num_outputs] float32 with S = the last group size, new
  {'sn', 'batch_stats'}: updated in training, unchanged in evaluation)."""
  params, u_all, stats_all = variables['params'], variables['sn'], variables['batch_stats']
  cond = None if cond is None else cond.astype(jnp.float32)
  groups = project_groups(arch, params, feature_maps)
  x = groups[0]
  new_u, new_stats = {}, {}
  for k in range(1, arch.num_groups):
    size = arch.group_sizes[k]
    x = jnp.concatenate([resize_bilinear(x, size, size), groups[k]], axis=-1)
    x, new_u[f'mix{k}'], new_stats[f'mix{k}'] = _mix_block(
        params[f'mix{k}'], u_all[f'mix{k}'], stats_all[f'mix{k}'], x, cond, train)
  out = params['out']
  normed, out_stats = _batch_norm(x, stats_all['out']['bn'], train, OUTPUT_BN_EPS)
  x = jax.nn.relu(normed * out['bn']['scale'] + out['bn']['bias'])
  logits, u_out = _sn_conv(out['conv'], u_all['out']['conv'], x)
  new_u['out'] = {'conv': u_out}
  new_stats['out'] = {'bn': out_stats}
  if not train:
    new_u = u_all
  return logits, {'sn': new_u, 'batch_stats': new_stats}


def apply(arch: HeadArch, variables: Params, feature_maps: Sequence[jax.Array],
          cond: jax.Array, train: bool = False) -> tuple[jax.Array, Params]:
  """Every member on the same inputs: variables stacked [M, ...] -> (logits
  [M, B, S, S, num_outputs], new stacked {'sn', 'batch_stats'}).

  Members are unrolled, not vmapped: vmapped convolutions with per-member kernels become
  grouped convolutions, whose gradients are several times slower on CPU (so is a scan)."""
  outputs = [member_apply(arch, jax.tree.map(lambda leaf: leaf[m], variables), feature_maps,
                          cond, train) for m in range(arch.num_members)]
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *outputs)


def init(arch: HeadArch, seed: int | Sequence[int]) -> Params:
  """Stacked {'params', 'sn', 'batch_stats'}; member m draws from
  numpy.random.default_rng([*seed, m]) (host-side: no compilation).

  PyTorch's default initialisation: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  (fan_in: inputs times kernel area), batch-norm scales 1 and biases 0, running means 0
  and variances 1, power-iteration vectors N(0, 1)."""
  shapes = arch.member_shapes()
  members = []
  for m in range(arch.num_members):
    rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), m])
    flat = {}
    for name, shape in shapes.items():
      kind, *_, leaf = name.split('/')
      if kind == 'sn':
        value = rng.standard_normal(shape)
      elif kind == 'batch_stats':
        value = np.zeros(shape) if leaf == 'mean' else np.ones(shape)
      elif name.startswith('params/out/bn/'):
        value = np.ones(shape) if leaf == 'scale' else np.zeros(shape)
      elif name.rsplit('/', 1)[0] + '/weight' not in shapes:
        value = np.zeros(shape)   # a bias without inputs (cond_dim 0): PyTorch's bound 0
      else:
        weight_shape = shapes[name.rsplit('/', 1)[0] + '/weight']
        bound = 1 / np.sqrt(np.prod(weight_shape[:-1]))
        value = rng.uniform(-bound, bound, shape)
      flat[name] = value.astype(np.float32)
    members.append(flat)
  stacked = {name: jnp.asarray(np.stack([f[name] for f in members])) for name in shapes}
  return checkpoint_lib.unflatten(stacked)


def binary_predictions(logits: jax.Array) -> jax.Array:
  """[M, B, S, S, 1] logits -> member probabilities of the two classes
  [M, B, S, S, 2] (background 1 - p, foreground p = sigmoid(logit))."""
  p = jax.nn.sigmoid(logits[..., 0].astype(jnp.float32))
  return jnp.stack([1 - p, p], axis=-1)


def label_and_score(logits: jax.Array, top_fraction: float):
  """Member logits [M, B, H, W, O] -> (label [B, H, W] int32: the members' majority vote
  (one output: logit > 0 is foreground; ties: the smallest class), pixel JS divergence of
  the members' class probabilities [B, H, W], image score [B])."""
  if logits.shape[-1] == 1:
    member_labels = (logits[..., 0] > 0).astype(jnp.int32)
    probs = binary_predictions(logits)
  else:
    member_labels = jnp.argmax(logits, axis=-1)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  label = uncertainty.majority_vote(member_labels, probs.shape[-1]).astype(jnp.int32)
  pixel_js = uncertainty.js_divergence(probs)
  return label, pixel_js, uncertainty.image_scores(pixel_js, top_fraction)


def logits_to_grid(logits: jax.Array, layout: features_lib.FeatureLayout) -> jax.Array:
  """Member logits [M, B, S, S, O] at the head's output size -> [M, B, H', W, O] on the
  labelled grid (`features.to_grid`)."""
  m, b = logits.shape[:2]
  grid = features_lib.to_grid(logits.reshape((m * b,) + logits.shape[2:]), layout)
  return grid.reshape((m, b) + grid.shape[1:])


# ----------------------------------------------------------------------------------------
# Saving and loading: head.json + params.npz (flat names of HeadArch.param_shapes).


def save(directory: str, arch: HeadArch, variables: Params, info: dict | None = None) -> None:
  """Writes params.npz then head.json (each under a temporary name first), so a
  directory holding head.json holds a complete head."""
  flat = checkpoint_lib.flatten(jax.device_get(variables))
  checkpoint_lib.check_names_and_shapes(flat, arch.param_shapes(), directory)
  checkpoint_lib.write_arrays_and_meta(
      directory, 'head.json', flat,
      {'format': FORMAT, 'format_version': FORMAT_VERSION, 'arch': arch.to_json(),
       **(info or {})})


def load(directory: str) -> tuple[HeadArch, Params, dict]:
  """-> (arch, stacked variables, head.json contents)."""
  meta, arrays = checkpoint_lib.read_arrays_and_meta(
      directory, 'head.json', f'{directory} is not a saved segmentation head')
  meta_path = os.path.join(directory, 'head.json')
  params_path = os.path.join(directory, 'params.npz')
  try:
    arch = HeadArch(**meta['arch'])
  except (KeyError, TypeError, ValueError) as e:
    raise checkpoint_lib.CheckpointError(f'{meta_path}: not a {FORMAT} file ({e})') from None
  checkpoint_lib.check_names_and_shapes(arrays, arch.param_shapes(), params_path)
  return arch, jax.tree.map(jnp.asarray, checkpoint_lib.unflatten(arrays)), meta
