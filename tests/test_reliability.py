"""Bad input ends in one line naming the file or field, nothing a user owns is touched,
and nothing stale is reused (issue: reliability)."""

import ast
import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, golden_path, rebuild_stylegan1_state_dict, run_main, tf_network
from convert_weights import __main__ as convert_cli
from dgan_jax import config as config_lib
from dgan_jax import generators
from dgan_jax import training
from dgan_jax.errors import InputError


@pytest.fixture(scope='module')
def stylegan1_pt(tmp_path_factory):
  """DatasetGAN's .pt layout of the 64 px golden network (zip format, as torch.save)."""
  golden = np.load(golden_path('stylegan1_r64_seed0.npz'))
  path = tmp_path_factory.mktemp('pt') / 'g.for_g_all.pt'
  torch.save({k: torch.from_numpy(v) for k, v in
              rebuild_stylegan1_state_dict(golden, 0).items()}, path)
  return path


def convert(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'convert_weights', *map(str, args)],
                        capture_output=True, text=True, cwd=REPO, timeout=300)


def listing(folder) -> dict[str, bytes]:
  """Every file below `folder` (relative name -> bytes)."""
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*'))
          if p.is_file()}


def assert_one_line(text: str, *words: str) -> None:
  lines = text.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), text
  for word in words:
    assert word in lines[0], (word, lines[0])


# ----------------------------------------------------------------------------------------
# Converting never deletes what a user owns.

def test_converting_into_a_user_folder_or_file_is_refused(tmp_path, stylegan1_pt, capsys):
  user_dir = tmp_path / 'userdir'
  user_dir.mkdir()
  (user_dir / 'notes.txt').write_text('mine')
  (user_dir / 'params.npz').write_bytes(b'not a checkpoint')
  user_file = tmp_path / 'userfile'
  user_file.write_text('mine too')
  before = listing(tmp_path)
  for dst in (user_dir, user_file):
    assert convert_cli.main(['stylegan1', str(stylegan1_pt), str(dst)]) == 1
    assert_one_line(capsys.readouterr().err, str(dst), 'not a converted checkpoint')
  assert convert_cli.main(['stylegan1', str(stylegan1_pt), str(user_dir), '--overwrite']) == 1
  assert_one_line(capsys.readouterr().err, 'not a converted checkpoint')
  assert listing(tmp_path) == before and listing(user_dir) == {
      'notes.txt': b'mine', 'params.npz': b'not a checkpoint'}


def test_a_converted_checkpoint_is_replaced_only_with_overwrite(tmp_path, stylegan1_pt,
                                                                 capsys):
  dst = tmp_path / 'g'
  assert convert_cli.main(['stylegan1', str(stylegan1_pt), str(dst)]) == 0
  first = listing(dst)
  assert convert_cli.main(['stylegan1', str(stylegan1_pt), str(dst), '--noise-seed', '5']) == 1
  assert_one_line(capsys.readouterr().err, '--overwrite')
  assert listing(dst) == first
  assert convert_cli.main(['stylegan1', str(stylegan1_pt), str(dst), '--noise-seed', '5',
                           '--overwrite']) == 0
  assert listing(dst)['params.npz'] != first['params.npz']   # other constant noise
  assert sorted(os.listdir(tmp_path)) == ['g']   # no temporary folder left behind


def test_relative_src_and_dst(tmp_path, stylegan1_pt):
  """`python -m convert_weights` with SRC and DST relative to the current directory."""
  shutil.copy(stylegan1_pt, tmp_path / 'g.pt')
  result = subprocess.run([sys.executable, '-m', 'convert_weights', 'stylegan1', 'g.pt',
                           'out/g64'], capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=REPO), timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'wrote out/g64' in result.stdout
  assert generators.load(str(tmp_path / 'out' / 'g64')).resolution == 64


def _flip_tensor_bytes(path, count=2000):
  """Flips `count` bytes in the middle of the largest tensor stored in a zip .pt."""
  with zipfile.ZipFile(path) as archive:
    entry = max(archive.infolist(), key=lambda e: e.file_size)
  data = bytearray(path.read_bytes())
  name_length = int.from_bytes(data[entry.header_offset + 26:entry.header_offset + 28], 'little')
  extra_length = int.from_bytes(data[entry.header_offset + 28:entry.header_offset + 30],
                                'little')
  start = entry.header_offset + 30 + name_length + extra_length + entry.file_size // 2
  for i in range(start, start + count):
    data[i] ^= 0x5A
  path.write_bytes(bytes(data))


