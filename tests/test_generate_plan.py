"""docs/reliability.md, No stale reuse: every field of the generate plan (noise, the
generator weights' digest and dtype, the layout, the score's top fraction, the labeler's
weights digest) makes a rerun start generation over, deleting the old shards, and the log
names the stage; the same plan reuses them. In-process, on the tiny StyleGAN of
configs/test.py saved as a converted checkpoint, 4 samples in one shard. The samples come
from a stand-in factory that counts what it is asked for: the plan is made by
stages.generate whatever factory runs, and compiling the real one per changed setting
would cost 4-9 s each (test_reliability restarts the real one on a changed truncation)."""

import importlib
import json
import logging
import os
import shutil

import numpy as np
import pytest

from dgan_jax import generators
from dgan_jax import interpreter
from dgan_jax import stages
from dgan_jax.generators import checkpoint
from test_factory import _ensemble   # a random ensemble whose members disagree
from dgan_jax import features as features_lib


def _config(checkpoint_dir, **overrides):
  config = importlib.import_module('configs.test').get_config()
  with config.unlocked():
    config.generator.random_init.type = ''
    config.generator.checkpoint = str(checkpoint_dir)
    config.generate.num_samples = 4
    config.generate.samples_per_shard = 4
    for key, value in overrides.items():
      section, field = key.split('.')
      config[section][field] = value
  return config


def _save_generator(g, directory) -> None:
  """g as a converted checkpoint, its noise strengths (zero at initialisation) set to 0.5
  so that the noise setting changes the samples."""
  params = checkpoint.unflatten({k: np.full_like(v, 0.5) if k.endswith('noise_strength') else v
                                 for k, v in checkpoint.flatten(g.params).items()})
  checkpoint.save(str(directory), g.arch.to_json(), params,
                  {**{f'noise/{j}': np.asarray(n) for j, n in enumerate(g.const_noise)},
                   'avg_latent': np.asarray(g.avg_latent)})


def _save_labeler(workdir, layout, seed) -> None:
  arch, params, stats = _ensemble(layout, seed=seed)
  target = os.path.join(workdir, 'interpreter')
  shutil.rmtree(target, ignore_errors=True)
  interpreter.save(target, arch, params, stats)


class _CountingFactory:
  """Stands in for factory.Factory in reruns: records the indices asked for and returns
  fixed outputs of the right shapes."""
  asked: list = []
  salt = 0.0   # added to the scores: the first run's differ from the reruns'

  def __init__(self, generator, sampling, labeler, layout, top_fraction=0.1, chunk_rows=32,
               batch_size=0):
    del labeler, top_fraction, chunk_rows, batch_size
    self.sampling, self.layout = sampling, layout
    self.latent_size, self.extra_features, self.num_devices = (
        generator.latent_size, sampling.extra_fields, 1)

  def __call__(self, indices):
    _CountingFactory.asked.extend(int(i) for i in indices)
    n, (h, w) = len(indices), self.layout.output_shape
    return {'image': np.full((n, h, w, 3), 7, np.uint8), 'label': np.ones((n, h, w), np.int32),
            'uncertainty': np.arange(n, dtype=np.float32) / 8 + 0.03125 + self.salt,
            'z': np.zeros((n, self.latent_size), np.float32)}


@pytest.fixture(scope='module')
def generated(tmp_path_factory):
  """A generator checkpoint, a labeler, and a workdir with one finished generate run."""
  root = tmp_path_factory.mktemp('plan')
  test_config = importlib.import_module('configs.test').get_config()
  g = generators.from_config(test_config.generator, test_config.seed)
  _save_generator(g, root / 'g')
  config = _config(root / 'g')
  layout = features_lib.layout_for(generators.load(str(root / 'g')), config.data)
  _save_labeler(str(root / 'work'), layout, seed=1)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(stages.factory_lib, 'Factory', _CountingFactory)
    patch.setattr(_CountingFactory, 'salt', 0.5)
    _CountingFactory.asked = []
    stages.generate(config, str(root / 'work'))
  assert _CountingFactory.asked == [0, 1, 2, 3]
  return root, layout


@pytest.fixture
def counting_factory(monkeypatch):
  monkeypatch.setattr(stages.factory_lib, 'Factory', _CountingFactory)
  monkeypatch.setattr(_CountingFactory, 'salt', 0.0)
  _CountingFactory.asked = []
  return _CountingFactory


