"""The Flax BigGAN reproduces the BigGAN-PyTorch generator (golden outputs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import as_golden_grid, golden_path, relative_error
from convert_weights import biggan as convert_biggan
from dgan_jax.generators import biggan
from dgan_jax.generators import biggan_deep
from dgan_jax.generators import checkpoint

GOLDEN = 'biggan_r128_seed0.npz'
SEED = 0
# Max |ours - reference| / (reference max - min): 10x the README's figures (Correctness,
# the BigGAN table's biggan_r128_seed0 row: image 6.1e-07, worst map 4.6e-07; measured
# 6.5e-07 and 6.7e-07 on this CPU). Batch-norm epsilons 1e-5 instead of 1e-4 (or the
# reverse for the output layer) move the image by 3e-5 .. 8e-5 of its range.
PARITY_BOUNDS = {'image': 6.1e-6, 'features': 4.6e-6}
# The class embedding is a row of the shared table: measured exactly equal.
EMBEDDING_BOUND = 1e-6


def rebuild_biggan_state_dict(golden, seed: int) -> dict[str, np.ndarray]:
  """The reference network's weights, drawn as ../shared/golden/README.md prescribes."""
  rng = np.random.RandomState(seed)
  state = {}
  for entry in golden['keys']:
    name, dims = str(entry).rsplit(':', 1)
    shape = tuple(int(d) for d in dims.split('x')) if dims else ()
    if name.endswith('stored_var'):
      value = 0.5 + rng.uniform(0, 1, shape)
    elif name.endswith('stored_mean'):
      value = rng.normal(0, 0.1, shape)
    elif name.endswith('u0'):
      value = rng.normal(0, 1, shape)
    elif name.endswith('sv0'):
      value = np.ones(shape)
    elif name.endswith('bias'):
      value = rng.normal(0, 0.05, shape)
    elif name.endswith('gamma'):
      value = rng.normal(0, 0.5, shape)
    else:
      value = rng.normal(0, 0.1, shape)
    state[name] = np.asarray(value, np.float32)
  return state


def golden_meta(golden) -> dict:
  import ast  # pylint: disable=import-outside-toplevel
  return ast.literal_eval(str(golden['meta']))


@pytest.fixture(scope='module')
def golden():
  return np.load(golden_path(GOLDEN))


@pytest.fixture(scope='module')
def converted(golden):
  return convert_biggan.from_biggan_state_dict(rebuild_biggan_state_dict(golden, SEED))


def make_generator(converted, dtype=jnp.float32):
  arch, flat = converted
  return biggan.BigGANGenerator(arch, checkpoint.unflatten(flat), dtype=dtype)


def test_architecture_inferred_from_shapes(golden, converted):
  arch, _ = converted
  meta = golden_meta(golden)
  assert arch.resolution == meta['resolution']
  assert arch.ch == meta['G_ch']
  assert arch.dim_z == meta['dim_z'] == golden['z'].shape[1]
  assert arch.shared_dim == meta['shared_dim']
  assert arch.num_classes == meta['n_classes']
  assert arch.hier is meta['hier']
  assert arch.attention_resolutions == tuple(int(r) for r in meta['G_attn'].split('_'))
  assert arch.z_chunk_size == meta['dim_z'] // (arch.num_blocks + 1)
  assert len(arch.feature_channels) == meta['n_features']


def test_matches_reference_generator(golden, converted):
  """README, Correctness: the BigGAN table's golden-file row."""
  g = make_generator(converted)
  embedding = g.class_embedding(golden['y'])
  assert relative_error(embedding, golden['class_embedding']) < EMBEDDING_BOUND
  image, features = g.synthesize(golden['z'], golden['y'])
  assert image.shape == (2, 128, 128, 3) and image.dtype == jnp.float32
  image_error = relative_error(np.asarray(image).transpose(0, 3, 1, 2), golden['image'])
  assert image_error < PARITY_BOUNDS['image']
  assert len(features) == golden_meta(golden)['n_features']
  for i, feature in enumerate(features):
    assert tuple(golden[f'feature{i}_shape']) == (
        feature.shape[0], feature.shape[3], feature.shape[1], feature.shape[2]), i
    assert feature.shape[3] == g.feature_channels[i]
    assert feature.shape[1] == g.feature_resolutions[i]
    assert relative_error(as_golden_grid(feature),
                          golden[f'feature{i}']) < PARITY_BOUNDS['features'], i


