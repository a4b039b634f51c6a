"""The train_interpreter stage end to end on configs/test.py."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import conftest
from dgan_jax import interpreter
from dgan_jax.data import annotations


def run_main(*args):
  return conftest.run_main('--config=configs/test.py', *args)


@pytest.fixture(scope='module')
def trained(stylegan_workdir):
  """sample + train_interpreter (and generate) with the test config's synthetic
  (brightness) masks."""
  return stylegan_workdir


def test_stage_trains_and_writes_the_ensemble(trained):
  out = trained / 'interpreter'
  assert not (trained / 'interpreter.partial').exists()
  arch, params, _, meta = interpreter.load(str(out))
  assert (arch.num_members, arch.num_classes) == (3, 3)
  assert arch.feature_dim == 2 * (32 + 32 + 16 + 8)  # the 32 px test generator's maps
  assert params['linear0']['weight'].shape == (3, 176, 128)
  assert meta['layout']['crop_rows'] == [4, 28]
  info = json.loads((out / 'info.json').read_text())
  assert info['steps'] == 150 and info['format'] == 'plain'
  assert info['annotation_dir'].endswith('annotate_synthetic')
  # Three balanced brightness bands: chance is 1/3; the features make them learnable.
  assert min(info['last_accuracy']) > 0.6
  history = np.load(out / 'history.npz')
  assert history['loss'][-1].mean() < history['loss'][0].mean()
  # The check image: 4 rows of (annotated | regenerated | mask), 24x32 tiles.
  check = np.asarray(Image.open(out / 'check.png'))
  assert check.shape == (2 + 4 * 26, 2 + 3 * 34, 3)
  annotated = check[2:26, 2:34].astype(int)
  regenerated = check[2:26, 36:68].astype(int)
  assert np.abs(annotated - regenerated).max() <= 1  # latents and images line up
  assert not (out / 'checkpoints').exists()
  # A finished stage is skipped.
  mtime = os.path.getmtime(out / 'params.npz')
  assert run_main(f'--workdir={trained}', '--stages=train_interpreter').returncode == 0
  assert os.path.getmtime(out / 'params.npz') == mtime


def test_stage_with_a_user_annotation_folder(trained, tmp_path):
  """Plain-format masks beside the sample stage's files, passed on the command line."""
  folder = tmp_path / 'labels'
  shutil.copytree(trained / 'annotate', folder)
  for i in range(4):
    red = np.asarray(Image.open(folder / f'image_{i}.png'))[..., 0]
    Image.fromarray((red > 128).astype(np.uint8) * 2, mode='L').save(folder / f'mask_{i}.png')
  workdir = tmp_path / 'work'
  shutil.copytree(trained / 'annotate', workdir / 'annotate')
  result = run_main(f'--workdir={workdir}', '--stages=train_interpreter',
                    f'--config.data.annotation_dir={folder}')
  assert result.returncode == 0, result.stderr[-3000:]
  info = json.loads((workdir / 'interpreter' / 'info.json').read_text())
  assert info['annotation_dir'] == str(folder)
  assert not (workdir / 'annotate_synthetic').exists()
  masks = annotations.load(str(folder), _config().data, 10, (24, 32))['masks']
  assert min(info['last_accuracy']) > max(np.mean(masks == 0), np.mean(masks == 2))


def test_bad_mask_is_one_line_naming_the_file(trained, tmp_path):
  folder = tmp_path / 'labels'
  shutil.copytree(trained / 'annotate', folder)
  for i in range(4):
    np.save(folder / f'mask_{i}.npy', np.full((24, 32), 5 if i == 2 else 1, np.uint8))
  result = run_main(f'--workdir={tmp_path / "work"}', '--stages=train_interpreter',
                    f'--config.data.annotation_dir={folder}')
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last == (f'error: {folder}/mask_2.npy: class id 5 but config.data.num_classes is 3 '
                  '(ids 0..2)')
  assert 'Traceback' not in result.stderr


def _config():
  import importlib  # pylint: disable=import-outside-toplevel
  return importlib.import_module('configs.test').get_config()


@pytest.mark.slow
def test_interrupted_stage_resumes_from_its_checkpoints(trained, tmp_path, monkeypatch,
                                                        capsys):
  from dgan_jax import stages  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / 'work'
  shutil.copytree(trained / 'annotate', workdir / 'annotate')
  config = _config()
  with config.unlocked():
    config.interpreter.num_steps = 60
    config.interpreter.checkpoint_every = 20
    config.interpreter.log_every = 10
  real_train = interpreter.train

  def interrupted(*args, **kwargs):
    real_train(*args, **kwargs, stop_after=45)
    raise KeyboardInterrupt

  monkeypatch.setattr(interpreter, 'train', interrupted)
  with pytest.raises(KeyboardInterrupt):
    stages.train_interpreter(config, str(workdir))
  partial = workdir / 'interpreter.partial'
  assert (partial / 'check.png').exists() and not (workdir / 'interpreter').exists()
  assert sorted(p for p in os.listdir(partial / 'checkpoints') if p.isdigit()) == ['40', '45']
  monkeypatch.setattr(interpreter, 'train', real_train)
  stages.train_interpreter(config, str(workdir))
  history = np.load(workdir / 'interpreter' / 'history.npz')
  # Resumed at step 45, not from scratch; the history covers every logged step of both
  # sessions (45: where the first one stopped and logged).
  assert history['step'].tolist() == [10, 20, 30, 40, 45, 50, 60]
  assert 'resumed at step 45' in capsys.readouterr().out
  assert json.loads((workdir / 'interpreter' / 'info.json').read_text())['steps'] == 60
  # The weights of an uninterrupted run, bitwise.
  straight = tmp_path / 'straight'
  shutil.copytree(trained / 'annotate', straight / 'annotate')
  stages.train_interpreter(config, str(straight))
  resumed_params = np.load(workdir / 'interpreter' / 'params.npz')
  straight_params = np.load(straight / 'interpreter' / 'params.npz')
  assert sorted(resumed_params.files) == sorted(straight_params.files)
  for name in straight_params.files:
    np.testing.assert_array_equal(resumed_params[name], straight_params[name], err_msg=name)