def _shards(workdir) -> dict[str, tuple[int, int]]:
  raw = workdir / 'generate' / 'raw'
  return {name: (os.stat(raw / name).st_ino, os.stat(raw / name).st_mtime_ns)
          for name in sorted(os.listdir(raw)) if name.startswith('shard-')}


def _changed_weights(root, workdir):
  """The same architecture, one weight changed: a checkpoint with another digest."""
  changed = workdir.parent / 'g_changed'
  shutil.copytree(root / 'g', changed)
  with np.load(changed / 'params.npz') as npz:
    arrays = {k: npz[k] for k in npz.files}
  name = next(k for k in sorted(arrays) if k.endswith('weight'))
  arrays[name] = arrays[name] * np.float32(1.01)
  np.savez(changed / 'params.npz', **arrays)
  return {'generator.checkpoint': str(changed)}


# field -> (what it records in plan.json, a change of it)
CHANGES = {
    'noise': (('sampling', 'noise'), lambda root, work, layout: {'generator.noise': 'per_sample'}),
    'weights digest': (('weights', 'params'), lambda root, work, layout: _changed_weights(
        root, work)),
    'dtype': (('weights', 'dtype'), lambda root, work, layout: {'generator.dtype': 'bfloat16'}),
    'layout': (('layout',), lambda root, work, layout: {'data.crop_rows': (0, 32)}),
    'top fraction': (('top_fraction',), lambda root, work, layout: {
        'generate.top_fraction': 0.2}),
    'labeler digest': (('labeler',), lambda root, work, layout: (
        _save_labeler(str(work), layout, seed=2), {})[1]),
}


def _plan_value(workdir, keys):
  value = json.loads((workdir / 'generate' / 'plan.json').read_text())
  for key in keys:
    value = value[key]
  return value


@pytest.mark.parametrize('field', list(CHANGES))
def test_a_changed_plan_field_starts_generation_over(field, generated, tmp_path, caplog,
                                                     counting_factory):
  root, layout = generated
  workdir = tmp_path / 'work'
  shutil.copytree(root / 'work', workdir)
  keys, change = CHANGES[field]
  before, old_value = _shards(workdir), _plan_value(workdir, keys)
  old_record = json.loads((workdir / 'dataset' / 'generation.json').read_text())
  assert list(before) == ['shard-00000-n4.array_record', 'shard-00000-n4.scores.npy']
  overrides = change(root, workdir, layout)
  caplog.set_level(logging.INFO, logger='absl')  # absl's own level may be WARNING
  stages.generate(_config(root / 'g', **overrides), str(workdir))
  plan_path = workdir / 'generate' / 'plan.json'
  assert (f'generate: the config or inputs changed since {plan_path} was written; '
          'starting over') in caplog.text
  after = _shards(workdir)
  assert list(after) == list(before)
  for name in before:   # made again, not the old files
    assert after[name] != before[name], name
  assert _plan_value(workdir, keys) != old_value
  assert counting_factory.asked == [0, 1, 2, 3]   # every sample made again
  record = json.loads((workdir / 'dataset' / 'generation.json').read_text())
  assert [s['uncertainty'] for s in record['samples']] == [0.03125, 0.15625, 0.28125, 0.40625]
  assert [s['uncertainty'] for s in old_record['samples']] != [
      s['uncertainty'] for s in record['samples']]


def test_the_same_plan_reuses_everything(generated, tmp_path, caplog, counting_factory):
  """The control: the same weights at another path (the digest, not the path, is
  recorded) and the same settings: the finished dataset is kept, nothing is made."""
  root, _ = generated
  workdir = tmp_path / 'work'
  shutil.copytree(root / 'work', workdir)
  shutil.copytree(root / 'g', tmp_path / 'g_copy')
  before = _shards(workdir)
  dataset = os.stat(workdir / 'dataset' / 'generation.json').st_mtime_ns
  caplog.set_level(logging.INFO, logger='absl')  # absl's own level may be WARNING
  stages.generate(_config(tmp_path / 'g_copy'), str(workdir))
  assert 'starting over' not in caplog.text and 'is complete, skipping' in caplog.text
  assert _shards(workdir) == before and counting_factory.asked == []
  assert os.stat(workdir / 'dataset' / 'generation.json').st_mtime_ns == dataset
