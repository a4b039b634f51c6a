"""BigDatasetGAN without PyTorch: the data layout reader, per-class sampling, resume and
the stages end to end (tests/test_bigdatasetgan_torch.py holds the PyTorch references)."""

import importlib
import json
import os
import shutil

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import bounds
import conftest
from dgan_jax import factory as factory_lib
from dgan_jax import features
from dgan_jax import io
from dgan_jax.bigdatasetgan import head as head_lib
from dgan_jax.bigdatasetgan import layout as layout_lib
from dgan_jax.bigdatasetgan import train as train_lib
from dgan_jax.data import annotated
from dgan_jax.errors import InputError
from dgan_jax.generators import base


# ----------------------------------------------------------------------------------------
# The data layout.


def write_layout(root, subset, samples, dim_z, image_size=32):
  """samples: (folder, stem, mask or None, latent or None) -> files in the layout."""
  for folder, stem, mask, latent in samples:
    where = layout_lib.paths(str(root), subset, folder, stem)
    for path in where.values():
      os.makedirs(os.path.dirname(path), exist_ok=True)
    if mask is not None:
      Image.fromarray(mask).save(where['annotation'])
    if latent is not None:
      np.save(where['latent'], latent)
    Image.fromarray(np.full((image_size, image_size, 3), 100, np.uint8)).save(where['image'])


def test_layout_reader_pairs_masks_latents_and_classes(tmp_path):
  rng = np.random.RandomState(0)
  binary = (rng.uniform(size=(32, 32)) > 0.5).astype(np.uint8)
  colored = np.zeros((64, 64, 3), np.uint8)          # an RGB mask at twice the size
  colored[10:30, 20:50] = (200, 0, 0)
  colored[40:60, 5:15] = (0, 0, 90)
  z1, z2, z3 = (rng.standard_normal(20).astype(np.float32) for _ in range(3))
  write_layout(tmp_path, 'biggan32', [
      ('n02105162', 'n02105162_225_0001', binary * 255, z1[None]),
      ('n02105162', 'n02105162_225_0000', colored, z2),
      ('n02097474', 'biggan512_n02097474_200_0007', binary, z3[None]),
      ('n02097474', 'n02097474_200_0009', None, z3[None]),  # a latent nobody annotated
  ], dim_z=20)
  os.remove(layout_lib.paths(str(tmp_path), 'biggan32', 'n02097474',
                             'biggan512_n02097474_200_0007')['image'])
  data = layout_lib.read(str(tmp_path), 'biggan32', dim_z=20, num_classes=1000)
  # Sorted by class folder, then name; the class id is the second-to-last field.
  assert data.names == ['n02097474/biggan512_n02097474_200_0007',
                        'n02105162/n02105162_225_0000', 'n02105162/n02105162_225_0001']
  np.testing.assert_array_equal(data.class_ids, [200, 225, 225])
  np.testing.assert_array_equal(data.latents, np.stack([z3, z2, z1]))
  masks = data.masks([0, 1, 2], 32)
  assert masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
  np.testing.assert_array_equal(masks[0], binary)
  np.testing.assert_array_equal(masks[2], binary)
  expected = np.zeros((32, 32), np.uint8)             # nearest: every other pixel
  expected[5:15, 10:25] = 1
  expected[20:30, 3:8] = 1                            # dark blue is still nonzero
  np.testing.assert_array_equal(masks[1], expected)
  assert data.image(0) is None and data.image(1).shape == (32, 32, 3)


@pytest.mark.parametrize('stem,latent,message', [
    ('n01440764_1000_0001', np.zeros((1, 20)), r'class id 1000 is outside'),
    ('n01440764_x_0001', np.zeros((1, 20)), r'_<class id>_<number>'),
    ('n01440764_0_0001', np.zeros((2, 20)), r'latent must be \[1, 20\] or \[20\]'),
    ('n01440764_0_0001', np.full((1, 20), np.nan), r'NaN'),
    ('n01440764_0_0001', None, r'its latent .*n01440764_0_0001.npy is missing'),
])
def test_layout_reader_names_the_bad_file(tmp_path, stem, latent, message):
  write_layout(tmp_path, 'biggan32', [('n01440764', stem, np.zeros((32, 32), np.uint8),
                                       latent)], dim_z=20)
  with pytest.raises(InputError, match=message) as error:
    layout_lib.read(str(tmp_path), 'biggan32', dim_z=20, num_classes=1000)
  assert stem in str(error.value)


