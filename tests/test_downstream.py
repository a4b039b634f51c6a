"""Downstream data, training and the two stages: resizing and augmentation, the shuffled
stream, test folders, resume, data parallelism, and the CLI end to end."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import conftest
from conftest import REPO
from dgan_jax.data import images as image_utils
from dgan_jax.data import tfds_writer
from dgan_jax.downstream import data as data_lib
from dgan_jax.downstream import deeplab
from dgan_jax.downstream import run as run_lib
from dgan_jax.downstream import train as train_lib
from dgan_jax.downstream.metrics import IGNORE_LABEL
from dgan_jax.errors import InputError

TINY = deeplab.DeepLabArch(num_classes=3, stage_sizes=(1, 1, 1), width=8,
                           aspp_rates=(1, 2, 3), aspp_channels=16)


def shapes_image(rng, height, width):
  """A grey image with a bright disc (class 1) and a dark square (class 2), plus noise."""
  image = np.full((height, width, 3), 128.0)
  label = np.zeros((height, width), np.uint8)
  yy, xx = np.mgrid[:height, :width]
  cy, cx = rng.integers(height // 4, 3 * height // 4), rng.integers(width // 4, 3 * width // 4)
  disc = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(3, height // 4) ** 2
  image[disc], label[disc] = 230, 1
  y0, x0, size = rng.integers(0, height - 6), rng.integers(0, width - 6), rng.integers(4, height // 3)
  square = (yy >= y0) & (yy < y0 + size) & (xx >= x0) & (xx < x0 + size)
  image[square], label[square] = 20, 2
  image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
  return image, label


def write_synthetic_dataset(data_dir, count, height=24, width=32, seed=0):
  """What the generate stage writes, for 3 classes."""
  rng = np.random.default_rng(seed)
  os.makedirs(data_dir)
  features = tfds_writer.segmentation_features(height, width, 3, 4)
  path = tfds_writer.shard_path(str(data_dir), 'datasetgan', 'train', 0, 1)
  with tfds_writer.RecordWriter(path, features) as writer:
    for i in range(count):
      image, label = shapes_image(rng, height, width)
      writer.write({'image': image, 'label': label, 'latent': np.zeros(4, np.float32),
                    'uncertainty': np.float32(0), 'index': np.int64(i)})
  tfds_writer.write_metadata(str(data_dir), 'datasetgan', features, {'train': [count]})


def write_folder(folder, count, seed, layout, size=40):
  """layout 'test': img_{i:02d}.png + img_{i:02d}.npy; 'annotated': image_{i}.png +
  mask_{i}.npy (the plain annotation layout)."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  for i in range(count):
    image, label = shapes_image(rng, size, size)
    stem = f'img_{i:02d}' if layout == 'test' else f'image_{i}'
    Image.fromarray(image).save(os.path.join(folder, f'{stem}.png'))
    mask = f'img_{i:02d}.npy' if layout == 'test' else f'mask_{i}.npy'
    np.save(os.path.join(folder, mask), label)


# ----------------------------------------------------------------------------------------
# Resizing, augmentation, order.


@pytest.mark.parametrize('size', [(7, 5), (40, 64), (32, 32)])
def test_label_resizing_is_pil_nearest(size):
  label = np.random.RandomState(0).randint(0, 20, (17, 23)).astype(np.uint8)
  height, width = size
  expected = np.asarray(Image.fromarray(label).resize((width, height), Image.NEAREST))
  np.testing.assert_array_equal(data_lib.resize_label(label, height, width), expected)


