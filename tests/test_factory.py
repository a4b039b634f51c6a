"""The generate step against a direct computation; determinism; the TFDS dataset."""

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import bounds
from conftest import REPO
from dgan_jax import factory as factory_lib
from dgan_jax import features as features_lib
from dgan_jax import generators
from dgan_jax import interpreter
from dgan_jax import latents
from dgan_jax import stages
from dgan_jax.data import images as image_utils


def _config(**overrides):
  import importlib  # pylint: disable=import-outside-toplevel
  config = importlib.import_module('configs.test').get_config()
  with config.unlocked():
    for key, value in overrides.items():
      section, field = key.split('.')
      config[section][field] = value
  return config


def _ensemble(layout, num_classes=3, num_members=3, seed=1):
  """A random ensemble whose members disagree (so JS scores are far from zero)."""
  arch = interpreter.InterpreterArch(layout.dim, num_classes, num_members)
  params, stats = interpreter.init(arch, jax.random.key(seed))
  params = jax.tree.map(lambda a: a * 8 if a.ndim == 3 else a, params)
  key = jax.random.key(seed + 1)
  stats = jax.tree.map(lambda a: a + jax.random.uniform(key, a.shape), stats)
  return arch, params, stats


def _labeler(arch, params, stats):
  return interpreter.Labeler(arch, variables={'params': params, 'batch_stats': stats})


def _np_majority_vote(member_logits: np.ndarray) -> np.ndarray:
  """[M, P, C] -> [P]: each member votes for its argmax class; the most voted class wins,
  ties to the smallest id (DatasetGAN's scipy.stats.mode over the members)."""
  num_classes = member_logits.shape[-1]
  member_labels = np.argmax(member_logits, -1)
  votes = np.stack([(member_labels == c).sum(0) for c in range(num_classes)], -1)
  return np.argmax(votes, -1)    # numpy's argmax: the first of equal counts


def _np_entropy(p: np.ndarray) -> np.ndarray:
  """[..., C] probabilities -> [...] -sum p log p (nats), 0 log 0 = 0."""
  return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), -1)


def _np_js_divergence(member_logits: np.ndarray) -> np.ndarray:
  """[M, P, C] -> [P]: the members' probabilities' Jensen-Shannon divergence, the entropy of
  their mean minus the mean of their entropies, in float64."""
  logits = member_logits.astype(np.float64)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return _np_entropy(p.mean(0)) - _np_entropy(p).mean(0)


def _np_image_scores(pixel_js: np.ndarray, top_fraction: float) -> np.ndarray:
  """[B, H, W] -> [B]: the mean of each image's floor(top_fraction * H * W) largest pixel
  values, at least one (DatasetGAN: js.sort()[0][-int(N / 10):].mean())."""
  flat = pixel_js.reshape(len(pixel_js), -1)
  k = max(1, math.floor(top_fraction * flat.shape[1]))
  return np.sort(flat, -1)[:, -k:].mean(-1)


def _direct(g, config, layout, params, stats, z, indices=None):
  """The original's way: upsample every map to full size, concatenate, run each member;
  vote, JS divergence and image score recomputed in numpy from their definitions.
  z [B, 512] (indices [B]: the samples' ids, for 'per_sample' noise) -> image [B, H, W, 3],
  label [B, H', W], score [B], member logits [M, B, H', W, C] float64."""
  w = g.truncate(g.map(z), config.generator.truncation_psi, config.generator.truncation_cutoff)
  noise = config.generator.noise
  if noise == 'per_sample':
    noise = g.sampling(config).noise_keys(jnp.asarray(indices, jnp.uint32))
  image, maps = g.synthesize(w, noise=noise)
  full = jnp.concatenate([features_lib.upsample(m, t) for m, t in
                          zip(features_lib.keep_rows(maps, layout), layout.tables())], -1)
  b, h, w_, d = full.shape
  member_logits = np.asarray(interpreter.logits(params, stats, full.reshape(-1, d)), np.float64)
  label = _np_majority_vote(member_logits)
  js = _np_js_divergence(member_logits).reshape(b, h, w_)
  return (np.asarray(image), label.reshape(b, h, w_),
          _np_image_scores(js, config.generate.top_fraction),
          member_logits.reshape(len(member_logits), b, h, w_, -1))