def test_layout_reader_without_masks_says_where_it_looked(tmp_path):
  with pytest.raises(InputError, match=r'annotations/biggan32: no masks'):
    layout_lib.read(str(tmp_path), 'biggan32', dim_z=20, num_classes=1000)


def test_sample_names_follow_imagenet_wnids():
  assert layout_lib.sample_stem(225, 3, 1000) == 'n02105162_225_0003'   # malinois
  assert layout_lib.sample_stem(0, 0, 1000) == 'n01440764_0_0000'       # tench
  assert layout_lib.class_folder(7, 10) == 'class0007'


# ----------------------------------------------------------------------------------------
# Per-class sampling.


@pytest.fixture(scope='module')
def disagreeing_heads(tiny_biggan, biggan_config):
  """Two random heads with perturbed statistics, so they disagree on some pixels."""
  arch = train_lib.head_arch_for(tiny_biggan, biggan_config.biggan.head, num_members=2)
  variables = head_lib.init(arch, 3)
  key = jax.random.key(4)
  variables['batch_stats'] = jax.tree.map(
      lambda a: a + 0.5 * jax.random.uniform(key, a.shape), variables['batch_stats'])
  return arch, variables


def class_factory(g, arch, variables, class_idx, samples_per_class, seed, z_std=0.9,
                  top_fraction=0.1, batch_size=0):
  """The generate step for per-class samples of g, labelled by the heads."""
  sampling = base.ClassSampling(seed, base.check_class_idx(class_idx, g.num_classes), 1,
                                samples_per_class, z_std, g.dim_z, g.num_classes)
  layout = features.FeatureLayout.create([s.shape for s in g.feature_specs],
                                         [s.channels for s in g.feature_specs])
  return factory_lib.Factory(g, sampling, train_lib.Labeler(arch, variables=variables), layout,
                             top_fraction, batch_size=batch_size), sampling


def head_logits(g, arch, variables, z, class_ids) -> np.ndarray:
  """The heads run directly on the generator API's maps: -> logits [M, B, S, S] float64."""
  _, maps = g.synthesize(z, class_ids)
  logits, _ = jax.jit(lambda v, m, e: head_lib.apply(arch, v, m, e))(
      variables, maps, g.class_embedding(class_ids))
  return np.asarray(logits, np.float64)[..., 0]


def assert_same_labels(ours, reference, logits):
  """Labels of two compiled programs (the heads' vote: logit > 0 per member): equal at every
  pixel where each member's logit is further from 0 than 1e-4 of the logits' range (the
  heads' logits of batch 1 and batch 8 differ by 2.5e-7 of it), and at least 99% of the
  pixels are such (99.9% here)."""
  bounds.assert_equal_where_decided(ours, reference, bounds.binary_scores(logits),
                                    1e-4 * np.ptp(logits), member_axis=0)


