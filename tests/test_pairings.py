"""Every generator family with every labeler, end to end through the CLI on tiny random
weights: sample, train_interpreter and generate, and a stored sample recomputed outside
the compiled generate step (the generator's own image, every member's prediction on the
fully resized feature maps, the vote and the Jensen-Shannon score in numpy)."""

import importlib
import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import conftest
from dgan_jax import features
from dgan_jax import generators
from dgan_jax import interpreter
from dgan_jax.bigdatasetgan import head as head_lib
from dgan_jax.data import images as image_utils

CONV_HEAD = {'labeler': 'conv_head', 'biggan.head.group_sizes': (8, 16, 32),
             'biggan.head.group_channels': (16, 8, 8), 'biggan.head.num_members': 2,
             'biggan.train.num_steps': 30, 'biggan.train.log_every': 10}
MLP = {'labeler': 'mlp', 'interpreter.num_members': 3, 'interpreter.num_steps': 150,
       'interpreter.log_every': 50}
PAIRINGS = {('test', 'mlp'): {}, ('test', 'conv_head'): CONV_HEAD,
            ('test_biggan', 'mlp'): MLP, ('test_biggan', 'conv_head'): {}}


def _config_and_flags(name, overrides):
  """The config file with `overrides` applied, and the same overrides as CLI flags."""
  config = importlib.import_module(f'configs.{name}').get_config()
  flags = []
  with config.unlocked():
    for field, value in overrides.items():
      *parents, leaf = field.split('.')
      node = config
      for part in parents:
        node = node[part]
      node[leaf] = value
      text = ','.join(map(str, value)) if isinstance(value, tuple) else str(value)
      flags.append(f'--config.{field}={text}')
  return config, flags


def _entropy(p, axis=-1):
  return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=axis)


def _vote_and_score(member_probs, top_fraction):
  """member_probs [M, H, W, C] (float64) -> (label [H, W]: most votes, ties to the
  smallest class; score: mean of the top fraction of pixel JS divergences)."""
  num_classes = member_probs.shape[-1]
  votes = np.stack([(member_probs.argmax(-1) == c).sum(0) for c in range(num_classes)], -1)
  js = _entropy(member_probs.mean(0)) - _entropy(member_probs).mean(0)
  top = np.sort(js.ravel())[::-1][:max(1, int(js.size * top_fraction))]
  return votes.argmax(-1), top.mean()


def _direct(config, workdir, g, inputs):
  """One sample labelled the slow way: -> (image uint8 on the grid, label, score)."""
  sampling = g.sampling(config)
  image, maps = g.regenerate(inputs, sampling)
  layout = features.layout_for(g, config.data)
  start, stop = layout.crop_rows
  image = image_utils.crop_rows(image_utils.to_uint8(image), config.data)[0]
  if config.labeler == 'mlp':
    _, params, stats, _ = interpreter.load(str(workdir / 'interpreter'))
    full = np.concatenate([np.asarray(features.upsample(m, t))[0] for m, t in
                           zip(features.keep_rows(maps, layout), layout.tables())], -1)
    logits = np.asarray(interpreter.logits(params, stats, full.reshape(-1, full.shape[-1])),
                        np.float64).reshape((-1,) + full.shape[:2] + (config.data.num_classes,))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
  else:
    arch, variables, _ = head_lib.load(str(workdir / 'head'))
    cond = None
    if g.cond_dim:
      cond = np.asarray(g.class_embedding(inputs['class_id']))
    logits, _ = head_lib.apply(arch, variables, maps, cond)
    logits = np.asarray(logits, np.float64)[:, 0, start:stop]     # the grid is a row crop
    if arch.num_outputs == 1:
      p = 1 / (1 + np.exp(-logits[..., 0]))
      probs = np.stack([1 - p, p], -1)
    else:
      probs = np.exp(logits - logits.max(-1, keepdims=True))
      probs /= probs.sum(-1, keepdims=True)
  label, score = _vote_and_score(probs, config.generate.top_fraction)
  return image, label, score


@pytest.mark.slow
@pytest.mark.parametrize('pairing', list(PAIRINGS), ids=lambda p: f'{p[0]}-{p[1]}')
def test_generator_and_labeler_pairing_end_to_end(tmp_path, pairing, request):
  name, labeler = pairing
  config, flags = _config_and_flags(name, PAIRINGS[pairing])
  assert config.labeler == labeler
  if flags:
    workdir = tmp_path / 'work'
    result = conftest.run_main(f'--config=configs/{name}.py', f'--workdir={workdir}',
                               conftest.LABEL_STAGES, *flags, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
  else:   # the config's own pairing: the session's run of it
    workdir = request.getfixturevalue(
        'stylegan_workdir' if name == 'test' else 'biggan_workdir')

  folder = workdir / ('interpreter' if labeler == 'mlp' else 'head')
  info = json.loads((folder / 'info.json').read_text())
  steps = config.interpreter.num_steps if labeler == 'mlp' else config.biggan.train.num_steps
  assert info['steps'] == steps
  assert (folder / 'check.png').is_file() and (folder / 'preview.png').is_file()
  # Brightness bands are a function of the image: the labeler learns them.
  assert info['preview_pixel_agreement'] > 0.6

  g = generators.from_config(config.generator, config.seed)
  sampling = g.sampling(config)
  count = sampling.count('generate', config)
  builder = tfds.builder_from_directory(str(workdir / 'dataset'))
  records = {int(r['index']): r for split in ('train', 'dropped')
             for r in builder.as_data_source(split)}
  assert sorted(records) == list(range(count))
  kept = len(builder.as_data_source('train'))
  assert kept == count - int(count * config.generate.drop_fraction)
  for index in (0, count - 1):
    record = records[index]
    inputs = jax.device_get(sampling.draw('generate', np.asarray([index], np.uint32)))
    np.testing.assert_allclose(record['latent'], inputs['z'][0], rtol=1e-6, atol=1e-7)
    image, label, score = _direct(config, workdir, g, {**inputs, 'z': record['latent'][None]})
    assert record['image'].shape == image.shape
    assert np.abs(record['image'].astype(int) - image).max() <= 1
    assert np.mean(record['label'] == label) > 0.999
    assert float(record['uncertainty']) == pytest.approx(score, rel=1e-3, abs=1e-6)
    assert record['label'].max() < config.data.num_classes
