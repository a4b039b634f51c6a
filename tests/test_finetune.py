"""The downstream run kind 'finetune' (BigDatasetGAN's synthetic pretraining, then
fine-tuning): initial weights from another run's checkpoint, its own schedule, evaluate and
the report beside the other runs, bad inputs; the toy transfer table in the docs against the
stored evaluation of the run that made it."""

import json
import os
import re
import shutil

import numpy as np
import pytest

from conftest import REPO, run_main
from dgan_jax import report as report_lib
from dgan_jax.downstream import deeplab
from dgan_jax.downstream import run as run_lib
from dgan_jax.downstream import train as train_lib
from dgan_jax.errors import InputError
from dgan_jax.generators import checkpoint
from results_workdir import FINETUNE_SET, RUNS, relative, results_workdir  # pylint: disable=unused-import


def load_config(**overrides):
  import configs.test as test_config  # pylint: disable=import-outside-toplevel
  config = test_config.get_config()
  config.downstream.runs = eval(RUNS)  # pylint: disable=eval-used
  for key, value in overrides.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def test_initial_weights_are_the_source_runs_last_epoch(results_workdir):
  """The backbone (and with finetune_head the classifier) are the stored arrays of the
  source run's last epoch; the rest is torchvision's initialization of the seed."""
  workdir = str(results_workdir)
  source = os.path.join(workdir, 'downstream', 'synthetic')
  for head in (False, True):
    config = load_config(**{'downstream.finetune_head': head})
    names, _, _ = run_lib.class_setup(config, workdir)
    arch = run_lib.arch_from_config(config, len(names))
    init = run_lib.finetune_init(config, workdir, 'finetune')
    assert (init.run_dir, init.epoch, init.head) == (source, 1, head)
    state = train_lib.init_state(arch, run_lib.train_options(config, 2, 'finetune'),
                                 config.seed, init)
    stored = checkpoint.flatten(train_lib.restore_epoch(source, 1, arch))
    fresh = checkpoint.flatten(dict(zip(('params', 'batch_stats'),
                                        deeplab.init(arch, config.seed))))
    ours = checkpoint.flatten({'params': state['params'], 'batch_stats': state['batch_stats']})
    assert set(ours) == set(stored) == set(fresh)
    copied = 0
    for key, value in ours.items():
      part = key.split('/')[1]
      expected = stored[key] if part == 'backbone' or (head and part == 'classifier') else fresh[key]
      np.testing.assert_array_equal(np.asarray(value), np.asarray(expected), err_msg=key)
      copied += expected is stored[key]
    assert copied == sum(1 for k in ours if k.split('/')[1] in (
        ('backbone', 'classifier') if head else ('backbone',)))


def test_finetune_runs_are_trained_evaluated_and_reported(results_workdir, tmp_path):
  """In the shared workdir: 'real' and 'finetune' trained on the 6 pairs of finetune_set/,
  'finetune_few_shot' on the annotated images, both fine-tuning runs from synthetic's last
  epoch; eval.json scores them with the others and the report compares each with its
  from-scratch run."""
  evaluation = json.loads((results_workdir / 'eval.json').read_text())
  runs = evaluation['runs']
  assert list(runs) == list(eval(RUNS))  # pylint: disable=eval-used
  assert runs['real']['num_train_images'] == runs['finetune']['num_train_images'] == 6
  assert runs['finetune_few_shot']['num_train_images'] == runs['few_shot']['num_train_images']
  source = str(results_workdir / 'downstream' / 'synthetic')
  for run in ('finetune', 'finetune_few_shot'):
    assert runs[run]['initialised_from'] == {'run_dir': source, 'epoch': 1, 'head': False}
    trained = json.loads((results_workdir / 'downstream' / run / 'train.json').read_text())
    assert 'initialised from synthetic epoch 1 (backbone)' in trained['description']
  for run in ('real', 'few_shot', 'synthetic'):
    assert 'initialised_from' not in runs[run]

  workdir = tmp_path / 'work'
  shutil.copytree(results_workdir, workdir, symlinks=True)
  report_lib.report(load_config(), str(workdir))
  text = (workdir / 'report.md').read_text()
  for run, label in report_lib.RUN_LABELS.items():
    if run in runs:
      assert label in text
  for tuned, scratch in report_lib.TRANSFER_PAIRS.items():
    a, b = (100 * runs[r]['miou_mean'] for r in (tuned, scratch))
    assert (f'fine-tuned on {runs[tuned]["num_train_images"]} images, the segmenter reaches '
            f'{a:.1f}% against {b:.1f}% from scratch') in text


def test_the_finetune_schedule_is_its_own():
  config = load_config(**{'downstream.finetune_epochs': 7, 'downstream.finetune_learning_rate': 0.5,
                          'downstream.pretrained_backbone': 'somewhere'})
  tuned = run_lib.train_options(config, 3, 'finetune')
  scratch = run_lib.train_options(config, 3, 'real')
  assert (tuned.epochs, tuned.learning_rate, tuned.pretrained_backbone) == (7, 0.5, '')
  assert (scratch.epochs, scratch.learning_rate, scratch.pretrained_backbone) == (
      config.downstream.epochs, config.downstream.learning_rate, 'somewhere')


def test_bad_fine_tuning_inputs_end_in_one_line(results_workdir, tmp_path):
  workdir = str(results_workdir)
  before = sorted(os.listdir(results_workdir / 'downstream'))
  with pytest.raises(InputError, match=r"finetune_from: unknown run 'nope'"):
    run_lib.train_run(load_config(**{'downstream.finetune_from': 'nope'}), workdir, 'finetune')
  with pytest.raises(InputError, match=r"finetune_from: 'finetune'; name the run"):
    run_lib.train_run(load_config(**{'downstream.finetune_from': 'finetune'}), workdir,
                      'finetune_few_shot')
  with pytest.raises(InputError, match=r'finetune_from: .*/elsewhere holds no finished'):
    run_lib.train_run(load_config(**{'downstream.finetune_from': str(tmp_path / 'elsewhere')}),
                      workdir, 'finetune')
  with pytest.raises(InputError, match=r"config.downstream.finetune_dir: empty; the 'real'"):
    run_lib.run_source(load_config(), workdir, 'real', None)   # what training 'real' reads
  other = load_config(**{'downstream.width': 16, 'downstream.finetune_dir': str(
      results_workdir / FINETUNE_SET)})
  arch = run_lib.arch_from_config(other, 3)
  init = run_lib.finetune_init(load_config(), workdir, 'finetune')
  with pytest.raises(InputError, match=r'epoch 1\) cannot initialise this run\'s backbone: '
                     r'\d+ variables differ'):
    train_lib.initial_variables(arch, init, *deeplab.init(arch, 0))
  assert sorted(os.listdir(results_workdir / 'downstream')) == before

  # Through the CLI: a missing labelled folder; one line, nothing written.
  work = tmp_path / 'work'
  work.mkdir()
  result = run_main('--config=configs/test.py', f'--workdir={relative(work)}',
                    '--stages=train_downstream', "--config.downstream.runs=('real',)",
                    f'--config.downstream.finetune_dir={relative(tmp_path / "missing")}')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert re.search(r'config.downstream.finetune_dir: .*missing is not a directory',
                   result.stderr.strip().splitlines()[-1])
  assert not (work / 'downstream' / 'real').exists()
