"""The report stage on a hand-built workdir."""

import json
import os
import re

import numpy as np
import pytest

from dgan_jax import config as config_lib
from dgan_jax import report as report_lib
from dgan_jax.data import images as image_utils
from dgan_jax.data import tfds_writer
from dgan_jax.errors import InputError

CLASSES = ('background', 'body', 'wheel')


def _config():
  config = config_lib.base()
  config.data.name = 'toycars'
  config.data.num_classes = 3
  config.data.class_names = CLASSES
  config.data.palette = (255, 255, 255, 200, 0, 0, 0, 0, 200)
  config.data.num_annotated = 2
  return config


def _run(trained_on, count, mean, std, zero, class_iou):
  return {'trained_on': trained_on, 'num_train_images': count, 'miou_mean': mean,
          'miou_std': std, 'miou_absent_as_zero_mean': zero,
          'class_iou': {name: None if v is None else {'mean': v, 'std': 0.01, 'folds': 5}
                        for name, v in zip(CLASSES, class_iou)}}


def _write_dataset(data_dir, uncertainties, kept):
  """A synthetic TFDS dataset of 4x4 samples; sample i has index i and label value i % 3."""
  features = tfds_writer.segmentation_features(4, 4, 3, 2)
  os.makedirs(data_dir)
  lengths = {}
  for split, keep in (('train', True), ('dropped', False)):
    with tfds_writer.RecordWriter(tfds_writer.shard_path(data_dir, 'synthetic', split, 0, 1),
                                  features) as writer:
      for i, u in enumerate(uncertainties):
        if kept[i] == keep:
          writer.write({'image': np.full((4, 4, 3), 10 * i, np.uint8),
                        'label': np.full((4, 4), i % 3, np.uint8),
                        'latent': np.zeros(2, np.float32), 'uncertainty': np.float32(u),
                        'index': np.int64(i)})
    lengths[split] = [writer.count]
  tfds_writer.write_metadata(data_dir, 'synthetic', features, lengths)
  with open(os.path.join(data_dir, 'generation.json'), 'w') as f:
    json.dump({'num_samples': len(kept), 'num_kept': int(sum(kept)), 'threshold': 0.3,
               'samples': [{'index': i, 'uncertainty': u, 'kept': k}
                           for i, (u, k) in enumerate(zip(uncertainties, kept))]}, f)


@pytest.fixture(name='workdir')
def _workdir(tmp_path):
  runs = {  # Deliberately not in display order.
      'supervised': _run('4000 rendered pairs', 4000, 0.9, 0.01, 0.9, (0.95, 0.9, 0.85)),
      'few_shot': _run('2 annotated images', 2, 0.3123, 0.0456, 0.25, (0.9, 0.2, None)),
      'synthetic': _run('synthetic dataset: 3 images', 3, 0.412, 0.021, 0.4, (0.92, 0.5, 0.333)),
  }
  record = {'classes': list(CLASSES), 'runs': runs,
            'protocol': {'num_test_images': 20, 'num_folds': 5, 'stand_in_test_images': False,
                         'description': 'test images cut into 5 folds',
                         'miou': 'per-class IoU summed over images'}}
  (tmp_path / 'eval.json').write_text(json.dumps(record))
  tile = np.zeros((8, 8, 3), np.uint8)
  os.makedirs(tmp_path / 'eval')
  for name in ('test_set', 'few_shot_fold0', 'synthetic_fold0', 'supervised_fold0'):
    image_utils.save_png(str(tmp_path / 'eval' / f'{name}.png'), tile)
  os.makedirs(tmp_path / 'annotate')
  for i in range(2):
    image_utils.save_png(str(tmp_path / 'annotate' / f'image_{i}.png'), tile + i)
    np.save(tmp_path / 'annotate' / f'mask_{i}.npy', np.full((4, 4), i + 1, np.int64))
  os.makedirs(tmp_path / 'toy')
  (tmp_path / 'toy' / 'colour_baseline.json').write_text(json.dumps(
      {'miou': 0.1875, 'class_iou': {'background': 0.5, 'body': 0.0625, 'wheel': None},
       'description': 'nearest palette colour per pixel'}))
  _write_dataset(str(tmp_path / 'dataset'), [0.1, 0.9, 0.2, 0.5, 0.3, 0.7],
                 [True, False, True, False, True, False])
  return tmp_path


def _row(text, first_cell):
  line = next(l for l in text.splitlines() if l.startswith(f'| {first_cell} |'))
  return [c.strip() for c in line.strip('|').split(' | ')]


