"""`python -m convert_weights vqgan` on taming-layout log folders written here (random
weights, tiny sizes, Lightning's checkpoint layout), and the converted generator against
taming-transformers 0.0.1's own modules: greedy class-conditional sampling (Net2NetTransformer
.sample with the class token, then decode_to_img) and encode -> quantize -> decode."""

import collections
import os

import jax.numpy as jnp
import numpy as np
import pytest
import yaml

import bounds
import conftest
from convert_weights import __main__ as convert_main
from convert_weights import safe_load
from dgan_jax import config as config_lib
from dgan_jax import generators
from dgan_jax.errors import InputError
from dgan_jax.generators import mingpt
from dgan_jax.generators import vqgan
from dgan_jax.generators.checkpoint import CheckpointError

torch = pytest.importorskip('torch')
taming_model = pytest.importorskip('taming.modules.diffusionmodules.model')
taming_quantize = pytest.importorskip('taming.modules.vqvae.quantize')
taming_gpt = pytest.importorskip('taming.modules.transformer.mingpt')

# 16 px, two levels (attention at 8 px), 8x8 codes of 64; a 2-layer transformer over them
# and 10 class tokens.
DDCONFIG = dict(double_z=False, z_channels=8, resolution=16, in_channels=3, out_ch=3, ch=32,
                ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], dropout=0.0)
N_EMBED, EMBED_DIM, CODES = 64, 4, 64
GPT = dict(vocab_size=N_EMBED, block_size=CODES, n_layer=2, n_head=2, n_embd=32)
NUM_CLASSES = 10
# Max |ours - taming| / (taming's max - min), 10x this CPU's measurements: the converted
# transformer's logits (2.9e-06; 2.2e-06 with the KV cache), the image decoded from the
# tokens as decode_to_img (6.6e-07) and VQModel's reconstruction (1.1e-06). The README
# quotes 1e-4 for the last two.
LOGITS_BOUND, IMAGE_BOUND, RECONSTRUCTION_BOUND = 3e-5, 7e-6, 1.1e-5


def _project(kind: str) -> dict:
  first = {'embed_dim': EMBED_DIM, 'n_embed': N_EMBED, 'ddconfig': DDCONFIG,
           'lossconfig': {'target': 'taming.modules.losses.DummyLoss'}}
  if kind == 'VQModel':
    return {'model': {'base_learning_rate': 4.5e-6, 'target': 'taming.models.vqgan.VQModel',
                      'params': first}}
  return {'model': {'base_learning_rate': 4.5e-6,
                    'target': 'taming.models.cond_transformer.Net2NetTransformer',
                    'params': {
                        'first_stage_key': 'image', 'cond_stage_key': 'class_label',
                        'transformer_config': {'target': 'taming.modules.transformer.mingpt.GPT',
                                               'params': GPT},
                        'first_stage_config': {'target': 'taming.models.vqgan.VQModel',
                                               'params': first},
                        'cond_stage_config': {'target': 'taming.modules.util.Labelator',
                                              'params': {'n_classes': NUM_CLASSES}}}}}


class ModelCheckpoint:
  """Stands in for Lightning's callback class, which Lightning 1.0 (taming's) used as the
  key of its callback state: pickled by reference, never imported when read."""


class Payload:   # pickled by reference: a checkpoint that would construct it is refused
  pass


def _randomise(module: torch.nn.Module, scale: float) -> None:
  """Every tensor drawn at random (norm scales around 1), so that nothing is a default."""
  with torch.no_grad():
    for name, tensor in module.state_dict().items():
      if name.endswith('attn.mask'):
        continue
      if 'norm' in name or '.ln' in name or name.startswith('ln'):
        tensor.copy_((1.0 if name.endswith('weight') else 0.0) + 0.2 * torch.randn_like(tensor))
      elif name.endswith('bias'):
        tensor.copy_(0.1 * torch.randn_like(tensor))
      elif 'emb' in name or len(tensor.shape) >= 2:
        tensor.copy_(scale * torch.randn_like(tensor) / max(1, tensor[0].numel()) ** 0.5
                     if len(tensor.shape) == 4 else scale * torch.randn_like(tensor))


