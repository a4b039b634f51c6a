"""python -m dgan_jax.segment: a trained run's DeepLab, or the labeler through an encoding
generator, on a folder of images of any size; against the evaluate stage's own
predictions, a labeler run directly, and bad inputs."""

import collections
import json
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from dgan_jax import segment as segment_lib
from dgan_jax.data import images as image_utils
from dgan_jax.downstream import data as data_lib
from dgan_jax.downstream import run as run_lib
from dgan_jax.errors import InputError
from results_workdir import results_workdir, relative  # pylint: disable=unused-import


def load_config(name):
  import importlib  # pylint: disable=import-outside-toplevel
  config = importlib.import_module(f'configs.{name}').get_config()
  return config


def run_segment(*args):
  return subprocess.run([sys.executable, '-m', 'dgan_jax.segment', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600)


def fold_predictions(grid: np.ndarray, count: int, resolution: int,
                     palette: np.ndarray) -> np.ndarray:
  """The prediction tiles of an eval/{run}_fold{k}.png grid (evaluate.fold_previews: per
  image [image | truth | prediction], enlarged, two per row) -> class ids [count, R, R]."""
  factor = max(1, -(-96 // resolution))
  height, width = resolution * factor, 3 * resolution * factor
  ids = {tuple(colour): c for c, colour in enumerate(palette)}
  out = []
  for k in range(count):
    row, column = divmod(k, 2)
    y, x = 2 + row * (height + 2), 2 + column * (width + 2) + 2 * resolution * factor
    tile = grid[y:y + height:factor, x:x + resolution * factor:factor]
    out.append([[ids[tuple(p)] for p in line] for line in tile])
  return np.asarray(out)


def test_segment_reproduces_the_evaluate_stages_predictions(results_workdir, tmp_path):
  """Fold 0's preview in eval/ holds the evaluate stage's predictions of its chosen epoch
  for the test images outside the fold, in one batch of config.evaluate.batch_size:
  segment, given that epoch and those images, runs the same compiled prediction on the
  same batch, so its masks (resized back to each image) are those labels exactly."""
  config = load_config('test')
  evaluation = json.loads((results_workdir / 'eval.json').read_text())
  fold = evaluation['runs']['synthetic']['folds'][0]
  shown = [n for n in evaluation['test_images'] if n not in fold['validation_images']]
  shown = shown[:config.evaluate.preview_count]
  assert len(shown) == config.evaluate.batch_size    # one batch, as evaluate ran it
  images = tmp_path / 'photos'
  images.mkdir()
  for name in shown:
    shutil.copyfile(results_workdir / 'test_synthetic' / f'{name}.png', images / f'{name}.png')
  (images / 'notes.txt').write_text('not an image')
  (images / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'x' * 20)
  out = tmp_path / 'masks'
  result = run_segment('--config=configs/test.py', f'--workdir={relative(results_workdir)}',
                       f'--images={relative(images)}', f'--out={relative(out)}',
                       f'--epoch={fold["selected_epoch"]}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'skipped 2: broken.png, notes.txt' in result.stdout

  names, _, palette = run_lib.class_setup(config, str(results_workdir))
  grid = np.asarray(Image.open(results_workdir / 'eval' / 'synthetic_fold0.png').convert('RGB'))
  expected = fold_predictions(grid, len(shown), config.downstream.resolution, palette)
  for name, prediction in zip(shown, expected):
    mask = np.asarray(Image.open(out / f'{name}.png'))
    picture = np.asarray(Image.open(images / f'{name}.png'))
    assert mask.shape == picture.shape[:2] == (24, 32)       # the image's own size
    np.testing.assert_array_equal(mask, data_lib.resize_label(prediction, *mask.shape))
    overlay = np.asarray(Image.open(out / 'overlays' / f'{name}.png'))
    np.testing.assert_array_equal(overlay[mask == 0], picture[mask == 0])
    blended = np.round(0.5 * picture + 0.5 * palette[mask]).astype(np.uint8)
    np.testing.assert_array_equal(overlay[mask > 0], blended[mask > 0])

  record = json.loads((out / 'segment.json').read_text())
  assert record['segmenter']['epoch'] == fold['selected_epoch']
  assert record['num_images'] == len(shown) and record['classes'] == list(names)
  assert sorted(s['file'] for s in record['skipped']) == ['broken.png', 'notes.txt']
  rows = (out / 'confidence.csv').read_text().splitlines()
  assert rows[0] == 'file,mask,width,height,mean_max_probability' and len(rows) == 1 + len(shown)
  confidence = json.loads((out / 'confidence.json').read_text())
  for entry in confidence:   # a mean of largest softmax probabilities of 3 classes
    assert 1 / 3 <= entry['mean_max_probability'] <= 1
  page = (out / 'index.html').read_text()
  assert all(f'overlays/{n}.png' in page for n in shown) and 'notes.txt' in page
  assert not [p for p in os.listdir(tmp_path) if p.endswith('.partial')]


def test_the_default_epoch_is_the_one_most_folds_chose(results_workdir):
  run = json.loads((results_workdir / 'eval.json').read_text())['runs']['synthetic']
  votes = collections.Counter(f['selected_epoch'] for f in run['folds']).most_common()
  epochs = [int(e) for e in run['all_images_miou_per_epoch']]

  def validation(e):
    return np.mean([f['validation_miou_per_epoch'][epochs.index(e)] for f in run['folds']])

  tied = [e for e, n in votes if n == votes[0][1]]
  expected = max(tied, key=lambda e: (validation(e), -e))
  assert run_lib.evaluated_epoch(str(results_workdir), 'synthetic') == expected
  assert run['best_epoch'] == expected


def test_bad_inputs_end_in_one_line_and_write_nothing(results_workdir, tmp_path):
  config = load_config('test')
  workdir = str(results_workdir)
  with pytest.raises(InputError, match=r"--run: .*downstream/nope holds no finished "
                     r"downstream run \(finished runs: \['few_shot', 'finetune'"):
    run_lib.trained_run(config, workdir, 'nope')
  with pytest.raises(InputError, match=r'--epoch: .* has no epoch 7 \(it has \[0, 1\]\)'):
    run_lib.trained_run(config, workdir, 'synthetic', 7)
  with pytest.raises(InputError, match='--labeler: a stylegan1 generator regenerates'):
    segment_lib.labeler_segmenter(config, workdir)
  segmenter = segment_lib.deeplab_segmenter(config, workdir, 'synthetic')
  empty = tmp_path / 'empty'
  empty.mkdir()
  out = tmp_path / 'out'
  with pytest.raises(InputError, match=r'--images: .*empty is empty'):
    segment_lib.segment(segmenter, str(empty), str(out), progress=False)
  with pytest.raises(InputError, match=r'--images: .*missing is not a folder'):
    segment_lib.segment(segmenter, str(tmp_path / 'missing'), str(out), progress=False)
  taken = tmp_path / 'taken'
  taken.mkdir()
  (taken / 'mine.txt').write_text('keep')
  (empty / 'a.png').write_bytes(b'\x89PNG\r\n\x1a\n')
  with pytest.raises(InputError, match=r'--out: .*taken exists and is not an earlier segment'):
    segment_lib.segment(segmenter, str(empty), str(taken), progress=False)
  assert os.listdir(taken) == ['mine.txt']
  assert sorted(os.listdir(tmp_path)) == ['empty', 'taken']

  # Through the CLI: a folder without a readable image; one line, nothing written.
  (empty / 'notes.txt').write_text('text')
  result = run_segment('--config=configs/test.py', f'--workdir={relative(results_workdir)}',
                       f'--images={relative(empty)}', f'--out={relative(out)}')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      'error: --images: no readable image in')
  assert sorted(os.listdir(tmp_path)) == ['empty', 'taken']


def _vqgan_maps(g, config, images):
  return g.reconstruct(images)[1]      # encode, quantize, decode: the decoder's maps


def _ddpm_maps(g, config, images):
  return g.features(images, seed=config.seed)   # the noised image's decoder blocks


@pytest.mark.parametrize('name,maps_of', [('test_vqgan', _vqgan_maps), ('test_ddpm', _ddpm_maps)])
def test_the_labeler_segments_through_the_encoder(name, maps_of, tmp_path):
  """The conv head (two members, random weights) on a VQGAN's and a DDPM's features, both
  through the one Generator interface (encodes_images, Sampling.from_images), on images of
  three sizes: each mask is the members' vote (foreground where both heads' logits are
  positive) on the maps the generator's own call gives for the image resized to its
  resolution (VQGAN: reconstruct; DDPM: features, the config's seed's shared noise),
  resized back with nearest neighbour. Two compiled programs, so only pixels whose logits
  are clear of zero by 1e-3 are compared (nearly all)."""
  from dgan_jax import features  # pylint: disable=import-outside-toplevel
  from dgan_jax import generators  # pylint: disable=import-outside-toplevel
  from dgan_jax.bigdatasetgan import head as head_lib  # pylint: disable=import-outside-toplevel
  from dgan_jax.bigdatasetgan import train as head_train  # pylint: disable=import-outside-toplevel
  config = load_config(name)
  config.labeler = 'conv_head'        # test_vqgan's own; test_ddpm's MLP replaced by the head
  if name == 'test_ddpm':     # its maps are all 32 px (upsampled): one group, two members
    config.biggan.head.group_sizes, config.biggan.head.group_channels = (32,), (16,)
    config.biggan.head.num_members = 2
  config.data.num_classes, config.data.class_names = 2, ('background', 'foreground')
  g = generators.from_config(config.generator, config.seed)
  g.sampling(config)        # the config's feature selection (DDPM: steps and blocks)
  arch = head_train.head_arch_for(g, config.biggan.head, config.data.num_classes)
  variables = head_lib.init(arch, 3)
  workdir = tmp_path / 'work'
  head_lib.save(str(workdir / 'head'), arch, variables)
  rng = np.random.default_rng(0)
  folder = tmp_path / 'photos'
  folder.mkdir()
  sizes = [(40, 28), (32, 32), (21, 50)]
  for i, (h, w) in enumerate(sizes):
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((w, h), Image.BILINEAR).save(folder / f'p{i}.png')
  segmenter = segment_lib.labeler_segmenter(config, str(workdir))
  record = segment_lib.segment(segmenter, str(folder), str(tmp_path / 'out'), progress=False)
  assert record['num_images'] == 3 and record['confidence_fields'] == ['mean_js', 'score']

  r = g.resolution
  layout = features.layout_for(g, config.data)
  qualified = 0
  for i, (h, w) in enumerate(sizes):
    picture = np.asarray(Image.open(folder / f'p{i}.png'))
    resized = image_utils.resize_image(picture, r, r)
    maps = maps_of(g, config, resized[None].astype(np.float32) / 127.5 - 1)
    logits, _ = head_lib.apply(arch, variables, maps, None)
    logits = np.asarray(head_lib.logits_to_grid(logits, layout))[:, 0, ..., 0]   # [M, r, r]
    vote = np.all(logits > 0, axis=0).astype(np.uint8)   # two members: a tie is background
    clear = np.all(np.abs(logits) > 1e-3, axis=0)
    mask = np.asarray(Image.open(tmp_path / 'out' / f'p{i}.png'))
    assert mask.shape == (h, w)
    expected = data_lib.resize_label(vote, h, w)
    keep = data_lib.resize_label(clear.astype(np.uint8), h, w).astype(bool)
    np.testing.assert_array_equal(mask[keep], expected[keep])
    qualified += keep.mean()
  assert qualified / 3 > 0.97