def test_corrupt_pt_and_nan_weights_are_refused(tmp_path, stylegan1_pt, capsys):
  corrupt = tmp_path / 'corrupt.pt'
  shutil.copy(stylegan1_pt, corrupt)
  _flip_tensor_bytes(corrupt)
  assert convert_cli.main(['stylegan1', str(corrupt), str(tmp_path / 'out')]) == 1
  assert_one_line(capsys.readouterr().err, str(corrupt), 'CRC')
  assert not (tmp_path / 'out').exists()
  # A converted params.npz holding NaN loads no more than it converts.
  dst = tmp_path / 'g'
  assert convert_cli.main(['stylegan1', str(stylegan1_pt), str(dst)]) == 0
  with np.load(dst / 'params.npz') as npz:
    arrays = {k: npz[k] for k in npz.files}
  arrays['synthesis/b8/conv1/weight'][0, 0, 0, 0] = np.nan
  np.savez(dst / 'params.npz', **arrays)
  with pytest.raises(generators.CheckpointError, match='NaN or Inf.*b8/conv1/weight'):
    generators.load(str(dst))


# ----------------------------------------------------------------------------------------
# The final config (after command-line overrides) is checked, in one line.

@pytest.mark.parametrize('override, field', [
    ('generate.drop_fraction=1.5', 'generate.drop_fraction'),
    ('generate.drop_fraction=1.0', 'generate.drop_fraction'),
    ('generate.drop_fraction=-0.5', 'generate.drop_fraction'),
    ('generate.num_samples=0', 'generate.num_samples'),
    ('generate.samples_per_shard=0', 'generate.samples_per_shard'),
    ('generate.batch_size=0', 'generate.batch_size'),
    ('sample.num_samples=-3', 'sample.num_samples'),
    ('generator.noise=loud', 'generator.noise'),
    ('downstream.label_mode=pixels', 'downstream.label_mode'),
    ('evaluate.num_folds=1', 'evaluate.num_folds'),
    ('data.crop_rows=(30,4)', 'data.crop_rows'),
])
def test_overrides_are_validated(override, field):
  """What main does after absl applied the overrides: config_lib.validate."""
  config = config_lib.base()
  config.data.class_names = ('a', 'b')
  name, value = override.split('=')
  node = config
  *parents, leaf = name.split('.')
  for part in parents:
    node = node[part]
  node[leaf] = ast.literal_eval(value) if value[0] in '-0123456789(' else value
  with pytest.raises(InputError, match=f'config.{field}'):
    config_lib.validate(config)


def test_cli_errors_are_one_line(tmp_path):
  bad_config = tmp_path / 'bad_palette.py'
  bad_config.write_text('from configs import test\n\ndef get_config(arg=None):\n'
                        '  config = test.get_config(arg)\n'
                        '  config.data.palette = (1, 2)\n'
                        '  from dgan_jax import config as config_lib\n'
                        '  return config_lib.finalize(config)\n')
  syntax = tmp_path / 'syntax.py'
  syntax.write_text('def get_config(:\n')
  a_file = tmp_path / 'a_file'
  a_file.write_text('')
  cases = [
      (['--config=configs/test.py', '--config.generate.drop_fraction=1.5'],
       'config.generate.drop_fraction must be in [0, 1)'),
      (['--config=configs/test.py', '--config.generate.num_clases=3'],
       "no such config field"),
      (['--config=configs/test.py', '--config.data.num_clases=3'], "did you mean 'num_classes'"),
      ([f'--config={bad_config}'], 'config.data.palette'),
      ([f'--config={syntax}'], f'{syntax}:1: syntax error'),
      ([f'--config={tmp_path / "missing.py"}'], 'missing.py: no such file'),
      (['--config=configs/test.py', f'--workdir={a_file}'], 'is not a folder'),
      (['--config=configs/test.py', '--config.generator.random_init.arch.resolution=-4',
        '--stages=sample'], 'resolution must be a power of two in 4..1024, got -4'),
  ]
  for args, words in cases:
    if not any(a.startswith('--workdir') for a in args):
      args = args + [f'--workdir={tmp_path / "work"}']
    result = run_main(*args)
    assert result.returncode == 1, (args, result.stderr[-2000:])
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and words in last, (args, last)
    assert 'Traceback' not in result.stderr, result.stderr[-2000:]