def test_augmentation_keeps_image_and_label_aligned():
  rng = np.random.default_rng(0)
  image, label = shapes_image(rng, 40, 40)
  plain = data_lib.Augment(32)
  base_image, base_label = plain(image, label, np.random.default_rng(1))
  np.testing.assert_array_equal(base_image, image_utils.resize_image(image, 32, 32))
  np.testing.assert_array_equal(base_label, data_lib.resize_label(label, 32, 32))

  flips = data_lib.Augment(32, flip=True)
  flipped = 0
  for seed in range(20):
    out_image, out_label = flips(image, label, np.random.default_rng(seed))
    if np.array_equal(out_label, base_label[:, ::-1]):
      np.testing.assert_array_equal(out_image, base_image[:, ::-1])
      flipped += 1
    else:
      np.testing.assert_array_equal(out_label, base_label)
      np.testing.assert_array_equal(out_image, base_image)
  assert 0 < flipped < 20

  # Scale 0.5: the 16 px picture sits somewhere on a padded canvas.
  out_image, out_label = data_lib.Augment(32, scale_range=(0.5, 0.5))(
      image, label, np.random.default_rng(2))
  inside = out_label != IGNORE_LABEL
  rows, cols = np.nonzero(inside)
  y, x = rows.min(), cols.min()
  assert inside.sum() == 16 * 16 and inside[y:y + 16, x:x + 16].all()
  np.testing.assert_array_equal(out_label[y:y + 16, x:x + 16],
                                data_lib.resize_label(label, 16, 16))
  np.testing.assert_array_equal(out_image[y:y + 16, x:x + 16],
                                image_utils.resize_image(image, 16, 16))
  assert (out_image[~inside] == data_lib.PAD_COLOR).all()

  # Scale 2: a 32 px window of the 64 px picture, the same window in both.
  out_image, out_label = data_lib.Augment(32, scale_range=(2.0, 2.0))(
      image, label, np.random.default_rng(3))
  big_image, big_label = image_utils.resize_image(image, 64, 64), data_lib.resize_label(label, 64, 64)
  windows = [(y, x) for y in range(33) for x in range(33)
             if np.array_equal(big_image[y:y + 32, x:x + 32], out_image)]
  assert len(windows) == 1
  y, x = windows[0]
  np.testing.assert_array_equal(big_label[y:y + 32, x:x + 32], out_label)


def test_stream_is_a_sequence_of_permutations():
  stream = data_lib.stream_indices(5, 7, 0, 35)
  for k in range(5):
    assert sorted(stream[7 * k:7 * k + 7].tolist()) == list(range(7))
  assert len({tuple(stream[7 * k:7 * k + 7]) for k in range(5)}) > 1
  np.testing.assert_array_equal(data_lib.stream_indices(5, 7, 9, 12), stream[9:21])
  assert not np.array_equal(data_lib.stream_indices(6, 7, 0, 35), stream)


def test_processes_read_their_rows_of_the_global_batch():
  rng = np.random.default_rng(0)
  pairs = [shapes_image(rng, 20, 20) for _ in range(10)]
  source = data_lib.ArraySource(*zip(*pairs))
  augment = data_lib.Augment(16, flip=True, scale_range=(0.5, 2.0))
  whole = data_lib.Batches(source, 4, seed=1, augment=augment)
  halves = [data_lib.Batches(source, 4, seed=1, augment=augment, process_index=p,
                             process_count=2) for p in (0, 1)]
  for step in (0, 3):
    images, labels = whole.get(step)
    assert images.shape == (4, 16, 16, 3) and labels.shape == (4, 16, 16)
    np.testing.assert_array_equal(images, np.concatenate([h.get(step)[0] for h in halves]))
    np.testing.assert_array_equal(labels, np.concatenate([h.get(step)[1] for h in halves]))
  prefetched = list(whole.iterate(2, 5))
  for step, (images, labels) in zip(range(2, 5), prefetched):
    np.testing.assert_array_equal(images, whole.get(step)[0])


def test_synthetic_source_maps_training_classes_to_test_classes(tmp_path):
  write_synthetic_dataset(tmp_path / 'dataset', 3)
  plain = data_lib.SyntheticSource(str(tmp_path / 'dataset'))
  merged = data_lib.SyntheticSource(str(tmp_path / 'dataset'),
                                    data_lib.class_lookup((0, 1, 1), 3))
  assert len(plain) == 3
  (_, label), = plain.get([1])
  (_, mapped), = merged.get([1])
  assert set(np.unique(label)) == {0, 1, 2}
  np.testing.assert_array_equal(mapped, np.where(label == 2, 1, label))


# ----------------------------------------------------------------------------------------
# Folders.


def test_test_folder_pairs_sorted_names_and_checks_masks(tmp_path):
  folder = tmp_path / 'test'
  os.makedirs(folder)
  rng = np.random.default_rng(0)
  for name in ('b10', 'b9', 'a'):   # string order: a, b10, b9
    image, label = shapes_image(rng, 20, 30)
    Image.fromarray(image).save(folder / f'{name}.jpg')
    np.save(folder / f'{name}_mask.npy', np.stack([label] * 3, -1))  # [h, w, 3]: channel 0
  test = data_lib.read_test_folder(str(folder), 3, 16)
  assert test.names == ['a', 'b10', 'b9']
  assert test.images.shape == (3, 16, 16, 3) and test.labels.shape == (3, 16, 16)
  np.testing.assert_array_equal(
      test.labels[2], data_lib.resize_label(np.load(folder / 'b9_mask.npy')[..., 0], 16, 16))

  mask = np.load(folder / 'a_mask.npy')[..., 0].astype(np.int64)
  mask[0, 0] = IGNORE_LABEL
  np.save(folder / 'a_mask.npy', mask)
  assert data_lib.read_test_folder(str(folder), 3, 16).labels[0, 0, 0] == IGNORE_LABEL
  mask[0, 0] = 3
  np.save(folder / 'a_mask.npy', mask)
  with pytest.raises(InputError, match=r'a_mask.npy: class id 3 outside 0..2'):
    data_lib.read_test_folder(str(folder), 3, 16)
  os.remove(folder / 'b9_mask.npy')
  with pytest.raises(InputError, match='3 images and 2 .npy masks'):
    data_lib.read_test_folder(str(folder), 3, 16)
  with pytest.raises(InputError, match='config.evaluate.test_dir'):
    data_lib.read_test_folder('', 3, 16)