def _assert_same_labels(ours, reference, member_logits):
  """Label maps of two compiled programs (the members' majority vote) [...]: equal at every
  pixel where each member's top two logits (member_logits [M, ..., C]) differ by more than
  1e-4 of the logits' range, and at least 99% of the pixels are such. The generate step's
  logits and the direct computation's differ by 2.2e-6 of the range, batch 1's and batch
  8's by 2.7e-6 (99.8-99.9% of the pixels decided)."""
  bounds.assert_equal_where_decided(ours, reference, member_logits,
                                    1e-4 * np.ptp(member_logits), member_axis=0)


@pytest.mark.parametrize('feature_size,crop_rows,chunk_rows', [
    ((32, 32), (4, 28), 5),     # crop, chunks not dividing the 24 rows
    ((16, 24), (), 4),          # maps downsampled (32 -> 16 rows) and resized unevenly
])
def test_folded_first_layer_equals_direct_computation(feature_size, crop_rows, chunk_rows):
  config = _config(**{'data.feature_size': feature_size, 'data.crop_rows': crop_rows})
  g = generators.from_config(config.generator, config.seed)
  layout = features_lib.layout_for(g, config.data)
  arch, params, stats = _ensemble(layout)
  factory = factory_lib.Factory(g, g.sampling(config), _labeler(arch, params, stats), layout,
                                chunk_rows=chunk_rows)
  out = factory(np.arange(3))
  # The step and the direct computation are two compiled programs: z to float rounding,
  # images within one level, labels where the logits decide them.
  z = np.asarray(latents.sample_z(config.seed, np.arange(3)))
  np.testing.assert_allclose(out['z'], z, rtol=0, atol=1e-6)
  image, label, scores, member_logits = _direct(g, config, layout, params, stats, out['z'])
  assert out['label'].shape == (3,) + layout.output_shape
  _assert_same_labels(out['label'], label, member_logits)
  assert scores.min() > 1e-2
  np.testing.assert_allclose(out['uncertainty'], scores, rtol=1e-3)
  if feature_size == (32, 32):
    expected_image = image_utils.to_uint8(image)[:, crop_rows[0]:crop_rows[1]]
    bounds.assert_images_within_one_level(out['image'], expected_image)


@pytest.mark.parametrize('in_width,out_width', [(4, 512), (8, 24), (64, 128), (16, 16),
                                               (32, 16), (48, 16), (12, 40), (40, 12)])
def test_resize_columns_matches_torch(in_width, out_width):
  torch = pytest.importorskip('torch')
  x = np.random.RandomState(0).standard_normal((3, in_width, 5)).astype(np.float32)
  expected = torch.nn.functional.interpolate(
      torch.from_numpy(x.transpose(0, 2, 1))[:, :, None], size=(1, out_width),
      mode='bilinear', align_corners=False)[:, :, 0].numpy().transpose(0, 2, 1)
  np.testing.assert_allclose(features_lib.resize_columns(jnp.asarray(x), out_width), expected,
                             atol=1e-5)
  padded = np.pad(x, ((0, 0), (1, 1), (0, 0)), mode='edge')
  np.testing.assert_allclose(
      features_lib.resize_columns(jnp.asarray(padded), out_width, edge_padded=True), expected,
      atol=1e-5)


def test_chunk_plan_rows_match_the_bilinear_tables():
  layout = features_lib.FeatureLayout.create([(4, 4), (64, 64), (64, 64), (128, 128)],
                                             [1, 1, 1, 1], (96, 80), (7, 90))
  plans = interpreter.plan_chunks(layout, 16)
  assert [p.maps for p in plans] == [(0,), (1, 2), (3,)]
  for plan in plans:
    (rows, _), (kept, _, _) = layout.tables()[plan.maps[0]], layout.kept_shapes[plan.maps[0]]
    native = np.random.RandomState(1).standard_normal(kept)
    expected = (1 - rows.weight1) * native[rows.index0] + rows.weight1 * native[rows.index1]
    got = np.concatenate([plan.rows[c] @ native[plan.starts[c]:plan.starts[c] + plan.span]
                          for c in range(len(plan.starts))])[:len(expected)]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert (plan.starts + plan.span <= kept).all()