def test_per_class_samples_match_the_generator_and_heads(tiny_biggan, disagreeing_heads,
                                                         biggan_config):
  g = tiny_biggan
  arch, variables = disagreeing_heads
  step, sampling = class_factory(g, arch, variables, (225, 200, 7), samples_per_class=3,
                                 seed=5, z_std=0.9, top_fraction=0.25, batch_size=3)
  assert sampling.count('generate', biggan_config) == 9
  indices = np.arange(9)
  out = step(indices)
  np.testing.assert_array_equal(out['class_id'], [225] * 3 + [200] * 3 + [7] * 3)
  # z of sample j of class c: z_std * N(0, I) from (seed, stream, c, j).
  for i, (c, j) in enumerate(zip(out['class_id'], indices % 3)):
    key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(
        jax.random.key(5), base.GENERATE_STREAM), c), j)
    np.testing.assert_allclose(out['z'][i], 0.9 * np.asarray(jax.random.normal(key, (20,))),
                               rtol=1e-6)
  # Image and label against the generator's API and the heads run directly.
  # (Two compiled programs: images within one level, labels where the logits decide them.)
  image, _ = g.synthesize(out['z'], out['class_id'], return_features=False)
  expected_image = np.clip(np.floor(np.asarray(image) * 127.5 + 128), 0, 255)
  bounds.assert_images_within_one_level(out['image'], expected_image)
  logits = head_logits(g, arch, variables, out['z'], out['class_id'])   # [M, B, S, S]
  votes = (logits > 0).sum(axis=0)
  assert_same_labels(out['label'], (votes > 1).astype(int), logits)     # 2 members: tie -> 0
  p = 1 / (1 + np.exp(-logits))
  entropy = lambda q: -(q * np.log(np.maximum(q, 1e-30)) + (1 - q) * np.log(np.maximum(1 - q, 1e-30)))
  js = entropy(p.mean(axis=0)) - entropy(p).mean(axis=0)
  top = np.sort(js.reshape(9, -1), axis=1)[:, ::-1][:, :256]        # a quarter of 32 * 32
  assert out['uncertainty'].min() > 1e-4
  np.testing.assert_allclose(out['uncertainty'], top.mean(axis=1), rtol=1e-3, atol=1e-6)


def test_sample_does_not_depend_on_batching_or_class_list(tiny_biggan, disagreeing_heads):
  """A sample alone, in a batch, or under another class list: its class and z are the same;
  its image (within one level), labels (where decided) and score (1e-5 relative) too: the
  sample sits in another row of the step, or in another compiled step."""
  arch, variables = disagreeing_heads
  step, _ = class_factory(tiny_biggan, arch, variables, (225, 200), samples_per_class=4, seed=0,
                          top_fraction=0.25, batch_size=3)
  together = step(np.arange(8))
  one_by_one = {k: np.concatenate([step([i])[k] for i in range(8)]) for k in together}
  np.testing.assert_array_equal(one_by_one['class_id'], together['class_id'])
  for key in ('z', 'uncertainty'):
    np.testing.assert_allclose(one_by_one[key], together[key], rtol=1e-5, atol=1e-6,
                               err_msg=key)
  bounds.assert_images_within_one_level(one_by_one['image'], together['image'])
  logits = head_logits(tiny_biggan, arch, variables, together['z'], together['class_id'])
  assert_same_labels(one_by_one['label'], together['label'], logits)
  # Sample j of class 200 is the same with another class list and count per class.
  other = class_factory(tiny_biggan, arch, variables, (200,), samples_per_class=2, seed=0,
                        top_fraction=0.25, batch_size=3)[0](np.arange(2))
  bounds.assert_images_within_one_level(other['image'], together['image'][4:6])
  assert_same_labels(other['label'], together['label'][4:6], logits[:, 4:6])


@pytest.mark.parametrize('class_idx,message', [
    ((225, 1000), r'class_idx: class ids \[1000\] are outside'),
    ((-1,), r'class ids \[-1\] are outside'),
    (('1,x',), r'must be integer class ids'),
    ((), r'class_idx is empty'),
    ((3, 3), r'repeats a class'),
])
def test_bad_class_ids_are_named(tiny_biggan, disagreeing_heads, class_idx, message):
  arch, variables = disagreeing_heads
  with pytest.raises(InputError, match=message):
    class_factory(tiny_biggan, arch, variables, class_idx, samples_per_class=2, seed=0)


# ----------------------------------------------------------------------------------------
# Training: resume; the stages end to end.