# ----------------------------------------------------------------------------------------
# Nothing stale is reused.

def test_more_samples_keep_the_old_shards_and_changed_sampling_remakes_all(
    tmp_path, stylegan_workdir):
  """Generate 20 samples (shards of 8, 8, 4). Asking for 24 under the same plan keeps the
  two full shards and makes only the rest. Then another truncation psi: every sample is
  made anew under it, none of the old ones is kept."""
  workdir = tmp_path / 'work'
  shutil.copytree(stylegan_workdir, workdir)
  before = json.loads((workdir / 'dataset' / 'generation.json').read_text())
  raw = workdir / 'generate' / 'raw'
  kept_shards = {name: os.path.getmtime(raw / name) for name in (
      'shard-00000-n8.array_record', 'shard-00001-n8.array_record')}
  result = run_main('--config=configs/test.py', f'--workdir={workdir}', '--stages=generate',
                    '--config.generate.num_samples=24')
  assert result.returncode == 0, result.stderr[-3000:]
  assert {name: os.path.getmtime(raw / name) for name in kept_shards} == kept_shards
  assert (raw / 'shard-00002-n8.array_record').exists()
  more = json.loads((workdir / 'dataset' / 'generation.json').read_text())
  assert [s['uncertainty'] for s in more['samples'][:20]] == [
      s['uncertainty'] for s in before['samples']]
  result = run_main('--config=configs/test.py', f'--workdir={workdir}', '--stages=generate',
                    '--config.generator.truncation_psi=0.3',
                    '--config.generate.num_samples=24')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'starting over' in result.stderr
  after = json.loads((workdir / 'dataset' / 'generation.json').read_text())
  assert after['num_samples'] == 24
  plan = json.loads((workdir / 'generate' / 'plan.json').read_text())
  assert plan['sampling']['truncation_psi'] == 0.3
  old = {s['index']: s['uncertainty'] for s in before['samples']}
  new = {s['index']: s['uncertainty'] for s in after['samples']}
  assert sorted(new) == list(range(24))
  assert all(new[i] != old[i] for i in old)


class _Interrupted(Exception):
  pass


def _interrupted_training(monkeypatch, after_calls: int):
  """Makes the next training run stop as a kill would: once the loop has asked whether
  to go on `after_calls` times (some 50 steps in; the orbax checkpoint and history of the
  steps so far saved), the stage is aborted before it finishes."""
  original = training.run

  def run_then_interrupt(*args, **kwargs):
    calls = iter(range(after_calls + 1))
    kwargs['keep_going'] = lambda: next(calls, after_calls) < after_calls
    original(*args, **kwargs)
    raise _Interrupted
  monkeypatch.setattr(training, 'run', run_then_interrupt)


def _history(workdir):
  with np.load(workdir / 'interpreter' / 'history.npz') as npz:
    return {k: npz[k] for k in npz.files}