@pytest.fixture(scope='module')
def taming(tmp_path_factory):
  """taming's modules with random weights, and two log folders in taming's layout: a
  cin_transformer and a VQGAN alone (with a discriminator's `loss.*` keys)."""
  torch.manual_seed(0)
  first = torch.nn.ModuleDict({
      'encoder': taming_model.Encoder(**DDCONFIG),
      'decoder': taming_model.Decoder(**DDCONFIG),
      'quantize': taming_quantize.VectorQuantizer(N_EMBED, EMBED_DIM, beta=0.25),
      'quant_conv': torch.nn.Conv2d(DDCONFIG['z_channels'], EMBED_DIM, 1),
      'post_quant_conv': torch.nn.Conv2d(EMBED_DIM, DDCONFIG['z_channels'], 1)}).eval()
  gpt = taming_gpt.GPT(**GPT).eval()
  _randomise(first, 1.0)
  _randomise(gpt, 0.5)
  root = tmp_path_factory.mktemp('taming')
  folders = {}
  for kind, state in (
      ('cin_transformer', {**{f'first_stage_model.{k}': v for k, v in first.state_dict().items()},
                           **{f'transformer.{k}': v for k, v in gpt.state_dict().items()}}),
      ('VQModel', {**first.state_dict(),
                   'loss.discriminator.main.0.weight': torch.randn(8, 3, 4, 4),
                   'loss.logvar': torch.zeros(())})):
    folder = root / f'2021-04-03T19-39-50_{kind}'
    (folder / 'configs').mkdir(parents=True)
    (folder / 'checkpoints').mkdir()
    (folder / 'configs' / '2021-04-03T19-39-50-project.yaml').write_text(
        yaml.safe_dump(_project(kind)))
    torch.save({'epoch': 3, 'global_step': 1200, 'pytorch-lightning_version': '1.0.8',
                'state_dict': collections.OrderedDict(state),
                'hyper_parameters': {'learning_rate': 4.5e-6, 'ckpt_path': None},
                # Lightning 1.0 keys a callback's state by its class; later, by its name.
                'callbacks': {ModelCheckpoint if kind == 'cin_transformer'
                              else 'ModelCheckpoint': {'best_model_score': torch.tensor(0.5),
                                                       'best_model_path': 'last.ckpt'}},
                'optimizer_states': [{'state': {}, 'param_groups': [{'lr': 1e-3,
                                                                     'params': [0, 1]}]}],
                'lr_schedulers': []}, folder / 'checkpoints' / 'last.ckpt')
    folders[kind] = folder
  return first, gpt, folders, root


@pytest.fixture(scope='module')
def converted(taming):
  _, _, folders, root = taming
  out = {}
  for kind, folder in folders.items():
    dst = root / f'converted_{kind}'
    assert convert_main.main(['vqgan', str(folder), str(dst)]) == 0
    out[kind] = generators.load(str(dst))
  return out


def _nchw(x):
  return torch.from_numpy(np.asarray(x, np.float32).transpose(0, 3, 1, 2).copy())


def _taming_decode(first, indices: torch.Tensor) -> np.ndarray:
  """Net2NetTransformer.decode_to_img: codebook entries -> post_quant_conv -> decoder."""
  r = int(CODES ** 0.5)
  codes = first['quantize'].get_codebook_entry(indices.reshape(-1),
                                               shape=(len(indices), r, r, EMBED_DIM))
  return first['decoder'](first['post_quant_conv'](codes)).numpy().transpose(0, 2, 3, 1)


def _vqgan_config(**vqgan):
  config = config_lib.base()
  config.biggan.class_idx = (3, 7)
  config.biggan.samples_per_class = 4
  config.vqgan.top_k = 0   # the default (600) is for 16384 codes
  for key, value in vqgan.items():
    config.vqgan[key] = value
  return config


def _taming_logits(gpt, sequence) -> np.ndarray:
  with torch.no_grad():
    return gpt(torch.as_tensor(np.asarray(sequence)))[0].numpy().astype(np.float64)