def synthetic_layout(root, g, sampling, config, count_per_class=3, classes=(225, 200)):
  """A layout of real samples of g whose masks are their brighter pixels."""
  rng = np.random.RandomState(1)
  samples = []
  for c in classes:
    for j in range(count_per_class):
      z = rng.standard_normal((1, g.dim_z)).astype(np.float32)
      image, _ = g.synthesize(z, [c], return_features=False)
      grey = np.asarray(image)[0].mean(axis=-1)
      samples.append((layout_lib.class_folder(c, 1000), layout_lib.sample_stem(c, j, 1000),
                      ((grey > np.median(grey)) * 255).astype(np.uint8), z))
  write_layout(root, 'biggan32', samples, g.dim_z)
  return annotated.read(str(root), g, sampling, config.data, (32, 32))


@pytest.mark.slow
def test_resume_gives_the_uninterrupted_result(tmp_path, tiny_biggan, biggan_config):
  g = tiny_biggan
  sampling = g.sampling(biggan_config)
  data = synthetic_layout(tmp_path / 'data', g, sampling, biggan_config)
  arch = train_lib.head_arch_for(g, biggan_config.biggan.head, num_members=2)
  options = train_lib.TrainOptions(num_steps=6, batch_size=4, checkpoint_every=2, log_every=1)
  straight = train_lib.train(g, sampling, data, arch, options, seed=3, progress=False)
  checkpoints = str(tmp_path / 'checkpoints')
  interrupted = train_lib.train(g, sampling, data, arch, options, seed=3,
                                checkpoint_dir=checkpoints, progress=False, stop_after=3)
  assert int(interrupted['step']) == 3
  resumed = train_lib.train(g, sampling, data, arch, options, seed=3,
                            checkpoint_dir=checkpoints, progress=False)
  assert int(resumed['step']) == 6
  # The history covers the whole run, the interrupted part included.
  np.testing.assert_array_equal(resumed['history']['step'], [1, 2, 3, 4, 5, 6])
  np.testing.assert_allclose(resumed['history']['loss'], straight['history']['loss'],
                             rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               train_lib.variables_of(resumed), train_lib.variables_of(straight))
  # Six annotated samples, batches of four: each epoch is one batch, a new permutation.
  assert sorted(set(train_lib.batch_order(3, 0, 6, 4)[0]) | set(
      train_lib.batch_order(3, 1, 6, 4)[0])) != sorted(train_lib.batch_order(3, 0, 6, 4)[0])
  # Training learns: the loss falls from its first value.
  assert straight['history']['loss'][-1].mean() < straight['history']['loss'][0].mean()


def run_main(*args):
  return conftest.run_main(*args, timeout=900)