def test_resume_keeps_the_history_and_edited_masks_start_over(tmp_path, stylegan_workdir,
                                                              monkeypatch, caplog):
  from configs import test as test_config   # pylint: disable=import-outside-toplevel
  from dgan_jax import stages   # pylint: disable=import-outside-toplevel
  workdir = tmp_path / 'work'
  shutil.copytree(stylegan_workdir, workdir, ignore=shutil.ignore_patterns('interpreter',
                                                                           'dataset',
                                                                           'generate'))
  masks = tmp_path / 'masks'   # the brightness masks, as a folder a person edits
  shutil.copytree(workdir / 'annotate_synthetic', masks)
  config = test_config.get_config()
  config.data.annotation_dir, config.data.synthetic_masks = str(masks), False
  config.interpreter.num_steps, config.interpreter.checkpoint_every = 200, 50
  config.interpreter.log_every = 25
  # Interrupted after 100 steps, then resumed with the same masks: the history covers
  # every step, and the training time both sessions.
  with monkeypatch.context() as patch:
    _interrupted_training(patch, 100)
    with pytest.raises(_Interrupted):
      stages.train_interpreter(config, str(workdir))
  history_file = workdir / 'interpreter.partial' / 'checkpoints' / training.HISTORY_FILE
  first_seconds = json.loads(history_file.read_text())['seconds'][0]   # step 25
  stages.train_interpreter(config, str(workdir))
  history = _history(workdir)
  np.testing.assert_array_equal(history['step'], np.arange(25, 201, 25))
  assert (np.diff(history['seconds']) > 0).all() and history['seconds'][0] == first_seconds
  info = json.loads((workdir / 'interpreter' / 'info.json').read_text())
  assert info['train_seconds'] == pytest.approx(float(history['seconds'][-1]), abs=0.01)
  assert 'starting over' not in caplog.text
  # Interrupted again, then a mask is edited: the run starts over instead of resuming.
  shutil.rmtree(workdir / 'interpreter')
  with monkeypatch.context() as patch:
    _interrupted_training(patch, 100)
    with pytest.raises(_Interrupted):
      stages.train_interpreter(config, str(workdir))
  first_seconds = json.loads(history_file.read_text())['seconds'][0]
  mask = np.asarray(Image.open(masks / 'mask_0.png')).copy()
  mask[:4] = 1
  Image.fromarray(mask).save(masks / 'mask_0.png')
  stages.train_interpreter(config, str(workdir))
  assert 'starting over' in caplog.text
  history = _history(workdir)
  np.testing.assert_array_equal(history['step'], np.arange(25, 201, 25))
  assert history['seconds'][0] != first_seconds


# ----------------------------------------------------------------------------------------
# Malformed files: one line naming the file, never a traceback.

def _tf_pickle(path, gs):
  with open(path, 'wb') as f:
    pickle.dump((gs, gs, gs), f, protocol=2)


def test_malformed_tf_pickles(tmp_path, fake_dnnlib, capsys):
  network = lambda name, variables, components=None: tf_network(fake_dnnlib, name, variables,
                                                                components)
  mapping = network('G_mapping', {'Dense0/weight': np.zeros((4, 4))})
  synthesis = network('G_synthesis', {'4x4/Conv/weight': np.zeros((3, 3, 4, 4))})
  rank1 = network('G_synthesis', {'4x4/Const/const': np.zeros(4),
                                  '4x4/Conv/weight': np.zeros((3, 3, 4, 4))})
  cases = {
      'no_const.pkl': (network('G', {}, {'mapping': mapping, 'synthesis': synthesis}),
                       "no variable 'synthesis/4x4/Const/const'"),
      'variables_dict.pkl': (fake_dnnlib({'name': 'G', 'variables': {'a': 1},
                                          'components': {}}), 'not a list of (name, array)'),
      'components_list.pkl': (network('G', {}, None), 'no mapping/synthesis networks'),
      'state_list.pkl': (fake_dnnlib(['not', 'a', 'dict']), 'not a TF network record'),
      'rank1.pkl': (network('G', {}, {'mapping': mapping, 'synthesis': rank1}), 'wrong rank'),
  }
  cases['components_list.pkl'][0]._state['components'] = [mapping, synthesis]
  for name, (gs, words) in cases.items():
    _tf_pickle(tmp_path / name, gs)
    assert convert_cli.main(['stylegan1', str(tmp_path / name), str(tmp_path / 'out')]) == 1
    assert_one_line(capsys.readouterr().err, name, words)
    assert not (tmp_path / 'out').exists()


