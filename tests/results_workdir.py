"""The workdir the tests of segment, export and fine-tuning read (none may change it:
copy it first): configs/test.py through every stage but report, with the downstream runs
synthetic, few_shot and the fine-tuning kind (real, finetune, finetune_few_shot on a
labelled folder of 6 of the synthetic dataset's samples, finetune_set/).

Made once per test session, whatever the number of xdist workers (the first worker to
ask builds it under a file lock in the session's shared temporary folder; with -n 0, once
per session), through the CLI with paths relative to the repository as users type them.
"""

import fcntl
import os
import shutil

import numpy as np
import pytest

from conftest import REPO, run_main

CONFIG = '--config=configs/test.py'
RUNS = "('synthetic', 'few_shot', 'real', 'finetune', 'finetune_few_shot')"
FINETUNE_SET = 'finetune_set'


def _write_finetune_set(workdir: str) -> str:
  """Samples 0..5 of the dataset's train split as a labelled folder (image + .npy mask)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  source = tfds.builder_from_directory(os.path.join(workdir, 'dataset')).as_data_source('train')
  out = os.path.join(workdir, FINETUNE_SET)
  os.makedirs(out)
  for i in range(6):
    example = source[i]
    Image.fromarray(example['image']).save(os.path.join(out, f'{i:03d}.png'))
    np.save(os.path.join(out, f'{i:03d}.npy'), example['label'])
  return out


def _build(stylegan_workdir, workdir: str) -> None:
  shutil.copytree(stylegan_workdir, workdir, symlinks=True)
  finetune_dir = _write_finetune_set(workdir)
  result = run_main(CONFIG, f'--workdir={os.path.relpath(workdir, REPO)}',
                    '--stages=train_downstream,evaluate', f'--config.downstream.runs={RUNS}',
                    f'--config.downstream.finetune_dir={os.path.relpath(finetune_dir, REPO)}')
  assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope='session')
def results_workdir(tmp_path_factory, request):
  """-> the built workdir (a pathlib.Path); see the module docstring."""
  worker = getattr(request.config, 'workerinput', None)
  root = tmp_path_factory.getbasetemp()
  if worker is not None:
    root = root.parent    # shared by the session's workers
  workdir = root / 'results_workdir'
  with open(root / 'results_workdir.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      if not (workdir / 'eval.json').exists():
        if workdir.exists():
          shutil.rmtree(workdir)
        _build(request.getfixturevalue('stylegan_workdir'), str(workdir))
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return workdir


def relative(path) -> str:
  """A path relative to the repository root, as the README's commands give them."""
  return os.path.relpath(path, REPO)
