"""The CLI: `python -m dgan_jax.main` with the sample stage, configs and input errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import bounds
from conftest import REPO, run_main
from dgan_jax import config as config_lib
from dgan_jax import generators
from dgan_jax.data import images as image_utils
from dgan_jax.errors import InputError


def load_config(name):
  import importlib  # pylint: disable=import-outside-toplevel
  return importlib.import_module(f'configs.{name}').get_config()


def test_sample_stage_writes_annotation_inputs(tmp_path):
  workdir = tmp_path / 'work'
  result = run_main('--config=configs/test.py', f'--workdir={workdir}', '--stages=sample')
  assert result.returncode == 0, result.stderr
  out = workdir / 'annotate'
  latents = np.load(out / 'latents.npy')
  assert latents.shape == (4, 512)
  config = load_config('test')
  g = generators.from_config(config.generator, config.seed)
  np.testing.assert_array_equal(np.load(out / 'avg_latent.npy'), np.asarray(g.avg_latent))
  grid = np.asarray(Image.open(out / 'samples.png'))
  assert grid.shape == (2 + 26, 2 + 4 * 34, 3)
  assert not any(name.endswith('.partial') for name in os.listdir(workdir))
  # The saved images are what the generator API draws from the saved latents, within one
  # level (the stage's batches of 2 and this call's batch of 4 are two compiled programs).
  image, _ = g(latents, psi=config.generator.truncation_psi,
               cutoff=config.generator.truncation_cutoff, noise=config.generator.noise)
  regenerated = image_utils.crop_rows(image_utils.to_uint8(image), config.data)
  for i in range(4):
    saved = np.asarray(Image.open(out / f'image_{i}.png'))
    assert saved.shape == (24, 32, 3)  # rows 4:28 of the 32 px output
    bounds.assert_images_within_one_level(saved, regenerated[i])
  # Rerun: the finished stage is skipped, nothing is rewritten.
  mtime = os.path.getmtime(out / 'latents.npy')
  assert run_main('--config=configs/test.py', f'--workdir={workdir}',
                  '--stages=sample').returncode == 0
  assert os.path.getmtime(out / 'latents.npy') == mtime


def test_missing_checkpoint_says_how_to_get_it(tmp_path):
  result = run_main('--config=configs/car20.py', f'--workdir={tmp_path}')
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: config.generator.checkpoint: '
                         + os.path.join(REPO, 'checkpoints', 'stylegan1_car512'))
  assert 'python -m convert_weights stylegan1' in last
  assert 'Traceback' not in result.stderr


def test_unknown_config_field_is_named(tmp_path):
  result = run_main('--config=configs/test.py', f'--workdir={tmp_path}',
                    '--config.data.num_clases=3')
  assert result.returncode != 0
  assert 'num_clases' in result.stderr
  config = config_lib.base()
  with pytest.raises(AttributeError, match='num_classes'):
    config.data.num_clases = 3
  with pytest.raises(InputError, match='stages'):
    config.stages = 'sample,bogus'
    config_lib.selected_stages(config)


@pytest.mark.parametrize('name', ['car20', 'car12', 'face34', 'cat16', 'bedroom28',
                                  'car20_sg2', 'ffhq34_sg2'])
def test_experiment_configs_carry_the_original_numbers(name):
  config = load_config(name)
  expected = {'car20': (20, 16), 'car12': (20, 16), 'face34': (34, 16), 'cat16': (16, 30),
              'bedroom28': (28, 40), 'car20_sg2': (20, 16), 'ffhq34_sg2': (34, 16)}[name]
  assert (config.data.num_classes, config.data.num_annotated) == expected
  assert config.interpreter.num_members == 10
  assert (config.generator.truncation_psi, config.generator.truncation_cutoff) == (0.7, 8)
  assert len(config.data.class_names) == config.data.num_classes
  if name.startswith('car'):
    assert tuple(config.data.crop_rows) == (64, 448)
  if name == 'car12':
    assert len(config.data.eval_class_map) == 20 and max(config.data.eval_class_map) == 11


def test_tuple_override_on_the_command_line_reaches_the_training_options():
  """README: `--config.downstream.scale_range='(1.0, 1.0)'` trains without rescaling."""
  script = ('import sys\n'
            'from dgan_jax import main\n'
            'from dgan_jax.downstream import run\n'
            'main.parse_flags(sys.argv)\n'
            'options = run.train_options(main.flags.FLAGS.config)\n'
            'print(options.scale_range, options.flip, options.augment().enabled)\n')
  result = subprocess.run(
      [sys.executable, '-c', script, '--config=configs/test.py',
       '--config.downstream.scale_range=(1.0, 1.0)', '--config.downstream.flip=False'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ['(1.0,', '1.0)', 'False', 'False']
