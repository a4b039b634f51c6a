"""VQGAN's autoencoder against taming-transformers 0.0.1's own modules (random weights,
tiny sizes): encoder latents, codebook indices, decoder image and per-level maps."""

import numpy as np
import pytest

import bounds
import conftest
from dgan_jax.generators import vqgan
from dgan_jax.generators.checkpoint import flatten, unflatten

torch = pytest.importorskip('torch')
taming_model = pytest.importorskip('taming.modules.diffusionmodules.model')
taming_quantize = pytest.importorskip('taming.modules.vqvae.quantize')

# Two levels (16 and 8 px), attention at 8 px, a channel change at each level (nin_shortcut).
ARCH = vqgan.VQGANArch(resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                       attn_resolutions=(8,), z_channels=8, n_embed=24, embed_dim=4,
                       n_layer=0)
DDCONFIG = dict(ch=ARCH.ch, out_ch=ARCH.out_ch, ch_mult=ARCH.ch_mult,
                num_res_blocks=ARCH.num_res_blocks, attn_resolutions=ARCH.attn_resolutions,
                dropout=0.0, in_channels=ARCH.in_channels, resolution=ARCH.resolution,
                z_channels=ARCH.z_channels, double_z=False)
# Max |ours - taming| / (taming's max - min): 10x the README's figures (Correctness, VQGAN:
# latents 1.0e-06, image 1.9e-06, worst decoder map 1.9e-06), or 10x this CPU's
# measurement where smaller (latents 9.1e-07, image 1.4e-06, worst map 1.3e-06). The
# squared distances to the codebook are not quoted: measured 1.1e-06, bound 10x; 127 of the
# 128 positions' nearest codes are nearer than the second by more than twice that.
PARITY_BOUNDS = {'latents': 1e-5, 'image': 1.4e-5, 'features': 1.4e-5, 'distances': 1.2e-5}


@pytest.fixture(scope='module')
def reference():
  """taming's Encoder, Decoder, VectorQuantizer and the 1x1 quant convs (as VQModel builds
  them), every tensor drawn at random, and our parameters converted from their state."""
  torch.manual_seed(0)
  modules = torch.nn.ModuleDict({
      'encoder': taming_model.Encoder(**DDCONFIG),
      'decoder': taming_model.Decoder(**DDCONFIG),
      'quantize': taming_quantize.VectorQuantizer(ARCH.n_embed, ARCH.embed_dim, beta=0.25),
      'quant_conv': torch.nn.Conv2d(ARCH.z_channels, ARCH.embed_dim, 1),
      'post_quant_conv': torch.nn.Conv2d(ARCH.embed_dim, ARCH.z_channels, 1)}).eval()
  with torch.no_grad():
    for name, tensor in modules.state_dict().items():
      if 'norm' in name:      # GroupNorm affine: around 1 and 0, not the defaults
        tensor.copy_((1.0 if name.endswith('weight') else 0.0) + 0.2 * torch.randn_like(tensor))
      elif name.endswith('bias'):
        tensor.copy_(0.1 * torch.randn_like(tensor))
  state = {k: v.numpy() for k, v in modules.state_dict().items()}
  params = {}
  for name, value in state.items():
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)     # OIHW -> HWIO
    params[name.replace('.', '/')] = value
  assert {k: v.shape for k, v in params.items()} == vqgan.param_shapes(ARCH)
  return modules, unflatten(params)


def _nchw(x):
  return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())


def _nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def test_param_shapes_are_taming_state_dict(reference):
  """Names and shapes equal those of taming's modules (checked in the fixture); every
  encoder/decoder level is there."""
  _, params = reference
  names = set(flatten(params))
  assert 'decoder/up/0/block/1/nin_shortcut/weight' not in names   # 64 -> 32 in block 0 only
  assert 'decoder/up/0/block/0/nin_shortcut/weight' in names
  assert 'encoder/down/1/attn/0/q/weight' in names and 'decoder/up/1/attn/1/q/weight' in names
  assert 'encoder/down/1/downsample/conv/weight' not in names     # the last level keeps size


def test_encoder_quantizer_decoder_match_taming(reference):
  """README, Correctness, VQGAN: latents, image and worst decoder map within 10x the quoted
  figures; code indices equal wherever taming's nearest code is nearer than the second by
  more than twice the distances' bound (nearly everywhere)."""
  modules, params = reference
  rng = np.random.RandomState(1)
  images = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  with torch.no_grad():
    h = modules['quant_conv'](modules['encoder'](_nchw(images)))
    z_q, _, (_, _, indices) = modules['quantize'](h)
    decoder = modules['decoder']
    # The decoder's forward, step by step, to read each level's output before its upsample.
    x = decoder.conv_in(modules['post_quant_conv'](z_q))
    x = decoder.mid.block_2(decoder.mid.attn_1(decoder.mid.block_1(x, None)), None)
    torch_maps = []
    for level in reversed(range(decoder.num_resolutions)):
      for block in range(decoder.num_res_blocks + 1):
        x = decoder.up[level].block[block](x, None)
        if len(decoder.up[level].attn) > 0:
          x = decoder.up[level].attn[block](x)
      torch_maps.append(_nhwc(x))
      if level != 0:
        x = decoder.up[level].upsample(x)
    torch_image = _nhwc(decoder(modules['post_quant_conv'](z_q)))

  latents = vqgan.encode(params, ARCH, images)
  assert latents.shape == (2, 8, 8, ARCH.embed_dim)
  assert conftest.relative_error(latents, _nhwc(h)) < PARITY_BOUNDS['latents']
  ours_indices, codes = vqgan.quantize(params, latents)
  codebook = np.asarray(params['quantize']['embedding']['weight'], np.float64)
  distances = lambda z: ((np.asarray(z, np.float64).reshape(-1, 1, ARCH.embed_dim)
                          - codebook) ** 2).sum(-1)                   # [B * 8 * 8, n_embed]
  reference_distances = distances(_nhwc(h))
  assert conftest.relative_error(distances(latents), reference_distances) < \
      PARITY_BOUNDS['distances']
  margin = 2 * PARITY_BOUNDS['distances'] * np.ptp(reference_distances)
  bounds.assert_equal_where_decided(np.asarray(ours_indices).reshape(-1),
                                    indices.numpy().reshape(-1), -reference_distances, margin)
  same = np.asarray(ours_indices).reshape(-1) == indices.numpy().reshape(-1)
  np.testing.assert_allclose(np.asarray(codes).reshape(-1, ARCH.embed_dim)[same],
                             _nhwc(z_q).reshape(-1, ARCH.embed_dim)[same], rtol=0, atol=1e-6)
  taming_indices = indices.numpy().reshape(2, 8, 8)
  np.testing.assert_array_equal(   # a table lookup: the stored floats themselves
      vqgan.codebook_entries(params, taming_indices),
      _nhwc(modules['quantize'].get_codebook_entry(indices.reshape(-1),
                                                   (2, 8, 8, ARCH.embed_dim))))

  # The decoder from taming's codes (an index may differ at a near tie).
  image, maps = vqgan.decode(params, ARCH, _nhwc(z_q))
  assert [(m.shape[1], m.shape[3]) for m in maps] == [(r, c) for _, r, c in ARCH.feature_maps]
  assert conftest.relative_error(image, torch_image) < PARITY_BOUNDS['image']
  for ours, theirs in zip(maps, torch_maps, strict=True):
    assert conftest.relative_error(ours, theirs) < PARITY_BOUNDS['features']
  assert np.std(np.asarray(image)) > 0.05   # weights that do something