def test_malformed_pt_files_and_options(tmp_path, capsys):
  torch.save({'g_mapping.dense0.weight': 'a string'}, tmp_path / 'string.pt')
  member = {f'layers.{i}.{f}': torch.ones(4, 4) if f == 'weight' and i in (0, 3, 6)
            else torch.ones(4) for i in (0, 2, 3, 5, 6) for f in ('weight', 'bias')}
  member.update({f'layers.{i}.{f}': torch.ones(4) for i in (2, 5)
                 for f in ('running_mean', 'running_var')})
  member['layers.0.weight'] = torch.ones(4)
  (tmp_path / 'members').mkdir()
  torch.save(member, tmp_path / 'members' / 'model_0.pth')
  renamed = {k.replace('g_synthesis', 'synthesis_net'): v for k, v in
             rebuild_stylegan1_state_dict(np.load(golden_path('stylegan1_r64_seed0.npz')),
                                          0).items()}
  torch.save({k: torch.from_numpy(v) for k, v in renamed.items()}, tmp_path / 'renamed.pt')
  cases = [
      (['stylegan1', tmp_path / 'string.pt'], ["entry 'g_mapping.dense0.weight' is a str"]),
      (['interpreter', tmp_path / 'members'], ['module.layers.0.weight has shape [4]']),
      (['stylegan1', tmp_path / 'renamed.pt'],
       ['state dict: no g_synthesis.blocks.{r}x{r}.* keys (first keys']),
  ]
  for args, words in cases:
    assert convert_cli.main([*map(str, args), str(tmp_path / 'out')]) == 1
    assert_one_line(capsys.readouterr().err, *words)
    assert not (tmp_path / 'out').exists()
  for option, words in ((['stylegan1', '--noise-seed', '-1'], '--noise-seed: -1 is negative'),
                        (['resnet', '--aspp-rates', 'a,b'], "--aspp-rates: 'a,b' is not")):
    with pytest.raises(SystemExit) as exit_info:
      convert_cli.main([option[0], str(tmp_path / 'string.pt'), str(tmp_path / 'out'),
                        *option[1:]])
    assert exit_info.value.code == 2
    assert_one_line(capsys.readouterr().err, words)


@pytest.mark.parametrize('edit, words', [
    (lambda meta, arrays: meta.update(arch='stylegan1'), 'arch is not a record'),
    (lambda meta, arrays: meta['arch'].update(type=['stylegan1']), 'unknown generator type'),
    (lambda meta, arrays: meta['arch'].update(fmap_max=None), 'fmap_max must be a positive'),
    (lambda meta, arrays: meta['arch'].update(instance_norm_eps='1e-5'),
     'instance_norm_eps must be a positive number'),
    (lambda meta, arrays: meta['arch'].pop('resolution'), 'has no resolution'),
    (lambda meta, arrays: arrays.update(avg_latent=np.zeros(7, np.float32)),
     'average W must be [512]'),
    (lambda meta, arrays: arrays.update({'noise/0': np.zeros((1, 5, 5, 1), np.float32)}),
     'noise/0 must be [1, 4, 4, 1]'),
])
def test_malformed_generator_directory(tmp_path, stylegan1_pt, edit, words):
  dst = tmp_path / 'g'
  assert convert_cli.main(['stylegan1', str(stylegan1_pt), str(dst)]) == 0
  meta = json.loads((dst / 'generator.json').read_text())
  with np.load(dst / 'params.npz') as npz:
    arrays = {k: npz[k] for k in npz.files}
  arrays['avg_latent'] = np.zeros(512, np.float32)
  edit(meta, arrays)
  (dst / 'generator.json').write_text(json.dumps(meta))
  np.savez(dst / 'params.npz', **arrays)
  with pytest.raises(InputError) as error:
    generators.load(str(dst))
  assert words in str(error.value) and str(dst) in str(error.value)


def test_bad_average_w_files(tmp_path):
  config = config_lib.base()
  config.generator.random_init.type = 'stylegan1'
  config.generator.random_init.arch = {'resolution': 8, 'fmap_base': 32, 'fmap_max': 8}
  np.save(tmp_path / 'objects.npy', np.array([{'a': 1}], dtype=object), allow_pickle=True)
  for path, words in ((tmp_path / 'objects.npy', 'not a readable .npy'),
                      (tmp_path / 'missing.npy', 'not a readable .npy')):
    config.generator.avg_latent = str(path)
    with pytest.raises(InputError, match=words):
      generators.from_config(config.generator, 0)


def test_corrupt_json_names_the_file(tmp_path):
  from dgan_jax import io   # pylint: disable=import-outside-toplevel
  path = tmp_path / 'generation.json'
  path.write_text('{"num_samples": 20, ')
  with pytest.raises(InputError, match='generation.json: not valid JSON'):
    io.read_json(str(path))


