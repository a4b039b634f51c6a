"""`python -m convert_weights vqgan`: what it does not read is refused with the field named
(other permuters, conditionings, a Gumbel quantizer), and the decoder maps of taming's
ImageNet model are named and sized as docs/generators.md says, against taming's own
Decoder."""

import copy

import pytest
import yaml

from convert_weights import __main__ as convert_main
from convert_weights import vqgan as convert_vqgan

torch = pytest.importorskip('torch')
taming_model = pytest.importorskip('taming.modules.diffusionmodules.model')
from test_convert_vqgan import _project   # pylint: disable=wrong-import-position

GUMBEL = 'taming.models.vqgan.GumbelVQ'


def _edited(edit) -> dict:
  record = copy.deepcopy(_project('cin_transformer'))
  edit(record['model'])
  return record


CASES = {
    # taming.modules.transformer.permuter's other orders of the code grid
    'zcurve permuter': (lambda m: m['params'].update(permuter_config={
        'target': 'taming.modules.transformer.permuter.ZCurve', 'params': {'H': 8, 'W': 8}}),
        ["permuter 'taming.modules.transformer.permuter.ZCurve'"]),
    'spiral permuter': (lambda m: m['params'].update(permuter_config={
        'target': 'taming.modules.transformer.permuter.SpiralOut', 'params': {'H': 8, 'W': 8}}),
        ['permuter', 'SpiralOut']),
    # unconditional (taming's DummyCondStage) and image-conditioned (a VQGAN of depth or
    # segmentation maps) transformers
    'unconditional': (lambda m: m['params']['cond_stage_config'].update(
        target='taming.models.dummy_cond_stage.DummyCondStage'),
        ["model.params.cond_stage_config is 'taming.models.dummy_cond_stage.DummyCondStage'"]),
    'image conditioning': (lambda m: m['params']['cond_stage_config'].update(
        target='taming.models.vqgan.VQModel'),
        ["model.params.cond_stage_config is 'taming.models.vqgan.VQModel'"]),
    'conditioning named by a string': (lambda m: m['params'].update(
        cond_stage_config='__is_unconditional__'),
        ["model.params.cond_stage_config is '__is_unconditional__'"]),
    # a Gumbel-softmax quantizer: the transformer's first stage, or the model alone
    'gumbel first stage': (lambda m: m['params']['first_stage_config'].update(target=GUMBEL),
                           [f"model.params.first_stage_config is '{GUMBEL}'"]),
    'gumbel alone': (lambda m: m.update(target=GUMBEL), [f"model.target '{GUMBEL}'"]),
}


@pytest.mark.parametrize('case', list(CASES))
def test_unsupported_taming_models_are_refused_with_the_field_named(case, tmp_path, capsys):
  edit, words = CASES[case]
  config = tmp_path / 'project.yaml'
  config.write_text(yaml.safe_dump(_edited(edit)))
  ckpt = tmp_path / 'last.ckpt'
  ckpt.write_bytes(b'not read: the YAML is refused first')
  dst = tmp_path / 'out'
  assert convert_main.main(['vqgan', str(ckpt), str(dst), '--config', str(config)]) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith(f'error: {config}: '), err
  for word in words:
    assert word in err, (word, err)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['last.ckpt', 'project.yaml']


# taming's ImageNet cin_transformer (2021-04-03T19-39-50_cin_transformer's project.yaml):
# the first stage's ddconfig.
IMAGENET_DDCONFIG = dict(double_z=False, z_channels=256, resolution=256, in_channels=3,
                         out_ch=3, ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2,
                         attn_resolutions=[16], dropout=0.0)


def test_feature_maps_of_the_imagenet_model_are_named_and_sized_as_documented():
  """up4 (16 px, 512 channels) to up0 (256 px, 128 channels): taming's decoder.up[level]
  outputs, highest level first, as taming's Decoder (built on the meta device, no
  weights) has them."""
  record = _project('cin_transformer')
  record['model']['params']['first_stage_config']['params'].update(
      ddconfig=IMAGENET_DDCONFIG, n_embed=16384, embed_dim=256)
  record['model']['params']['transformer_config']['params'].update(
      vocab_size=16384, block_size=256, n_layer=24, n_head=16, n_embd=1536)
  record['model']['params']['cond_stage_config']['params']['n_classes'] = 1000
  _, arch = convert_vqgan.arch_from_yaml(record, 'project.yaml')
  with torch.device('meta'):
    decoder = taming_model.Decoder(**IMAGENET_DDCONFIG)
  expected, resolution = [], IMAGENET_DDCONFIG['resolution'] // 2 ** (decoder.num_resolutions - 1)
  for level in reversed(range(decoder.num_resolutions)):
    last = decoder.up[level].block[-1]
    expected.append((f'up{level}', resolution, last.conv2.out_channels))
    if level != 0:
      resolution *= 2
  assert arch.feature_maps == expected
  assert expected[0] == ('up4', 16, 512) and expected[-1] == ('up0', 256, 128)
  assert arch.code_resolution == 16 and arch.resolution == 256