def test_annotated_folder_for_the_few_shot_run(tmp_path):
  write_folder(tmp_path / 'annotated', 3, seed=0, layout='annotated')
  source = data_lib.read_annotated(str(tmp_path / 'annotated'), 2, 3)
  assert len(source) == 2
  image, label = source.get([1])[0]
  assert image.shape == (40, 40, 3) and label.shape == (40, 40)
  os.remove(tmp_path / 'annotated' / 'image_1.png')
  with pytest.raises(InputError, match='image_1.png: missing'):
    data_lib.read_annotated(str(tmp_path / 'annotated'), 2, 3)


# ----------------------------------------------------------------------------------------
# Training.


def _options(**overrides):
  fields = dict(batch_size=4, epochs=2, resolution=32, flip=True, scale_range=(0.75, 1.5),
                steps_per_epoch=2, log_every=1, workers=2)
  fields.update(overrides)
  return train_lib.TrainOptions(**fields)


def _leaves_equal(a, b):
  import jax  # pylint: disable=import-outside-toplevel
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
  rng = np.random.default_rng(0)
  source = data_lib.ArraySource(*zip(*[shapes_image(rng, 24, 24) for _ in range(12)]))
  palette = np.asarray([[255, 255, 255], [200, 0, 0], [0, 0, 200]], np.uint8)
  straight = train_lib.train(TINY, source, _options(), 0, str(tmp_path / 'straight'),
                             palette=palette, progress=False)
  resumed_dir = str(tmp_path / 'resumed')
  assert train_lib.train(TINY, source, _options(), 0, resumed_dir, progress=False,
                         stop_after_epochs=1) is None
  assert not train_lib.is_complete(resumed_dir)
  assert train_lib.epoch_checkpoints(resumed_dir) == [0]
  resumed = train_lib.train(TINY, source, _options(), 0, resumed_dir, progress=False)
  assert train_lib.is_complete(resumed_dir)
  assert train_lib.epoch_checkpoints(resumed_dir) == [0, 1]
  assert [h['epoch'] for h in resumed['history']] == [0, 1]
  for a, b in zip(straight['history'], resumed['history']):
    assert a['loss'] == pytest.approx(b['loss'], rel=1e-6)
  for epoch in (0, 1):
    assert _leaves_equal(train_lib.restore_epoch(str(tmp_path / 'straight'), epoch, TINY),
                         train_lib.restore_epoch(resumed_dir, epoch, TINY))
  first, last = (train_lib.restore_epoch(resumed_dir, e, TINY) for e in (0, 1))
  assert not _leaves_equal(first['params'], last['params'])
  assert not _leaves_equal(first['batch_stats'], last['batch_stats'])
  assert os.path.isfile(tmp_path / 'straight' / 'train_batch.png')
  # Other training options: the checkpoints are not resumed from but removed.
  assert train_lib.train(TINY, source, _options(learning_rate=1e-4), 0, resumed_dir,
                         progress=False, stop_after_epochs=0) is None
  assert train_lib.epoch_checkpoints(resumed_dir) == []
  assert not train_lib.is_complete(resumed_dir)
  with open(os.path.join(resumed_dir, 'run.json')) as f:
    assert json.load(f)['options']['learning_rate'] == 1e-4