_DEVICES_SCRIPT = textwrap.dedent('''
    import os, sys
    sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
    import numpy as np, jax
    import test_factory as t
    from dgan_jax import factory as factory_lib, features, generators
    config = t._config(**{{'generator.noise': 'per_sample'}})
    g = generators.from_config(config.generator, config.seed)
    layout = features.layout_for(g, config.data)
    arch, params, stats = t._ensemble(layout)
    devices = jax.local_devices()[:{num_devices}]
    factory = factory_lib.Factory(g, g.sampling(config), t._labeler(arch, params, stats),
                                  layout, chunk_rows=8, devices=devices)
    outs = [factory(np.arange(s, min(s + {batch}, 8))) for s in range(0, 8, {batch})]
    np.savez({path!r}, **{{k: np.concatenate([o[k] for o in outs]) for k in outs[0]}})
''')


def _run_devices(tmp_path, num_devices, batch):
  path = str(tmp_path / f'out_{num_devices}_{batch}.npz')
  script = _DEVICES_SCRIPT.format(repo=REPO, tests=os.path.join(REPO, 'tests'),
                                  num_devices=num_devices, batch=batch, path=path)
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4')
  result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return np.load(path)


@pytest.mark.slow
def test_sample_i_is_the_same_whatever_batch_and_device_count(tmp_path):
  """4 devices in a batch of 8 against 1 device in batches of 3 ('per_sample' noise): z
  bitwise (docs/reliability.md; its noise: test_noise_determinism.py), images within one
  level, labels where the members' logits (computed directly here) decide them, scores
  within 1e-4 relative."""
  four_devices = _run_devices(tmp_path, 4, 8)
  one_device = _run_devices(tmp_path, 1, 3)
  np.testing.assert_array_equal(four_devices['z'], one_device['z'])
  bounds.assert_images_within_one_level(four_devices['image'], one_device['image'])
  config = _config(**{'generator.noise': 'per_sample'})
  g = generators.from_config(config.generator, config.seed)
  layout = features_lib.layout_for(g, config.data)
  _, params, stats = _ensemble(layout)
  member_logits = _direct(g, config, layout, params, stats, one_device['z'], np.arange(8))[3]
  _assert_same_labels(four_devices['label'], one_device['label'], member_logits)
  np.testing.assert_allclose(four_devices['uncertainty'], one_device['uncertainty'], rtol=1e-4)


def _prepare_workdir(workdir, config):
  g = generators.from_config(config.generator, config.seed)
  arch, params, stats = _ensemble(features_lib.layout_for(g, config.data))
  interpreter.save(os.path.join(workdir, 'interpreter'), arch, params, stats)
  return g, params, stats


