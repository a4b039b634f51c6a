"""The built-in toy domain end to end: `configs/toy.py:quick` (the CI smoke run) and the
default config of `python -m dgan_jax.main`."""

import json
import os

import numpy as np
import pytest
from PIL import Image

import conftest
from dgan_jax.toy import render
from dgan_jax.toy import stages as toy_stages


def run_main(*args):
  return conftest.run_main(*args, timeout=1200)


@pytest.mark.slow
def test_quick_toy_run_produces_the_report(tmp_path):
  """The README's run command, from the repository root, with a relative --workdir as it
  prints it (orbax needs absolute paths: main resolves it)."""
  workdir = tmp_path / 'toy'
  relative = os.path.relpath(workdir, conftest.REPO)
  assert not os.path.isabs(relative)
  result = run_main('--config=configs/toy.py:quick', f'--workdir={relative}')
  assert result.returncode == 0, result.stderr[-3000:]

  # The test set is the renderer's output for its own seed, exact masks included.
  test_dir = workdir / 'toy' / 'test'
  assert len(list(test_dir.glob('*.npy'))) == 100
  images, masks = render.render(toy_stages.TEST_SEED, [0, 57], 32)
  for k, i in enumerate([0, 57]):
    np.testing.assert_array_equal(np.load(test_dir / f'{i:05d}.npy'), masks[k])
    np.testing.assert_array_equal(np.asarray(Image.open(test_dir / f'{i:05d}.png')), images[k])

  # The annotator stand-in wrote one mask per sample, where a person would.
  for i in range(16):
    mask = np.asarray(Image.open(workdir / 'annotate' / f'mask_{i}.png'))
    assert mask.shape == (32, 32) and mask.max() < render.NUM_CLASSES
    assert (mask > 0).any()  # the annotator finds a car in a GAN sample

  with open(workdir / 'eval.json') as f:
    record = json.load(f)
  runs = record['runs']
  assert set(runs) == {'synthetic', 'synthetic_unfiltered', 'few_shot', 'supervised',
                       'finetune_few_shot', 'finetune', 'real'}
  # 300 samples, floor(0.1 * 300) = 30 dropped; unfiltered trains on all 300.
  assert runs['synthetic']['num_train_images'] == 270
  assert runs['synthetic_unfiltered']['num_train_images'] == 300
  assert runs['few_shot']['num_train_images'] == 16
  assert runs['supervised']['num_train_images'] == 500
  # BigDatasetGAN's transfer rows: the synthetic run's last epoch fine-tuned on the 16
  # annotated images and on 100 renders of the finetune seed, and those 100 from scratch.
  assert runs['finetune_few_shot']['num_train_images'] == 16
  assert runs['finetune']['num_train_images'] == runs['real']['num_train_images'] == 100
  assert len(list((workdir / 'toy' / 'finetune').glob('*.npy'))) == 100
  for run in ('finetune_few_shot', 'finetune'):
    source = runs[run]['initialised_from']
    assert os.path.basename(source['run_dir']) == 'synthetic' and source['epoch'] == 1
    assert not source['head']
  assert 'initialised_from' not in runs['real']
  assert record['protocol']['num_test_images'] == 100
  assert not record['protocol']['stand_in_test_images']

  report = (workdir / 'report.md').read_text()
  assert 'annotator' in report
  for run in runs.values():
    assert f'{100 * run["miou_mean"]:.1f}' in report
  assert (workdir / 'report.html').is_file()

  # A rerun finds every stage done and rewrites nothing.
  mtimes = {p: os.path.getmtime(workdir / p) for p in ('eval.json', 'report.md',
                                                       'annotate/mask_0.png')}
  result = run_main('--config=configs/toy.py:quick', f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert {p: os.path.getmtime(workdir / p) for p in mtimes} == mtimes


def test_default_config_is_the_toy_domain(tmp_path):
  result = run_main(f'--workdir={tmp_path}', '--stages=sample')
  assert result.returncode == 0, result.stderr[-3000:]
  latents = np.load(tmp_path / 'annotate' / 'latents.npy')
  assert latents.shape == (16, 128)   # the toy GAN's latent size
  image = np.asarray(Image.open(tmp_path / 'annotate' / 'image_15.png'))
  assert image.shape == (32, 32, 3)


def test_shipped_toy_gan_matches_its_stored_outputs():
  """checkpoints/toy_cars32 through the loader: W, image and two feature maps of two
  fixed z against tests/data/toy_cars32_golden.npz (written when the checkpoint was
  shipped), so a changed checkpoint or loader fails here."""
  import importlib  # pylint: disable=import-outside-toplevel
  from dgan_jax import generators  # pylint: disable=import-outside-toplevel
  golden = np.load(os.path.join(conftest.DATA_DIR, 'toy_cars32_golden.npz'))
  config = importlib.import_module('configs.toy').get_config()
  g = generators.from_config(config.generator, config.seed)
  assert (g.family, g.resolution, g.latent_size) == ('stylegan1', 32, 128)
  w = g.truncate(g.map(golden['z']), config.generator.truncation_psi,
                 config.generator.truncation_cutoff)
  np.testing.assert_allclose(w, golden['w'], rtol=1e-5, atol=1e-5)
  image, maps = g.synthesize(w, noise=config.generator.noise)
  np.testing.assert_allclose(image, golden['image'], atol=1e-4)
  np.testing.assert_allclose(maps[0], golden['first_map'], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(maps[-1])[:, ::4, ::4], golden['last_map_every4'],
                             rtol=1e-4, atol=1e-4)


README_ROWS = {   # the README's toy table: row label -> (file in docs/toy, run)
    'few-shot: the 16 annotated GAN images': ('eval.json', 'few_shot'),
    'DatasetGAN synthetic, unfiltered': ('eval.json', 'synthetic_unfiltered'),
    'DatasetGAN synthetic, uncertainty-filtered': ('eval.json', 'synthetic'),
    'fully supervised (ceiling)': ('eval.json', 'supervised'),
    'synthetic-pretrained, fine-tuned on the 16 annotated images': ('eval.json',
                                                                    'finetune_few_shot'),
    'from scratch on 100 labelled renders': ('eval.json', 'real'),
    'synthetic-pretrained, fine-tuned on those 100 renders': ('eval.json', 'finetune'),
    'few-shot: the 16 annotated DDPM images': ('eval_ddpm.json', 'few_shot'),
    'DDPM features, trained on the 16 annotated images': ('eval_ddpm.json', 'labeler'),
    'DatasetDDPM synthetic, uncertainty-filtered': ('eval_ddpm.json', 'synthetic'),
    'per-pixel colour classifier (RGB lookup)': ('colour_baseline.json', None),
}


def test_readme_toy_table_is_the_stored_evaluation():
  """Every number of the README's results table comes from docs/toy/eval.json (the toy
  GAN's run), eval_ddpm.json (the toy DDPM's, scored on the same test renders and folds)
  and colour_baseline.json, the files of the runs that made it."""
  docs = os.path.join(conftest.REPO, 'docs', 'toy')
  records = {}
  for name in ('eval.json', 'eval_ddpm.json', 'colour_baseline.json'):
    with open(os.path.join(docs, name)) as f:
      records[name] = json.load(f)
  record, ddpm = records['eval.json'], records['eval_ddpm.json']
  assert ddpm['test_images'] == record['test_images'] and ddpm['classes'] == record['classes']
  for field in ('num_folds', 'resolution', 'num_test_images'):
    assert ddpm['protocol'][field] == record['protocol'][field], field
  with open(os.path.join(conftest.REPO, 'README.md')) as f:
    readme = f.read()
  header = '| trained on | images | mIoU % | ' + ' | '.join(record['classes']) + ' |'
  assert header in readme
  table = readme[readme.index(header):].split('\n\n')[0].splitlines()[2:]
  rows = {cells[0]: cells[1:] for cells in
          ([c.strip() for c in line.strip('|').split('|')] for line in table)}
  assert set(rows) == set(README_ROWS)
  for label, (name, run) in README_ROWS.items():
    cells = rows[label]
    if run is None:
      colour = records[name]
      expected = [str(colour['num_train_images']), f'{100 * colour["miou"]:.1f}'] + [
          f'{100 * colour["class_iou"][c]:.1f}' for c in record['classes']]
    else:
      result = records[name]['runs'][run]
      expected = [str(result['num_train_images']),
                  f'**{100 * result["miou_mean"]:.1f}** ± {100 * result["miou_std"]:.1f}'] + [
                      '-' if result['class_iou'][c] is None
                      else f'{100 * result["class_iou"][c]["mean"]:.1f}' for c in record['classes']]
    assert cells == expected, label