_DEVICES_SCRIPT = textwrap.dedent('''
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, {repo!r})
    from dgan_jax import parallel
    from dgan_jax.downstream import deeplab, evaluate, train
    arch = deeplab.DeepLabArch(num_classes=3, stage_sizes=(1, 1, 1), width=8,
                               aspp_rates=(1, 2, 3), aspp_channels=16)
    options = train.TrainOptions(batch_size=4, resolution=32)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, (4, 32, 32)).astype(np.uint8)
    labels[0, :4] = 255
    out = {{}}
    for name, devices in (('one', jax.devices()[:1]), ('four', jax.devices())):
      mesh = parallel.make_mesh(devices)
      sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
      state = jax.device_put(train.init_state(arch, options, 0), sharding)
      step = train.make_train_step(deeplab.DeepLabV3(arch), options, 0)
      by_batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
      state, metrics = step(state, *jax.device_put((images, labels), by_batch))
      predict = evaluate.make_predict(deeplab.DeepLabV3(arch))
      variables = {{'params': state['params'], 'batch_stats': state['batch_stats']}}
      pred, inter, union = evaluate.predict_all(predict, variables, images[:3], labels[:3],
                                                4, mesh)
      # Adam's first moment after one step is 0.1 x the gradient.
      gradients = jax.tree.leaves(state['opt_state'][0].mu)
      out[name] = {{'gradients': [(10 * np.asarray(x).ravel()).tolist() for x in gradients],
                   'batch_stats': [np.asarray(x).ravel().tolist()
                                   for x in jax.tree.leaves(state['batch_stats'])],
                   'loss': float(metrics['loss']), 'pred': pred.tolist(),
                   'inter': inter.tolist(), 'union': union.tolist(),
                   'devices': len(devices)}}
    print(json.dumps(out))
''')


@pytest.mark.slow
def test_four_devices_train_and_predict_like_one():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4')
  result = subprocess.run([sys.executable, '-c', _DEVICES_SCRIPT.format(repo=REPO)], env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  one, four = out['one'], out['four']
  assert (one['devices'], four['devices']) == (1, 4)
  assert one['loss'] == pytest.approx(four['loss'], rel=1e-4)
  # Gradients (all-reduced over the devices) and BatchNorm statistics (over the whole
  # batch, not per device) as on one device.
  scale = max(np.abs(g).max() for g in map(np.asarray, one['gradients']))
  for a, b in zip(one['gradients'], four['gradients']):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * scale)
  for a, b in zip(one['batch_stats'], four['batch_stats']):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert np.mean(np.asarray(one['pred']) == np.asarray(four['pred'])) > 0.99
  assert np.abs(np.asarray(one['union']) - np.asarray(four['union'])).sum() <= 0.01 * np.sum(
      one['union'])


# ----------------------------------------------------------------------------------------
# The stages.


def run_main(*args):
  return conftest.run_main(*args, timeout=900)


def _recompute_fold(record, run, k, workdir, test_dir):
  """Fold k of `run` from its selected epoch's checkpoint: the network run here on the
  test images outside the fold's validation pair, IoU counted with metrics.iou_counts,
  classes summed over images -> the fold's test_miou and class_iou."""
  import importlib  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from dgan_jax.downstream import metrics  # pylint: disable=import-outside-toplevel
  fold = record['runs'][run]['folds'][k]
  config = importlib.import_module('configs.test').get_config()
  arch = run_lib.arch_from_config(config, 3)
  variables = train_lib.restore_epoch(str(workdir / 'downstream' / run), fold['selected_epoch'],
                                      arch)
  test = data_lib.read_test_folder(str(test_dir), 3, config.downstream.resolution)
  keep = [i for i, name in enumerate(test.names) if name not in fold['validation_images']]
  assert len(keep) == 9
  logits = jax.jit(lambda v, x: deeplab.DeepLabV3(arch).apply(
      v, deeplab.normalize(x), train=False))(variables, test.images[keep])
  intersection, union = metrics.iou_counts(np.argmax(np.asarray(logits), -1),
                                           test.labels[keep], 3)
  intersection = np.asarray(intersection).sum(0)
  union = np.asarray(union).sum(0)
  assert fold['test_miou'] == pytest.approx(metrics.mean_iou(intersection, union), abs=1e-3)
  for c, name in enumerate(record['classes']):
    expected = intersection[c] / union[c] if union[c] else None
    assert (fold['class_iou'][name] is None) == (expected is None), name
    if expected is not None:
      assert fold['class_iou'][name] == pytest.approx(expected, abs=1e-3), name