def test_cin_transformer_samples_greedily_as_taming(taming, converted):
  """Net2NetTransformer.sample(x=[], c=class token, steps=64, sample=False) with its class
  token cut off, decoded as decode_to_img: the same tokens (every one decided by taming's
  logits by more than twice their bound, so the images compare), the image within 10x
  the measured error."""
  first, gpt, _, _ = taming
  g = converted['cin_transformer']
  assert (g.arch.n_layer, g.num_classes, g.latent_size, g.resolution) == (2, 10, 64, 16)
  classes = np.array([3, 7, 3])
  with torch.no_grad():
    sequence = taming_gpt.sample(gpt, torch.from_numpy(classes)[:, None], CODES, sample=False)
    expected_tokens = sequence[:, 1:]
    expected_image = _taming_decode(first, expected_tokens)
  z = np.zeros((3, CODES), np.float32)   # unused when greedy
  logits = _taming_logits(gpt, sequence[:, :-1])          # [3, 64, vocab]: token t's
  ours = mingpt.forward(g.params['transformer'], g.arch.gpt,
                        jnp.asarray(sequence[:, :-1].numpy()))
  assert conftest.relative_error(ours, logits) < LOGITS_BOUND
  margin = 2 * LOGITS_BOUND * np.ptp(logits)
  tokens = g.sample_tokens(classes, z, greedy=True)
  bounds.assert_equal_where_decided(tokens, expected_tokens.numpy(), logits, margin,
                                    min_share=1.0, sequential_axis=1)
  assert len(np.unique(tokens)) > 10
  image, maps = g.decode_tokens(tokens)
  assert conftest.relative_error(image, expected_image) < IMAGE_BOUND
  assert [m.shape for m in maps] == [(3, 8, 8, 64), (3, 16, 16, 32)]
  # The pipeline's pure function with config.vqgan.greedy draws the same images.
  sampling = g.sampling(_vqgan_config(greedy=True))
  regenerated, _ = g.regenerate({'z': z, 'class_id': classes}, sampling)
  assert conftest.relative_error(regenerated, expected_image) < IMAGE_BOUND
  # top_k=1 leaves one token to draw: the drawing path gives the greedy tokens.
  bounds.assert_equal_where_decided(
      g.sample_tokens(classes, np.random.randn(3, CODES), top_k=1), expected_tokens.numpy(),
      logits, margin, min_share=1.0, sequential_axis=1)


def test_samples_depend_on_their_index_alone(converted):
  """Sample i's z comes from (seed, class, number): drawn alone or in a batch (two compiled
  programs) it gives the same tokens wherever u is clear of the ends of its token's share
  of the cumulative softmax by more than the logits' error reaches (here every token of
  sample 6, so the images compare); its stored z regenerates it; top-k keeps draws among
  the k likeliest."""
  g = converted['cin_transformer']
  sampling = g.sampling(_vqgan_config(top_k=5))
  batch = sampling.draw('generate', np.arange(8, dtype=np.uint32))
  alone = sampling.draw('generate', np.array([6], np.uint32))
  np.testing.assert_array_equal(np.asarray(batch['class_id']), [3] * 4 + [7] * 4)
  np.testing.assert_array_equal(batch['z'][6:7], alone['z'])
  tokens = np.asarray(g.sample_tokens(batch['class_id'], batch['z'], top_k=5))
  sequence = np.concatenate([np.asarray(batch['class_id'])[:, None], tokens], axis=1)
  logits = np.asarray(mingpt.forward(g.params['transformer'], g.arch.gpt,
                                     jnp.asarray(sequence[:, :-1])), np.float64)
  kept = np.where(logits < np.sort(logits, -1)[..., -5:-4], -np.inf, logits)   # the top 5
  probabilities = np.exp(kept - kept.max(-1, keepdims=True))
  cumulative = np.cumsum(probabilities / probabilities.sum(-1, keepdims=True), -1)
  # A logit error e moves the cumulative probabilities by at most 2 e; the top two
  # inversion scores differ by twice u's distance from its interval's nearer end.
  scores = bounds.inversion_scores(cumulative, np.asarray(vqgan.uniforms_of(batch['z'])))
  bounds.assert_equal_where_decided(
      g.sample_tokens(alone['class_id'], alone['z'], top_k=5), tokens[6:7], scores[6:7],
      4 * LOGITS_BOUND * np.ptp(logits), min_share=1.0, sequential_axis=1)
  images, _ = g.regenerate(batch, sampling)
  image, _ = g.regenerate(alone, sampling)
  np.testing.assert_allclose(images[6:7], image, atol=1e-5)
  stored = sampling.from_annotations(np.asarray(batch['z'][6:7]), 'z', np.array([6]),
                                     np.array([7]))
  np.testing.assert_allclose(g.regenerate(stored, sampling)[0], image, atol=1e-5)
  assert len({tuple(t) for t in tokens}) == 8   # eight different samples
  top5 = np.argsort(-logits, axis=-1)[..., :5]
  assert all(tokens[b, t] in top5[b, t] for b in range(8) for t in range(CODES))