def test_damaged_inputs_in_a_workdir(tmp_path, stylegan_workdir):
  """A truncated raw shard is made again (a cache); an image_{i}.png that is not an image
  stops the stage with one line."""
  workdir = tmp_path / 'work'
  shutil.copytree(stylegan_workdir, workdir)
  shard = sorted((workdir / 'generate' / 'raw').glob('*.array_record'))[0]
  shard.write_bytes(shard.read_bytes()[:70000])
  shutil.rmtree(workdir / 'dataset')
  result = run_main('--config=configs/test.py', f'--workdir={workdir}', '--stages=generate')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'is damaged; making it again' in result.stderr
  assert json.loads((workdir / 'dataset' / 'generation.json').read_text())['num_samples'] == 20
  shutil.rmtree(workdir / 'interpreter')
  shutil.rmtree(workdir / 'annotate_synthetic')   # remade from annotate/
  (workdir / 'annotate' / 'image_1.png').write_bytes(b'not a png')
  result = run_main('--config=configs/test.py', f'--workdir={workdir}',
                    '--stages=train_interpreter')
  assert result.returncode == 1
  assert_one_line(result.stderr.strip().splitlines()[-1], 'image_1.png', 'not a readable image')
  assert 'Traceback' not in result.stderr


def test_a_full_disk_leaves_no_partial_dataset(tmp_path, stylegan_workdir, monkeypatch):
  """The disk fills up while the dataset is assembled: one error saying how much space it
  needs, and no dataset.partial a rerun could trust."""
  from configs import test as test_config   # pylint: disable=import-outside-toplevel
  from dgan_jax import stages   # pylint: disable=import-outside-toplevel
  from dgan_jax.data import tfds_writer   # pylint: disable=import-outside-toplevel
  workdir = tmp_path / 'work'
  shutil.copytree(stylegan_workdir, workdir)
  shutil.rmtree(workdir / 'dataset')

  def disk_full(self, record):
    raise OSError(errno.ENOSPC, 'No space left on device')
  monkeypatch.setattr(tfds_writer.RecordWriter, 'write_serialized', disk_full)
  with pytest.raises(InputError, match=r'disk filled up.*needs about 0\.\d\d GB free'):
    stages.generate(test_config.get_config(), str(workdir))
  assert sorted(p.name for p in workdir.iterdir() if p.name.startswith('dataset')) == []


def test_a_full_disk_while_writing_shards_keeps_the_finished_ones(tmp_path, stylegan_workdir,
                                                                  monkeypatch):
  from configs import test as test_config   # pylint: disable=import-outside-toplevel
  from dgan_jax import stages   # pylint: disable=import-outside-toplevel
  from dgan_jax.data import tfds_writer   # pylint: disable=import-outside-toplevel
  workdir = tmp_path / 'work'
  shutil.copytree(stylegan_workdir, workdir)
  raw = workdir / 'generate' / 'raw'
  for path in raw.glob('shard-0000[12]*'):   # shards 1 and 2 to make again
    path.unlink()
  shutil.rmtree(workdir / 'dataset')

  def disk_full(self, example):
    raise OSError(errno.ENOSPC, 'No space left on device')
  monkeypatch.setattr(tfds_writer.RecordWriter, 'write', disk_full)
  with pytest.raises(InputError, match=r'disk filled up while writing .*shard-00001-n8'
                                       r'.*finished shards are kept .0 of them.*room for 2'):
    stages.generate(test_config.get_config(), str(workdir))
  assert sorted(p.name for p in raw.iterdir()) == ['shard-00000-n8.array_record',
                                                    'shard-00000-n8.scores.npy']


def test_an_unwritable_workdir_is_one_line(tmp_path, monkeypatch):
  """Tests run as root, for whom permissions do not bite: os.access stands in."""
  from absl import flags   # pylint: disable=import-outside-toplevel
  from dgan_jax import main as main_lib   # pylint: disable=import-outside-toplevel
  workdir = tmp_path / 'read_only'
  workdir.mkdir()
  monkeypatch.setattr(os, 'access', lambda path, mode: str(path) != str(workdir))
  try:
    argv = main_lib.parse_flags(['dgan_jax.main', '--config=configs/test.py',
                                 f'--workdir={workdir}'])
    with pytest.raises(SystemExit, match=f'error: --workdir: {workdir} is not writable'):
      main_lib.main(argv)
  finally:
    flags.FLAGS.unparse_flags()
  assert list(workdir.iterdir()) == []