@pytest.mark.slow
def test_train_downstream_and_evaluate_stages(tmp_path):
  workdir = tmp_path / 'work'
  write_synthetic_dataset(workdir / 'dataset', 12)
  write_folder(tmp_path / 'annotated', 4, seed=1, layout='annotated')
  write_folder(tmp_path / 'test', 11, seed=2, layout='test')
  args = ['--config=configs/test.py', f'--workdir={workdir}',
          '--stages=train_downstream,evaluate',
          f'--config.data.annotation_dir={tmp_path / "annotated"}',
          f'--config.evaluate.test_dir={tmp_path / "test"}']
  result = run_main(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'mIoU' in result.stdout   # the per-class table

  record = json.loads((workdir / 'eval.json').read_text())
  assert record['classes'] == ['background', 'part_a', 'part_b']
  assert record['test_images'] == [f'img_{i:02d}' for i in range(11)]
  assert record['protocol']['fold_size'] == 2 and not record['protocol']['stand_in_test_images']
  runs = record['runs']
  assert runs['synthetic']['trained_on'] == 'synthetic dataset: 12 images'
  assert runs['few_shot']['num_train_images'] == 4
  for run in runs.values():
    assert len(run['folds']) == 5 and run['epochs'] == 2
    tests = [f['test_miou'] for f in run['folds']]
    assert run['miou_mean'] == pytest.approx(np.mean(tests))
    assert run['miou_std'] == pytest.approx(np.std(tests))
    for fold in run['folds']:
      scores = fold['validation_miou_per_epoch']
      assert fold['selected_epoch'] == int(np.argmax(scores))
      assert fold['validation_images'] == [f'img_{2 * fold["fold"] + i:02d}' for i in (0, 1)]
      assert set(fold['class_iou']) == set(record['classes'])
    assert set(run['all_images_miou_per_epoch']) == {'0', '1'}
  for name in ('test_set.png', 'synthetic_fold0.png', 'few_shot_fold4.png', 'table.txt'):
    assert os.path.isfile(workdir / 'eval' / name), name
  _recompute_fold(record, 'few_shot', 1, workdir, tmp_path / 'test')
  for run in ('synthetic', 'few_shot'):
    trained = json.loads((workdir / 'downstream' / run / 'train.json').read_text())
    assert trained['steps_per_epoch'] == 2 and len(trained['history']) == 2
  assert not any(name.endswith('.partial') for name in os.listdir(workdir))

  # A rerun finds both stages complete and rewrites nothing.
  mtime = os.path.getmtime(workdir / 'eval.json')
  assert run_main(*args).returncode == 0
  assert os.path.getmtime(workdir / 'eval.json') == mtime


def test_evaluate_without_a_test_folder_is_an_input_error(tmp_path):
  result = run_main('--config=configs/test.py', f'--workdir={tmp_path}', '--stages=evaluate',
                    '--config.evaluate.synthetic_test_images=0')
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith(
      'error: config.evaluate.test_dir: (empty) is not a directory')


def test_stand_in_test_set_is_fresh_samples_labelled_by_brightness(tmp_path):
  import importlib  # pylint: disable=import-outside-toplevel
  config = importlib.import_module('configs.test').get_config()
  folder = run_lib.stand_in_test_dir(config, str(tmp_path), 3)
  test = data_lib.read_test_folder(folder, 3, 32)
  assert len(test.names) == config.evaluate.synthetic_test_images
  # Brightness thirds: every class is there, roughly a third of the pixels each.
  fractions = np.bincount(np.stack([np.load(os.path.join(folder, f'{n}.npy'))
                                    for n in test.names]).ravel(), minlength=3) / (
                                        len(test.names) * 24 * 32)
  np.testing.assert_allclose(fractions, 1 / 3, atol=0.02)
  assert run_lib.stand_in_test_dir(config, str(tmp_path), 3) == folder   # made once


def test_ade_car_12_networks_predict_the_12_test_classes():
  import importlib  # pylint: disable=import-outside-toplevel
  config = importlib.import_module('configs.car12').get_config()
  names, lookup, palette = run_lib.class_setup(config)
  assert len(names) == 12 and names[1] == 'car_body' and palette.shape == (12, 3)
  car20 = importlib.import_module('configs.car20')
  training = np.arange(20, dtype=np.uint8)
  mapped = lookup[training]
  # Every car part without its own test class is car body; wheels and lights keep theirs.
  assert names[mapped[car20.CAR20_CLASSES.index('background')]] == 'background'
  assert names[mapped[car20.CAR20_CLASSES.index('hoods')]] == 'car_body'
  assert names[mapped[car20.CAR20_CLASSES.index('tire')]] == 'wheel'
  assert names[mapped[car20.CAR20_CLASSES.index('windshield')]] == 'wind shield'
  assert lookup[IGNORE_LABEL] == IGNORE_LABEL
  assert run_lib.arch_from_config(config, len(names)).stage_sizes == (3, 4, 23, 3)
  assert config.downstream.resolution == 512 and config.downstream.batch_size == 8
  assert config.evaluate.test_dir.endswith('car_ade_12_class')