def test_encoded_images_are_taming_reconstructions(taming, converted):
  """Annotated images go encode -> quantize -> decode, as VQModel's forward does."""
  first, _, _, _ = taming
  images = np.random.RandomState(1).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  with torch.no_grad():
    h = first['quant_conv'](first['encoder'](_nchw(images)))
    quantized, _, (_, _, indices) = first['quantize'](h)
    expected = first['decoder'](first['post_quant_conv'](quantized)).numpy().transpose(
        0, 2, 3, 1)
  for kind in ('cin_transformer', 'VQModel'):
    reconstruction, _ = converted[kind].reconstruct(images)
    assert conftest.relative_error(reconstruction, expected) < RECONSTRUCTION_BOUND, kind
  g = converted['cin_transformer']
  inputs = g.sampling(_vqgan_config()).from_images(
      np.round((images + 1) * 127.5).astype(np.uint8), None)
  assert set(inputs) == {'image', 'z', 'class_id'}
  assert np.abs(inputs['image'] - images).max() <= 1 / 255


def test_a_vqgan_alone_converts_but_cannot_sample(converted):
  g = converted['VQModel']
  assert g.arch.n_layer == 0 and 'transformer' not in g.params
  with pytest.raises(InputError, match='no transformer'):
    g.sampling(_vqgan_config())


def _convert_fails(args, capsys) -> str:
  assert convert_main.main(['vqgan', *map(str, args)]) == 1
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1
  return lines[0]




def test_bad_sources_get_one_line_naming_the_file(taming, tmp_path, capsys):
  _, _, folders, _ = taming
  folder = folders['cin_transformer']
  ckpt = folder / 'checkpoints' / 'last.ckpt'
  yaml_path = folder / 'configs' / '2021-04-03T19-39-50-project.yaml'
  dst = tmp_path / 'out'
  # A .ckpt without its YAML; a folder without a checkpoint.
  assert '--config' in _convert_fails([ckpt, dst], capsys)
  (tmp_path / 'empty').mkdir()
  assert 'last.ckpt' in _convert_fails([tmp_path / 'empty', dst], capsys)
  # A truncated checkpoint.
  broken = tmp_path / 'broken.ckpt'
  broken.write_bytes(ckpt.read_bytes()[:5000])
  assert str(broken) in _convert_fails([broken, dst, '--config', yaml_path], capsys)
  # The cin_transformer's Lightning-1.0 callback key defeats the weights-only unpickler;
  # the converter read it with the restricted one (the fixture converted it).
  with pytest.raises(CheckpointError, match='refusing to load class .*ModelCheckpoint'):
    safe_load.load_torch_object(str(ckpt))
  # A checkpoint holding an object of another class: refused by its name, never built.
  evil = tmp_path / 'evil.ckpt'
  for payload in (Payload(), collections.Counter('ab')):
    torch.save({'state_dict': {}, 'callbacks': {ModelCheckpoint: payload}}, evil)
    line = _convert_fails([evil, dst, '--config', yaml_path], capsys)
    assert str(evil) in line and type(payload).__name__ in line, line
  # YAML that is not YAML, and one whose transformer is wider than the weights.
  bad_yaml = tmp_path / 'bad.yaml'
  bad_yaml.write_text('model: [unclosed')
  assert str(bad_yaml) in _convert_fails([ckpt, dst, '--config', bad_yaml], capsys)
  wider = _project('cin_transformer')
  wider['model']['params']['transformer_config']['params']['n_embd'] = 64
  wide_yaml = tmp_path / 'wide.yaml'
  wide_yaml.write_text(yaml.safe_dump(wider))
  line = _convert_fails([ckpt, dst, '--config', wide_yaml], capsys)
  assert str(ckpt) in line and 'wrong shape' in line
  # A YAML with python tags is refused by the safe loader (nothing is constructed).
  tagged = tmp_path / 'tagged.yaml'
  tagged.write_text('model: !!python/object/apply:os.system ["echo hi"]\n')
  assert str(tagged) in _convert_fails([ckpt, dst, '--config', tagged], capsys)
  assert not os.path.exists(dst)


def test_bfloat16_generator_samples_and_decodes(taming, converted):
  """In bfloat16 (accelerators) the KV cache and codes follow the compute dtype: sampling
  and decoding run and stay close to float32's (tokens may differ: rounding)."""
  _, _, _, root = taming
  g = generators.load(str(root / 'converted_cin_transformer'), jnp.bfloat16)
  tokens = np.asarray(g.sample_tokens([3, 7], np.random.randn(2, CODES), top_k=8))
  assert tokens.shape == (2, CODES) and 0 <= tokens.min() and tokens.max() < N_EMBED
  image, maps = g.decode_tokens(tokens)
  assert image.dtype == jnp.float32 and np.isfinite(np.asarray(image)).all()
  assert all(m.dtype == jnp.bfloat16 for m in maps)
  np.testing.assert_allclose(image, converted['cin_transformer'].decode_tokens(tokens)[0],
                             atol=0.1)
