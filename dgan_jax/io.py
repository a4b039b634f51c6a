"""The workdir's conventions, one place each: folder names, atomic writes, and the rule
that a changed recipe starts a stage over.

Every write goes to a temporary name beside its target and is renamed into place when
complete, so an interrupted run never leaves a file or folder a rerun would trust.
"""

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from typing import Any, Iterable

import numpy as np
from absl import logging

from dgan_jax.errors import InputError

# Folders and files of a workdir, stage by stage.
ANNOTATE = 'annotate'                  # sample: images to annotate (+ the person's masks)
ANNOTATE_SYNTHETIC = 'annotate_synthetic'  # brightness stand-in masks (smoke runs)
INTERPRETER = 'interpreter'            # train_interpreter, the MLP ensemble
HEAD = 'head'                          # train_interpreter, BigDatasetGAN's conv head
GENERATE = 'generate'                  # generate: raw shards, plan, timing
DATASET = 'dataset'                    # generate: the TFDS dataset
DOWNSTREAM = 'downstream'              # train_downstream: one folder per run
TEST_SYNTHETIC = 'test_synthetic'      # evaluate: stand-in test images (smoke runs)
EVAL = 'eval'                          # evaluate: previews and table
EVAL_JSON = 'eval.json'
REPORT = 'report'
TOY = 'toy'                            # the toy domain's data (a domain's folder is its name)

PARTIAL = '.partial'


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path)
  elif os.path.lexists(path):
    os.remove(path)


def remove(paths: Iterable[str]) -> None:
  """Deletes files and folders that exist."""
  for path in paths:
    _remove(path)


@contextlib.contextmanager
def atomic_dir(path: str):
  """Yields a fresh temporary sibling folder (`path`.partial) that replaces `path` on
  success and is deleted on failure."""
  tmp = path + PARTIAL
  _remove(tmp)
  os.makedirs(tmp)
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  replace_dir(tmp, path)


def replace_dir(source: str, path: str) -> None:
  """Moves the finished folder `source` to `path`, replacing any folder there; `path` is
  never missing while an old version exists (the old one is set aside, then deleted)."""
  if os.path.exists(path):
    old = path + '.old'
    _remove(old)
    os.rename(path, old)
    os.rename(source, path)
    _remove(old)
  else:
    os.rename(source, path)


@contextlib.contextmanager
def atomic_file(path: str, mode: str = 'w'):
  """Yields an open temporary file that becomes `path` when the block completes."""
  tmp = path + PARTIAL
  try:
    with open(tmp, mode) as f:
      yield f
  except BaseException:
    _remove(tmp)
    raise
  os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
  with atomic_file(path) as f:
    json.dump(obj, f, indent=2)


def write_text(path: str, text: str) -> None:
  with atomic_file(path, 'w') as f:
    f.write(text)


def save_npy(path: str, array) -> None:
  with atomic_file(path, 'wb') as f:
    np.save(f, np.asarray(array))


def save_npz(path: str, **arrays) -> None:
  with atomic_file(path, 'wb') as f:
    np.savez(f, **arrays)


def read_json(path: str):
  """The JSON in `path`, or None when there is no such file; InputError naming the file
  when it is not valid JSON."""
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InputError(f'{path}: not valid JSON ({e}); delete it to rebuild it') from None


def start_over_if_changed(record_path: str, record: dict, stale: Iterable[str], what: str,
                          write: bool = True) -> None:
  """Writes `record` (what a stage's result depends on) to `record_path`; when a
  different record is there, first deletes the `stale` paths (the partial results made
  under the old record), so the stage starts over instead of mixing the two.
  write=False only deletes (processes other than the one that records)."""
  record = json.loads(json.dumps(record))
  try:
    previous = read_json(record_path)
  except InputError:
    previous = {'unreadable': record_path}   # a damaged record: start over
  if previous is not None and previous != record:
    logging.warning('%s: the config or inputs changed since %s was written; starting over',
                    what, record_path)
    remove(stale)
  if write and previous != record:
    os.makedirs(os.path.dirname(record_path), exist_ok=True)
    write_json(record_path, record)


def array_digest(*arrays) -> str:
  """SHA-256 (hex) of arrays' shapes, dtypes and bytes, in order."""
  digest = hashlib.sha256()
  for array in arrays:
    array = np.ascontiguousarray(array)
    digest.update(f'{array.shape}{array.dtype}'.encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def file_digest(path: str) -> str:
  """SHA-256 of a file's bytes (hex)."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def git_commit() -> str:
  """The project's short git commit ('' outside a checkout): what exported weights record."""
  try:
    return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                          text=True, cwd=os.path.dirname(__file__), check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return ''