def test_class_vectors_and_batch_independence(golden, converted):
  g = make_generator(converted)
  z, ids = golden['z'], golden['y']
  from_ids, _ = g.synthesize(z, ids, return_features=False)
  one_hot = np.eye(g.num_classes, dtype=np.float32)[ids]
  from_vectors, _ = g.synthesize(z, one_hot, return_features=False)
  np.testing.assert_allclose(from_vectors, from_ids, atol=1e-6)
  # Stored batch statistics: a sample does not depend on the rest of its batch.
  alone, _ = g.synthesize(z[1:], ids[1:], return_features=False)
  np.testing.assert_allclose(alone, from_ids[1:], atol=1e-5)
  # A soft class vector conditions on the mixed embedding.
  soft = 0.5 * (np.eye(g.num_classes)[[ids[0]]] + np.eye(g.num_classes)[[ids[1]]])
  mixed = 0.5 * (golden['class_embedding'][0] + golden['class_embedding'][1])
  np.testing.assert_allclose(g.class_embedding(soft)[0], mixed, atol=1e-6)
  between, _ = g.synthesize(z[:1], soft, return_features=False)
  assert np.abs(np.asarray(between) - np.asarray(from_ids[:1])).max() > 1e-3


def test_bad_inputs_are_named(golden, converted):
  g = make_generator(converted)
  z = golden['z']
  with pytest.raises(ValueError, match=r'class ids must be in \[0, 1000\), got \[1000\]'):
    g.synthesize(z, np.array([3, 1000]))
  with pytest.raises(ValueError, match=r'class ids must be in \[0, 1000\), got \[-1\]'):
    g.synthesize(z, [-1, 3])
  with pytest.raises(ValueError, match=r'y must be int class ids \[B\] or class vectors'):
    g.synthesize(z, np.ones((2, 10)))
  with pytest.raises(ValueError, match='3 classes for a batch of 2'):
    g.synthesize(z, [1, 2, 3])
  with pytest.raises(ValueError, match=r'z must be \[B, 120\]'):
    g.synthesize(z[:, :100], golden['y'])


def test_bfloat16_close_to_float32(golden, converted):
  image32, _ = make_generator(converted).synthesize(golden['z'], golden['y'])
  image16, features16 = make_generator(converted, jnp.bfloat16).synthesize(
      golden['z'], golden['y'])
  assert features16[0].dtype == jnp.bfloat16
  assert image16.dtype == jnp.float32
  # bfloat16 keeps 8 significant bits; measured 1.4% of the range.
  assert relative_error(image16, image32) < 0.02


@pytest.mark.parametrize('module,arch', [
    (biggan, biggan.BigGANArch(resolution=32, ch=2, dim_z=20, shared_dim=8, num_classes=5,
                               attention_resolutions=(16,))),
    (biggan_deep, biggan_deep.BigGANDeepArch(
        ch=4, z_dim=8, num_classes=5,
        layers=((True, 16, 8), (True, 8, 4), (True, 4, 2), (True, 2, 1)),
        attention_position=1, n_stats=3)),
])
def test_random_init_builds_a_working_generator(module, arch):
  params = module.init_params(arch, jax.random.key(0))
  checkpoint.check_names_and_shapes(checkpoint.flatten(params), module.param_shapes(arch),
                                    'init_params')
  cls = biggan.BigGANGenerator if module is biggan else biggan_deep.BigGANDeepGenerator
  g = cls(arch, params)
  z = np.random.RandomState(0).standard_normal((2, g.dim_z))
  image, features = g.synthesize(z, [0, 4])
  assert image.shape == (2, arch.resolution, arch.resolution, 3)
  assert np.all(np.isfinite(image)) and np.abs(np.asarray(image)).max() <= 1
  assert [f.shape[1:] for f in features] == [
      (r, r, c) for r, c in zip(arch.feature_resolutions, arch.feature_channels)]
  other, _ = g.synthesize(z, [1, 4])
  assert np.abs(np.asarray(other[0]) - np.asarray(image[0])).max() > 1e-4
  np.testing.assert_allclose(other[1], image[1], atol=1e-5)