@pytest.mark.slow
def test_biggan_stages_end_to_end(biggan_workdir, tiny_biggan, biggan_config):
  # Every stage of configs/test_biggan.py, run once by the session fixture.
  workdir = biggan_workdir
  assert tuple(biggan_config.biggan.class_idx) == (225, 200)
  assert biggan_config.biggan.samples_per_class == 6
  # sample: BigDatasetGAN's layout; the images regenerate from their latents.
  annotate = workdir / 'annotate'
  latent_path = annotate / 'latents' / 'biggan32' / 'n02105162' / 'n02105162_225_0003.npy'
  z = np.load(latent_path)
  assert z.shape == (1, 20)
  saved = np.asarray(Image.open(str(latent_path).replace('latents', 'images').replace(
      '.npy', '.png')))
  image, _ = tiny_biggan.synthesize(z, [225], return_features=False)
  assert np.abs(saved.astype(int) - np.floor(np.asarray(image)[0] * 127.5 + 128)).max() <= 1
  assert (annotate / 'annotations' / 'biggan32' / 'n02097474').is_dir()
  # train_interpreter: the heads, trained on the brightness stand-in masks.
  arch, variables, meta = head_lib.load(str(workdir / 'head'))
  assert arch.num_members == 2 and meta['steps'] == 30
  info = json.loads((workdir / 'head' / 'info.json').read_text())
  assert info['num_annotated'] == 8 and info['classes'] == [200, 225]
  assert all(a > 0.8 for a in info['last_accuracy'])
  for name in ('check.png', 'preview.png', 'history.npz'):
    assert (workdir / 'head' / name).exists()
  assert not (workdir / 'head' / 'checkpoints').exists()
  # generate: 12 samples, the 3 most uncertain dropped, class ids stored with each.
  builder = tfds.builder_from_directory(str(workdir / 'dataset'))
  records = [x for split in ('train', 'dropped')
             for x in builder.as_data_source(split=split)]
  assert len(builder.as_data_source(split='train')) == 9 and len(records) == 12
  by_index = {int(r['index']): r for r in records}
  assert sorted(by_index) == list(range(12))
  for index, record in by_index.items():
    assert int(record['class_id']) == (225, 200)[index // 6]
    assert record['image'].shape == (32, 32, 3) and record['label'].shape == (32, 32)
    assert set(np.unique(record['label'])) <= {0, 1}
  # The stored sample is what the factory gives for its index (in another process: within
  # one level, the labels where decided).
  step, _ = class_factory(tiny_biggan, arch, variables, (225, 200), samples_per_class=6, seed=0,
                          batch_size=4)
  again = step([7])
  bounds.assert_images_within_one_level(by_index[7]['image'], again['image'][0])
  assert_same_labels(by_index[7]['label'], again['label'][0],
                     head_logits(tiny_biggan, arch, variables, again['z'],
                                 again['class_id'])[:, 0])
  np.testing.assert_allclose(by_index[7]['latent'], again['z'][0], rtol=1e-6)
  generation = json.loads((workdir / 'dataset' / 'generation.json').read_text())
  kept = [s for s in generation['samples'] if s['kept']]
  dropped = [s for s in generation['samples'] if not s['kept']]
  assert max(s['uncertainty'] for s in kept) <= min(s['uncertainty'] for s in dropped)
  assert (workdir / 'dataset' / 'preview.png').exists()
  # A rerun skips every stage.
  mtime = os.path.getmtime(workdir / 'dataset' / 'generation.json')
  result = run_main('--config=configs/test_biggan.py', f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.path.getmtime(workdir / 'dataset' / 'generation.json') == mtime


def test_class_id_out_of_range_on_the_command_line(tmp_path):
  result = run_main('--config=configs/test_biggan.py', f'--workdir={tmp_path}',
                    '--config.biggan.class_idx=225,1000', '--stages=sample')
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last == ("error: config.biggan.class_idx: class ids [1000] are outside the "
                  "generator's [0, 1000)")
  assert 'Traceback' not in result.stderr


def test_missing_biggan_checkpoint_says_how_to_get_it(tmp_path):
  result = run_main('--config=configs/bigdatasetgan.py', f'--workdir={tmp_path}')
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  checkpoint = os.path.join(conftest.REPO, 'checkpoints', 'biggan512')   # resolved
  assert last.startswith(f'error: config.generator.checkpoint: {checkpoint} does not exist.')
  assert 'biggan-512.pth' in last and 'tfhub.dev/deepmind/biggan-512' in last
  assert 'python -m convert_weights biggan biggan-512.pth checkpoints/biggan512' in last
  assert 'Traceback' not in result.stderr


def test_bigdatasetgan_config_carries_the_original_settings():
  config = importlib.import_module('configs.bigdatasetgan').get_config()
  assert (config.biggan.train.num_steps, config.biggan.train.batch_size,
          config.biggan.train.learning_rate) == (5000, 4, 1e-3)
  assert config.biggan.z_std == 0.9 and tuple(config.biggan.class_idx) == (225, 200)
  assert tuple(config.biggan.head.group_sizes) == (32, 128, 512)
  assert tuple(config.biggan.head.group_channels) == (128, 64, 32)
  assert config.data.num_classes == 2


# ----------------------------------------------------------------------------------------
# A BigGAN workdir through the downstream stages.


def write_test_layout(root, count_per_class=5, classes=(225, 200), size=32):
  """Real-image stand-ins in BigDatasetGAN's layout: a bright square (the foreground) on a
  dark image, ImageNet file names (n02105162_0.JPEG style: the class is the folder)."""
  rng = np.random.RandomState(7)
  for c in classes:
    folder = layout_lib.class_folder(c, 1000)
    for j in range(count_per_class):
      image = np.full((size, size, 3), 20, np.uint8)
      mask = np.zeros((size, size), np.uint8)
      top, left = rng.randint(0, size // 2, 2)
      image[top:top + 12, left:left + 12] = 230
      mask[top:top + 12, left:left + 12] = 255
      for kind, array, ext in (('images', image, '.JPEG'), ('annotations', mask, '.png')):
        path = root / kind / 'real' / folder / f'{folder}_{j}{ext}'
        os.makedirs(path.parent, exist_ok=True)
        Image.fromarray(array).save(path, format='JPEG' if ext == '.JPEG' else 'PNG',
                                    **({'quality': 100} if ext == '.JPEG' else {}))


@pytest.mark.slow
def test_biggan_workdir_through_downstream_in_both_label_modes(tmp_path, biggan_workdir):
  from dgan_jax.downstream import data as data_lib  # pylint: disable=import-outside-toplevel
  from dgan_jax.downstream import run as run_lib  # pylint: disable=import-outside-toplevel
  # Binary (BigDatasetGAN's benchmark, the config's): every stage, stand-in test images in
  # the layout (the session fixture's run).
  workdir = biggan_workdir
  record = json.loads((workdir / 'eval.json').read_text())
  assert record['classes'] == ['background', 'foreground']
  assert record['protocol']['stand_in_test_images']
  stand_in = workdir / 'test_synthetic'
  assert len(list((stand_in / 'annotations').glob('*/*/*.png'))) == 10
  runs = record['runs']
  assert runs['synthetic']['num_train_images'] == 9      # 12 generated, 3 dropped
  assert runs['few_shot']['num_train_images'] == 8       # 4 annotated per class
  for run in runs.values():
    assert len(run['folds']) == 5 and run['epochs'] == 2
  report = (workdir / 'report.md').read_text()
  for run in ('few-shot', 'synthetic (filtered)'):
    assert f'| {run} |' in report

  # (K + 1)-way: foreground takes its sample's class (class_idx order: 225 -> 1, 200 -> 2),
  # scored on a test folder of real-image layout with known masks; in a copy.
  test_dir = tmp_path / 'test'
  write_test_layout(test_dir)
  shutil.copytree(biggan_workdir, tmp_path / 'work', symlinks=True)
  workdir = tmp_path / 'work'
  io.remove([workdir / 'downstream', workdir / 'eval', workdir / 'eval.json'])
  args = ['--config=configs/test_biggan.py', f'--workdir={workdir}',
          '--stages=train_downstream,evaluate', '--config.downstream.label_mode=class',
          f'--config.evaluate.test_dir={test_dir}']
  result = run_main(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((workdir / 'eval.json').read_text())
  assert record['classes'] == ['background', 'n02105162', 'n02097474']
  assert not record['protocol']['stand_in_test_images']
  assert record['test_images'][0] == 'real/n02097474/n02097474_0'   # sorted: class 200 first
  assert set(record['runs']['synthetic']['class_iou']) == set(record['classes'])

  config = importlib.import_module('configs.test_biggan').get_config()
  with config.unlocked():
    config.downstream.label_mode = 'class'
  mapping = run_lib.label_map(config, str(workdir))
  test = data_lib.read_test_folder(str(test_dir), 3, 32, mapping)
  for name, label in zip(test.names, test.labels):
    folder = name.split('/')[1]
    mask = np.asarray(Image.open(test_dir / 'annotations' / f'{name}.png')) > 0
    expected = mask.astype(np.uint8) * (1 if folder == 'n02105162' else 2)
    np.testing.assert_array_equal(label, expected)
  # The synthetic examples: each foreground pixel carries its sample's class.
  raw = tfds.builder_from_directory(str(workdir / 'dataset')).as_data_source('train')
  source = data_lib.SyntheticSource(str(workdir / 'dataset'), mapping)
  for i in range(len(raw)):
    (_, label), = source.get([i])
    value = {225: 1, 200: 2}[int(raw[i]['class_id'])]
    np.testing.assert_array_equal(label, (raw[i]['label'] != 0).astype(np.uint8) * value)