def test_generate_stage_dataset_reads_back_through_tfds(tmp_path):
  config = _config()
  workdir = str(tmp_path)
  g, params, stats = _prepare_workdir(workdir, config)
  stages.generate(config, workdir)
  dataset_dir = os.path.join(workdir, 'dataset')
  record = json.load(open(os.path.join(dataset_dir, 'generation.json')))
  n = config.generate.num_samples
  assert record['num_samples'] == n and record['num_kept'] == n - int(n * 0.1)
  scores = {s['index']: s['uncertainty'] for s in record['samples']}
  kept = {s['index'] for s in record['samples'] if s['kept']}
  assert max(scores[i] for i in kept) <= record['threshold'] < min(
      scores[i] for i in scores if i not in kept)

  builder = tfds.builder_from_directory(dataset_dir)
  train = builder.as_data_source('train')
  assert len(train) == len(kept)
  assert len(builder.as_data_source('dropped')) == n - len(kept)
  example = train[3]
  assert example['image'].shape == (24, 32, 3) and example['image'].dtype == np.uint8
  assert example['label'].shape == (24, 32) and example['label'].dtype == np.uint8
  index = int(example['index'])
  assert index in kept and sorted(kept)[3] == index
  np.testing.assert_allclose(example['latent'],   # the stage's draw, to float rounding
                             np.asarray(latents.sample_z(config.seed, [index]))[0], atol=1e-6)
  assert example['uncertainty'] == pytest.approx(scores[index], rel=1e-6)
  layout = features_lib.layout_for(g, config.data)
  _, label, direct_scores, member_logits = _direct(g, config, layout, params, stats,
                                                   example['latent'][None])
  _assert_same_labels(example['label'], label[0], member_logits[:, 0])
  assert example['uncertainty'] == pytest.approx(direct_scores[0], rel=1e-3)
  # preview.png: its first tile is sample 0 (image | coloured label, 4x), framed green
  # when kept, red when dropped.
  split = 'train' if 0 in kept else 'dropped'
  first = next(e for e in builder.as_data_source(split) if int(e['index']) == 0)
  preview = np.asarray(Image.open(os.path.join(dataset_dir, 'preview.png')))
  tile = preview[5:5 + 96:4, 5:5 + 256:4]
  np.testing.assert_array_equal(tile[:, :32], first['image'])
  palette = image_utils.palette_array(3, config.data.palette)
  np.testing.assert_array_equal(tile[:, 32:], palette[first['label']])
  assert tuple(preview[2, 2]) == ((40, 180, 40) if 0 in kept else (220, 30, 30))
  assert json.load(open(os.path.join(workdir, 'generate', 'summary.json')))['num_kept'] == 18

  # Resume: a lost shard is regenerated alone; the dataset comes out the same.
  raw = os.path.join(workdir, 'generate', 'raw')
  os.remove(os.path.join(raw, 'shard-00001-n8.scores.npy'))
  shutil.rmtree(dataset_dir)
  stages.generate(config, workdir)
  summary = json.load(open(os.path.join(workdir, 'generate', 'summary.json')))
  assert summary['processes'][0]['generated'] == 8
  again = json.load(open(os.path.join(dataset_dir, 'generation.json')))
  assert [s['index'] for s in again['samples'] if s['kept']] == sorted(kept)
  # Finished: skipped.
  stages.generate(config, workdir)
  assert json.load(open(os.path.join(workdir, 'generate', 'summary.json'))) == summary
  # keep_raw=False: the raw shards go once the dataset is written; the dataset is the same.
  shutil.rmtree(dataset_dir)
  stages.generate(_config(**{'generate.keep_raw': False}), workdir)
  assert not os.path.exists(raw)
  assert json.load(open(os.path.join(dataset_dir, 'generation.json')))['samples'] == \
      again['samples']


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_write_one_dataset(tmp_path):
  config = _config()
  single, double = tmp_path / 'single', tmp_path / 'double'
  for workdir in (single, double):
    _prepare_workdir(str(workdir), config)
  common = [sys.executable, '-m', 'dgan_jax.main', '--config=configs/test.py',
            '--stages=generate']
  result = subprocess.run(common + [f'--workdir={single}'], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  address = f'localhost:{_free_port()}'
  processes = [subprocess.Popen(
      common + [f'--workdir={double}', '--config.distributed.num_processes=2',
                f'--config.distributed.process_id={i}',
                f'--config.distributed.coordinator_address={address}'],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in processes]
  for p, (_, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  one = json.load(open(single / 'dataset' / 'generation.json'))
  two = json.load(open(double / 'dataset' / 'generation.json'))
  timing = two['timing']['processes']
  assert [t['process_index'] for t in timing] == [0, 1]
  assert [t['generated'] for t in timing] == [12, 8]  # shards 0, 2 and shard 1
  assert [s['index'] for s in one['samples']] == [s['index'] for s in two['samples']]
  np.testing.assert_allclose([s['uncertainty'] for s in one['samples']],
                             [s['uncertainty'] for s in two['samples']], rtol=1e-5)
  a = tfds.builder_from_directory(str(single / 'dataset')).as_data_source('train')
  b = tfds.builder_from_directory(str(double / 'dataset')).as_data_source('train')
  assert len(a) == len(b)
  # z bitwise whatever the host count; images within one level and labels where decided,
  # as for two compiled programs.
  g = generators.from_config(config.generator, config.seed)
  layout = features_lib.layout_for(g, config.data)
  _, params, stats = _ensemble(layout)
  latent = np.stack([a[i]['latent'] for i in range(len(a))])
  member_logits = _direct(g, config, layout, params, stats, latent)[3]
  for i in range(len(a)):
    assert a[i]['index'] == b[i]['index']
    np.testing.assert_array_equal(a[i]['latent'], b[i]['latent'])
    bounds.assert_images_within_one_level(a[i]['image'], b[i]['image'])
    _assert_same_labels(a[i]['label'], b[i]['label'], member_logits[:, i])


def test_the_determinism_guarantee_across_batch_sizes():
  """docs/reliability.md: sample i's z is bitwise the same whatever the batch size; its
  label map the same wherever the members' logits decide it (XLA may reassociate sums over
  the batch), its image within one level of 255 and its score within 1e-5 relative. Batch
  sizes 1, 2, 3 and 8 over samples 0..7."""
  config = _config()
  g = generators.from_config(config.generator, config.seed)
  layout = features_lib.layout_for(g, config.data)
  arch, params, stats = _ensemble(layout)
  outs = {}
  for batch in (1, 2, 3, 8):
    factory = factory_lib.Factory(g, g.sampling(config), _labeler(arch, params, stats),
                                  layout, chunk_rows=8, batch_size=batch)
    parts = [factory(np.arange(s, min(s + batch, 8))) for s in range(0, 8, batch)]
    outs[batch] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  member_logits = _direct(g, config, layout, params, stats, outs[8]['z'])[3]
  for batch in (1, 2, 3):
    np.testing.assert_array_equal(outs[batch]['z'], outs[8]['z'])
    _assert_same_labels(outs[batch]['label'], outs[8]['label'], member_logits)
    bounds.assert_images_within_one_level(outs[batch]['image'], outs[8]['image'])
    np.testing.assert_allclose(outs[batch]['uncertainty'], outs[8]['uncertainty'], rtol=1e-5)


def test_stylegan_z_derivation_is_pinned():
  """z of sample i is N(0, I) from fold_in(fold_in(key(seed), 0), i), as the README states:
  literal values, so that a change of the derivation (which would change every dataset)
  fails here. Sample 2**31 is the first stand-in test image."""
  z = np.asarray(latents.sample_z(0, np.array([0, 7, 2 ** 31], np.uint32), 512))
  np.testing.assert_allclose(z[:, :3], [[-0.57478017, 0.79983664, -0.25960687],
                                        [-1.10011, 1.1785, 1.7662371],
                                        [0.5095698, 0.5378018, -0.29484382]], atol=1e-6)
  z = np.asarray(latents.sample_z(3, np.array([1], np.uint32), 512))
  np.testing.assert_allclose(z[0, :3], [-0.30188408, -0.0071482, -1.1109128], atol=1e-6)


def test_ties_at_the_threshold_keep_the_smaller_index():
  """README: the most uncertain fraction is dropped, ties going to the smaller index."""
  from dgan_jax import generate   # pylint: disable=import-outside-toplevel
  indices = np.array([5, 3, 9, 1])
  kept, threshold = generate.select(indices, np.array([0.2, 0.5, 0.5, 0.1]), 0.25)
  np.testing.assert_array_equal(kept, [True, True, False, True])
  assert threshold == 0.5
  kept, _ = generate.select(indices, np.full(4, 0.3), 0.5)   # all tied: 1 and 3 stay
  np.testing.assert_array_equal(kept, [False, True, False, True])