def test_report_tables_images_and_skip(workdir):
  report_lib.report(_config(), str(workdir))
  md = (workdir / 'report.md').read_text()
  html = (workdir / 'report.html').read_text()

  assert md.startswith('# DatasetGAN report: toycars')
  assert '6 synthetic samples were generated; the uncertainty filter kept 3 and dropped 3' in md
  assert 'scored on 20 test images' in md
  assert '41.2% mIoU against 31.2%' in md and '(+10.0 points)' in md
  assert 'annotator model' not in md  # base() has no toy section
  # mIoU table: mean ± std in %, absent-as-zero, runs in display order, baseline last.
  assert _row(md, 'few-shot') == ['few-shot', '2 annotated images', '2', '31.2 ± 4.6', '25.0']
  assert _row(md, 'synthetic (filtered)')[2:] == ['3', '41.2 ± 2.1', '40.0']
  assert _row(md, 'fully supervised')[3] == '90.0 ± 1.0'
  assert _row(md, 'per-pixel colour classifier')[3] == '18.8'
  order = [md.index(f'| {label} |') for label in
           ('few-shot', 'synthetic (filtered)', 'fully supervised', 'per-pixel colour classifier')]
  assert order == sorted(order)
  # Per-class table: one column per run in the same order, then the baseline.
  assert _row(md, 'class') == ['class', 'few-shot', 'synthetic (filtered)', 'fully supervised',
                               'per-pixel colour classifier']
  assert _row(md, 'body') == ['body', '20.0', '50.0', '90.0', '6.2']
  assert _row(md, 'wheel') == ['wheel', '-', '33.3', '85.0', '-']
  assert 'test images cut into 5 folds' in md and 'per-class IoU summed over images' in md

  # The 3 dropped samples (indices 1, 3, 5), most uncertain first.
  assert '0.9 (sample 1), 0.7 (sample 5), 0.5 (sample 3)' in md
  paths = re.findall(r'\]\((report/[^)]+)\)', md)
  for name in ('annotated.png', 'synthetic_kept.png', 'synthetic_dropped.png', 'test_set.png',
               'few_shot_fold0.png', 'synthetic_fold0.png', 'supervised_fold0.png',
               'legend_2.png'):
    assert f'report/{name}' in paths
  for path in paths:
    assert (workdir / path).is_file(), path
    assert f'src="{path}"' in html
  for number in ('31.2 ± 4.6', '41.2 ± 2.1', '18.8', '33.3', '6.2', '+10.0 points'):
    assert number in html
  assert not os.path.exists(workdir / 'report.partial')

  # The kept grid: image | label tiles of samples 0, 2, 4 (enlarged); label 2 is blue.
  from PIL import Image  # pylint: disable=import-outside-toplevel
  kept = np.asarray(Image.open(workdir / 'report' / 'synthetic_kept.png'))
  assert (kept == (0, 0, 200)).all(-1).any() and (kept == 40).all(-1).any()

  mtime = os.path.getmtime(workdir / 'report.md')
  report_lib.report(_config(), str(workdir))
  assert os.path.getmtime(workdir / 'report.md') == mtime


def test_toy_note_and_missing_inputs(workdir):
  config = _config()
  if 'toy' not in config:
    config.unlock()
    config.toy = {'enabled': True}
  config.toy.enabled = True
  for optional in ('dataset', 'toy', 'annotate'):
    os.rename(workdir / optional, workdir / f'{optional}_gone')
  report_lib.report(config, str(workdir))
  md = (workdir / 'report.md').read_text()
  assert 'The 2 masks were made by an annotator model' in md
  assert 'colour classifier' not in md and 'synthetic_kept' not in md
  assert 'annotated.png' not in md

  os.remove(workdir / 'eval.json')
  with pytest.raises(InputError, match='eval.json'):
    report_lib.report(config, str(workdir))


def test_compared_workdirs_are_rows_on_the_same_test_set(workdir, tmp_path_factory):
  """config.report.compare_with: another workdir's runs become rows of both tables,
  labelled '<its name>: <run>'; one scored on other test images, or unevaluated, is an
  error naming its eval.json. The labeler row's sentence gives its gap to 'synthetic'."""
  record = json.loads((workdir / 'eval.json').read_text())
  record['test_images'] = ['a.png', 'b.png']
  record['protocol']['resolution'] = 64
  record['runs']['labeler'] = _run('the mlp labeler on each test image', 2, 0.5, 0.03, 0.45,
                                   (0.9, 0.4, 0.2))
  (workdir / 'eval.json').write_text(json.dumps(record))
  other = tmp_path_factory.mktemp('compare') / 'toy_gan'
  other.mkdir()
  theirs = dict(record, runs={'synthetic': _run('synthetic dataset: 9 images', 9, 0.6, 0.004,
                                                0.55, (0.97, 0.7, 0.123))})
  (other / 'eval.json').write_text(json.dumps(theirs))
  config = _config()
  config.report.compare_with = f'{other}, '
  report_lib.report(config, str(workdir))
  md = (workdir / 'report.md').read_text()
  assert _row(md, 'labeler (no DeepLab)')[2:4] == ['2', '50.0 ± 3.0']
  assert _row(md, 'toy_gan: synthetic (filtered)') == [
      'toy_gan: synthetic (filtered)', 'synthetic dataset: 9 images', '9', '60.0 ± 0.4', '55.0']
  assert _row(md, 'class')[-2:] == ['toy_gan: synthetic (filtered)', 'per-pixel colour classifier']
  assert _row(md, 'wheel')[1:] == ['20.0', '-', '33.3', '85.0', '12.3', '-']
  assert 'reaches 50.0% mIoU (+8.8 points against the synthetic dataset' in md

  theirs['test_images'] = ['a.png', 'c.png']
  (other / 'eval.json').write_text(json.dumps(theirs))
  with pytest.raises(InputError, match=f'{other}/eval.json was scored with other test images'):
    report_lib.report(config, str(workdir))
  os.remove(other / 'eval.json')
  with pytest.raises(InputError, match=f'{other}/eval.json is missing'):
    report_lib.report(config, str(workdir))
