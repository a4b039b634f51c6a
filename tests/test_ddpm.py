"""The DDPM family against openai's guided_diffusion itself (guided-diffusion-sdk 1.0.0) on
tiny UNets whose every weight is random (the convolutions guided-diffusion zero-initialises
too): every block's output and the model output, q_sample, respaced DDPM and DDIM sampling
from the same x_T and step noises; mutations of our functions must fail the comparison;
the pixel features the interpreter sees against ddpm-segmentation's FeatureExtractorDDPM +
collect_features written here in PyTorch from their documented behaviour; the whole
pipeline on configs/test_ddpm.py."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import run_main
from convert_weights import ddpm as convert_ddpm
from dgan_jax import features
from dgan_jax.generators import base
from dgan_jax.generators import checkpoint
from dgan_jax.generators import ddpm
from dgan_jax.generators import ddpm_unet
from dgan_jax.generators import diffusion

torch = pytest.importorskip('torch')
script_util = pytest.importorskip('guided_diffusion.script_util')

UNET_BOUND = 1e-5      # measured 2e-7 .. 8e-7 of range (2026-12-07)
SAMPLE_BOUND = 1e-4    # 10 steps: measured 4.6e-6 .. 1.2e-5 of range
FEATURE_BOUND = 1e-5   # measured ~5e-7 of range

# Few cases, together covering each option both ways: learn_sigma, scale-shift norm,
# res-block up/down sampling, both QKV orders, heads by count and by width, class_cond.
CASES = {
    'sigma_scaleshift_updown_legacy': dict(
        learn_sigma=True, use_scale_shift_norm=True, resblock_updown=True,
        use_new_attention_order=False, class_cond=False, num_heads=1, num_head_channels=16,
        attention_resolutions='32,16'),
    'plain_conv_resample_new_order_class_cond': dict(
        learn_sigma=False, use_scale_shift_norm=False, resblock_updown=False,
        use_new_attention_order=True, class_cond=True, num_heads=2, num_head_channels=-1,
        attention_resolutions='16'),
}


def _flags(case: dict, **extra) -> dict:
  flags = dict(convert_ddpm.FLAG_DEFAULTS, image_size=32, num_channels=32, num_res_blocks=1,
               channel_mult='1,2')
  flags.update(case, **extra)
  return flags


@functools.lru_cache(maxsize=None)
def _reference(name: str):
  """(guided_diffusion's UNetModel with every parameter random, our params, our arch)."""
  flags = _flags(CASES[name])
  model = script_util.create_model(
      flags['image_size'], flags['num_channels'], flags['num_res_blocks'],
      channel_mult=flags['channel_mult'], learn_sigma=flags['learn_sigma'],
      class_cond=flags['class_cond'], attention_resolutions=flags['attention_resolutions'],
      num_heads=flags['num_heads'], num_head_channels=flags['num_head_channels'],
      use_scale_shift_norm=flags['use_scale_shift_norm'],
      resblock_updown=flags['resblock_updown'],
      use_new_attention_order=flags['use_new_attention_order']).eval()
  generator = torch.Generator().manual_seed(sorted(CASES).index(name))
  with torch.no_grad():
    for key, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=generator)
      if key == 'label_emb.weight':
        p.copy_(noise)
      elif p.ndim >= 2:
        p.copy_(noise / np.sqrt(np.prod(p.shape[1:])))
      elif key.endswith('bias'):
        p.copy_(0.1 * noise)
      else:
        p.copy_(1 + 0.1 * noise)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  arch = convert_ddpm.arch_from_flags(flags)
  return model, checkpoint.unflatten(convert_ddpm.to_params(state)), arch


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1)))


def _nhwc(t):
  return np.moveaxis(t.detach().numpy(), 1, -1)


def _worst(ours: np.ndarray, reference: np.ndarray) -> float:
  return float(np.max(np.abs(np.asarray(ours, np.float32) - reference))
               / (reference.max() - reference.min()))


def _unet_errors(name: str) -> dict[str, float]:
  """Ours against guided_diffusion's forward (hooks on every block) -> worst error per
  named output, traced afresh (so a monkeypatched function is what runs)."""
  model, params, arch = _reference(name)
  rng = np.random.RandomState(0)
  x = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
  t = np.array([3, 700], np.float32)
  y = np.array([5, 999]) if arch.num_classes else None
  hooked = {}
  handles = [block.register_forward_hook(
      lambda m, i, out, k=f'{kind}{j}': hooked.__setitem__(k, _nhwc(out)))
             for kind, blocks in (('in', model.input_blocks), ('out', model.output_blocks))
             for j, block in enumerate(blocks)]
  handles.append(model.middle_block.register_forward_hook(
      lambda m, i, out: hooked.__setitem__('middle', _nhwc(out))))
  with torch.no_grad():
    reference = _nhwc(model(_nchw(x), torch.from_numpy(t),
                            None if y is None else torch.from_numpy(y)))
  for h in handles:
    h.remove()

  def ours(params, x, t, y):
    out, named = ddpm_unet.apply(params, arch.unet, x, t, y)
    return out, named

  out, named = jax.jit(ours)(params, x, t, y)
  errors = {'output': _worst(out, reference)}
  errors.update({k: _worst(named[k], v) for k, v in hooked.items() if k != 'middle'})
  return errors


@pytest.mark.parametrize('name', sorted(CASES))
def test_unet_blocks_and_output_match_guided_diffusion(name):
  errors = _unet_errors(name)
  _, _, arch = _reference(name)
  assert set(errors) == {'output'} | {f'in{i}' for i in range(len(
      arch.unet.blocks()['input_blocks']))} | {f'out{i}' for i in range(len(
          arch.unet.blocks()['output_blocks']))}
  worst = max(errors, key=errors.get)
  assert errors[worst] < UNET_BOUND, (worst, errors)


@pytest.mark.parametrize('mutation', ['group_norm_eps', 'attention_scale',
                                      'timestep_embedding_order'])
def test_a_mutated_unet_fails_the_comparison(monkeypatch, mutation):
  """The parity test can fail: each plausible slip, made in our function, takes the
  worst error above the bound."""
  if mutation == 'group_norm_eps':
    monkeypatch.setattr(ddpm_unet, 'GROUP_NORM_EPS', 1e-4)
  elif mutation == 'attention_scale':
    monkeypatch.setattr(ddpm_unet, 'qk_scale', lambda channels: channels ** -0.5)
  else:
    original = ddpm_unet.timestep_embedding

    def flipped(timesteps, dim):   # sin before cos
      embedding = original(timesteps, dim)
      half = dim // 2
      return jnp.concatenate([embedding[:, half:2 * half], embedding[:, :half],
                              embedding[:, 2 * half:]], axis=-1)

    monkeypatch.setattr(ddpm_unet, 'timestep_embedding', flipped)
  errors = _unet_errors('sigma_scaleshift_updown_legacy')
  assert max(errors.values()) > UNET_BOUND, errors


@pytest.mark.parametrize('schedule', ['linear', 'cosine'])
def test_schedule_and_q_sample_are_guided_diffusions(schedule):
  """The float32 coefficient tables equal guided_diffusion's exactly (base and respaced,
  with its timestep map); q_sample agrees to float32 rounding of its two products."""
  for respacing in ('', '7,5', 'ddim10'):
    reference = script_util.create_gaussian_diffusion(steps=100, noise_schedule=schedule,
                                                      timestep_respacing=respacing)
    ours = diffusion.Diffusion(diffusion.DiffusionArch(100, schedule), False, respacing)
    assert ours.timestep_map == reference.timestep_map
    t = np.arange(ours.num_steps)
    for name in ('sqrt_alphas_cumprod', 'sqrt_one_minus_alphas_cumprod',
                 'sqrt_recip_alphas_cumprod', 'sqrt_recipm1_alphas_cumprod',
                 'posterior_mean_coef1', 'posterior_mean_coef2',
                 'posterior_log_variance_clipped', 'alphas_cumprod', 'alphas_cumprod_prev'):
      np.testing.assert_array_equal(np.asarray(ours.coefficient(name, t)).ravel(),
                                    getattr(reference, name).astype(np.float32), err_msg=name)
  rng = np.random.RandomState(1)
  x0 = rng.uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)
  noise = rng.standard_normal((3, 8, 8, 3)).astype(np.float32)
  t = np.array([0, 41, 99])
  base_process = diffusion.Diffusion(diffusion.DiffusionArch(100, schedule), False)
  got = np.asarray(jax.jit(base_process.q_sample)(x0, t, noise))
  reference = script_util.create_gaussian_diffusion(steps=100, noise_schedule=schedule)
  want = _nhwc(reference.q_sample(_nchw(x0), torch.from_numpy(t), _nchw(noise)))
  a = np.asarray(base_process.coefficient('sqrt_alphas_cumprod', t))
  b = np.asarray(base_process.coefficient('sqrt_one_minus_alphas_cumprod', t))
  rounding = 2 * np.finfo(np.float32).eps * (np.abs(a * x0) + np.abs(b * noise))
  assert np.all(np.abs(got - want) <= rounding)


SAMPLING = {   # together: both samplers, learned and fixed-large variance, eta, x_0
               # prediction, rescaled timesteps, both schedules, sectioned and DDIM respacing
    'ddpm_learned_sigma_rescaled_timesteps': dict(
        case='sigma_scaleshift_updown_legacy', sampler='ddpm', respacing='10', eta=0.0,
        arch=dict(rescale_timesteps=True)),
    'ddpm_fixed_large_cosine_sections': dict(
        case='plain_conv_resample_new_order_class_cond', sampler='ddpm', respacing='4,3,3',
        eta=0.0, arch=dict(noise_schedule='cosine')),
    'ddim_eta_half_predict_xstart': dict(
        case='plain_conv_resample_new_order_class_cond', sampler='ddim', respacing='ddim10',
        eta=0.5, arch=dict(predict_xstart=True)),
}


@pytest.mark.parametrize('name', sorted(SAMPLING))
def test_respaced_sampling_follows_guided_diffusion(name, monkeypatch):
  """10 respaced steps from the same x_T, each step's noise fed to guided_diffusion's
  p_sample_loop / ddim_sample_loop in the order it draws them (torch.randn_like)."""
  s = SAMPLING[name]
  model, params, arch = _reference(s['case'])
  flags = dict(steps=100, learn_sigma=arch.learn_sigma, timestep_respacing=s['respacing'],
               noise_schedule=s['arch'].get('noise_schedule', 'linear'),
               predict_xstart=s['arch'].get('predict_xstart', False),
               rescale_timesteps=s['arch'].get('rescale_timesteps', False))
  reference = script_util.create_gaussian_diffusion(**flags)
  process = diffusion.Diffusion(
      diffusion.DiffusionArch(100, flags['noise_schedule'], flags['predict_xstart'],
                              flags['rescale_timesteps']), arch.learn_sigma, s['respacing'])
  assert process.num_steps == 10
  rng = np.random.RandomState(2)
  x_t = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
  noises = rng.standard_normal((10, 2, 32, 32, 3)).astype(np.float32)
  y = np.array([7, 300]) if arch.num_classes else None
  drawn = iter([_nchw(n) for n in noises])
  monkeypatch.setattr(torch, 'randn_like', lambda like: next(drawn))
  kwargs = {'model_kwargs': {'y': torch.from_numpy(y)}} if y is not None else {}
  with torch.no_grad():
    if s['sampler'] == 'ddpm':
      want = reference.p_sample_loop(model, (2, 3, 32, 32), noise=_nchw(x_t), **kwargs)
    else:
      want = reference.ddim_sample_loop(model, (2, 3, 32, 32), noise=_nchw(x_t),
                                        eta=s['eta'], **kwargs)
  assert next(drawn, None) is None   # one noise per step, as ours
  want = _nhwc(want)

  @jax.jit
  def ours(params, x_t, noises):
    unet = lambda x, t: ddpm_unet.apply(params, arch.unet, x, t, y)[0]
    return process.sample(unet, x_t, lambda k: noises[k], s['sampler'], True, s['eta'])

  assert _worst(ours(params, x_t, noises), want) < SAMPLE_BOUND


def test_pixel_features_match_ddpm_segmentation():
  """The interpreter's pixel vectors (FeatureLayout + pixel_features over the generator's
  native maps) against ddpm-segmentation's feature extractor and collect_features as
  their code documents them: one shared noise, q_sample to each step, the UNet run at
  timestep t, forward hooks on output_blocks[b] (their outputs, `.float()`), then each
  map F.interpolate(size=image, mode='bilinear') and concatenated, steps outer, blocks
  inner. Blocks at 16 and 32 px (resized 2x, 1x; features.py's own tests cover other
  factors against F.interpolate)."""
  model, params, arch = _reference('sigma_scaleshift_updown_legacy')
  steps, blocks = (50, 150, 250), (0, 1, 3)
  g = ddpm.DDPMGenerator(arch, params)
  g.select_features(steps, blocks)
  assert [s.name for s in g.feature_specs][:4] == ['t50.out0', 't50.out1', 't50.out3',
                                                   't150.out0']
  assert [s.height for s in g.feature_specs[:3]] == [16, 32, 32]
  sampling = ddpm.DDPMSampling(0, 32, 'ddpm', '', 0.0, True, steps, blocks)
  rng = np.random.RandomState(3)
  images = rng.randint(0, 256, (2, 32, 32, 3)).astype(np.uint8)
  inputs = sampling.from_images(images, None)
  _, maps, _ = jax.jit(lambda v, i: g.apply(v, i, sampling))(g.variables(sampling), inputs)
  layout = features.FeatureLayout.create([s.shape for s in g.feature_specs],
                                         [s.channels for s in g.feature_specs], (32, 32))
  yy, xx = np.meshgrid(np.arange(32), np.arange(32), indexing='ij')

  # ddpm-segmentation, in PyTorch on guided_diffusion's model
  process = script_util.create_gaussian_diffusion(steps=1000, learn_sigma=True)
  saved = {}
  hooks = [model.output_blocks[b].register_forward_hook(
      lambda m, i, out, b=b: saved.__setitem__(b, out.detach().float())) for b in blocks]
  noise = _nchw(np.asarray(sampling.feature_noise()))
  for n in range(len(images)):
    x = torch.from_numpy(np.ascontiguousarray(images[n].transpose(2, 0, 1))).float()[None]
    x = 2 * (x / 255) - 1        # ToTensor, then 2 x - 1
    activations = []
    with torch.no_grad():
      for t in steps:
        t = torch.tensor([t])
        model(process.q_sample(x, t, noise=noise), process._scale_timesteps(t))  # pylint: disable=protected-access
        activations += [saved[b] for b in blocks]
      want = torch.cat([torch.nn.functional.interpolate(a, size=(32, 32), mode='bilinear')[0]
                        for a in activations], dim=0)   # [D, 32, 32]
    got = features.pixel_features(features.keep_rows(maps, layout),
                                  features.device_tables(layout),
                                  np.full(yy.shape, n), yy, xx)
    want = want.numpy().transpose(1, 2, 0)
    assert got.shape == want.shape == (32, 32, layout.dim)
    assert _worst(got, want) < FEATURE_BOUND
  for h in hooks:
    h.remove()


def test_bfloat16_blocks_norms_in_float32():
  """dtype bfloat16: the blocks' maps are bfloat16 and near the float32 ones, the norms,
  embeddings and output head stay float32 (so does the output)."""
  _, params, arch = _reference('sigma_scaleshift_updown_legacy')
  g32 = ddpm.DDPMGenerator(arch, params)
  g16 = ddpm.DDPMGenerator(arch, params, jnp.bfloat16)
  assert g16.params['input_blocks']['1']['0']['in_layers']['2']['weight'].dtype == jnp.bfloat16
  assert g16.params['input_blocks']['1']['0']['in_layers']['0']['weight'].dtype == jnp.float32
  assert g16.params['out']['2']['weight'].dtype == jnp.float32
  x = np.random.RandomState(4).standard_normal((1, 32, 32, 3)).astype(np.float32)
  out32, named32 = g32.unet(x, [100.0])
  out16, named16 = g16.unet(x, [100.0])
  assert out16.dtype == jnp.float32 and named16['out3'].dtype == jnp.bfloat16
  assert _worst(out16, np.asarray(out32)) < 0.05
  assert _worst(named16['out3'], np.asarray(named32['out3'])) < 0.05


def test_config_fields_are_checked():
  from configs import test_ddpm  # pylint: disable=import-outside-toplevel
  from dgan_jax import generators  # pylint: disable=import-outside-toplevel
  from dgan_jax.errors import InputError  # pylint: disable=import-outside-toplevel
  config = test_ddpm.get_config()
  g = generators.from_config(config.generator, config.seed)
  for field, value, message in (('blocks', (1, 4), r'config.ddpm.blocks: \[4\] outside \[0, 4\)'),
                                ('steps', (50, 1000), r'config.ddpm.steps: \[1000\]'),
                                ('timestep_respacing', '2000', 'config.ddpm.timestep_respacing')):
    bad = test_ddpm.get_config()
    bad.ddpm[field] = value
    with pytest.raises(InputError, match=message):
      g.sampling(bad)


def test_every_stage_runs_on_the_tiny_config(tmp_path):
  """configs/test_ddpm.py through all stages (CLI). Independent checks: the layout holds
  guided-diffusion's channels of output blocks 1 and 3 (2 x 32 after the 16 px level's
  upsampling block, then 32) per step; annotated images are encoded as they are (check
  PSNR inf); the sample stage's images (drawn two at a time) are what g.sample draws
  for those numbers four at once: x_T and every step's noise come from (seed, index),
  whatever the batch."""
  from configs import test_ddpm  # pylint: disable=import-outside-toplevel
  from dgan_jax import generators  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / 'work'
  result = run_main('--config=configs/test_ddpm.py', f'--workdir={workdir}',
                    '--config.downstream.resolution=64')
  assert result.returncode == 0, result.stderr[-3000:]
  interpreter = json.loads((workdir / 'interpreter' / 'interpreter.json').read_text())
  assert interpreter['layout']['channels'] == [64, 32] * 3
  assert interpreter['layout']['feature_size'] == [32, 32]
  info = json.loads((workdir / 'interpreter' / 'info.json').read_text())
  assert info['reconstruction_psnr'] == 'inf'
  generation = json.loads((workdir / 'dataset' / 'generation.json').read_text())
  assert (generation['num_samples'], generation['num_kept']) == (20, 18)
  assert set(json.loads((workdir / 'eval.json').read_text())['runs']) >= {'synthetic'}
  assert (workdir / 'report.md').exists()
  config = test_ddpm.get_config()
  g = generators.from_config(config.generator, config.seed)
  drawn = g.sample(np.arange(config.sample.num_samples), seed=config.seed,
                   timestep_respacing=config.ddpm.timestep_respacing)
  expected = np.asarray(base.to_uint8(jnp.clip(drawn, -1, 1)))
  for i in range(config.sample.num_samples):
    stored = np.asarray(Image.open(workdir / 'annotate' / f'image_{i}.png'))
    assert np.abs(stored.astype(int) - expected[i]).max() <= 1
  _check_labeler_row(g, config, workdir)


def _members_vote(workdir, vectors: np.ndarray) -> np.ndarray:
  """The saved MLP ensemble in numpy (Linear-ReLU-BatchNorm twice, Linear; BatchNorm with
  its running statistics), each member's argmax, the majority vote (ties: smallest id):
  vectors [P, D] -> labels [P]."""
  with np.load(workdir / 'interpreter' / 'params.npz') as saved:
    w = {k: saved[k].astype(np.float64) for k in saved.files}
  num_members = w['params/linear0/weight'].shape[0]
  votes = []
  for m in range(num_members):
    h = vectors.astype(np.float64)
    for layer in (0, 1):
      h = np.maximum(h @ w[f'params/linear{layer}/weight'][m]
                     + w[f'params/linear{layer}/bias'][m], 0)
      h = ((h - w[f'batch_stats/norm{layer}/mean'][m])
           / np.sqrt(w[f'batch_stats/norm{layer}/var'][m] + 1e-5)
           * w[f'params/norm{layer}/scale'][m] + w[f'params/norm{layer}/bias'][m])
    votes.append(np.argmax(h @ w['params/linear2/weight'][m] + w['params/linear2/bias'][m], -1))
  votes = np.stack(votes)
  num_classes = w['params/linear2/bias'].shape[-1]
  counts = np.stack([(votes == c).sum(0) for c in range(num_classes)])
  return np.argmax(counts, axis=0)


def _check_labeler_row(g, config, workdir):
  """eval.json's 'labeler' row against the ensemble run here in numpy on g.features of
  the stand-in test images, labels upscaled nearest to downstream.resolution (64, twice
  the generator's 32) as the test labels are, IoU counted by hand, the 5 folds of sorted
  names: each fold's mIoU over the images outside it, mean over classes present."""
  record = json.loads((workdir / 'eval.json').read_text())['runs']['labeler']
  assert record['trained_on'].startswith('the mlp labeler on each test image') and (
      record['num_train_images'] == config.data.num_annotated)
  names = sorted(p.name for p in (workdir / 'test_synthetic').glob('*.png'))
  images = np.stack([np.asarray(Image.open(workdir / 'test_synthetic' / n)) for n in names])
  masks = np.stack([np.load(workdir / 'test_synthetic' / n.replace('.png', '.npy'))
                    for n in names])
  g.select_features(config.ddpm.steps, config.ddpm.blocks)
  maps = g.features(images.astype(np.float32) / 127.5 - 1, seed=config.seed)
  vectors = np.concatenate([np.asarray(jax.image.resize(m, (m.shape[0], 32, 32, m.shape[-1]),
                                                        'bilinear')) for m in maps], -1)
  labels = _members_vote(workdir, vectors.reshape(-1, vectors.shape[-1])).reshape(-1, 32, 32)
  labels, masks = (np.repeat(np.repeat(a, 2, 1), 2, 2) for a in (labels, masks))
  c = config.data.num_classes
  inter = np.stack([[((p == k) & (t == k)).sum() for k in range(c)] for p, t in zip(labels, masks)])
  union = np.stack([[((p == k) | (t == k)).sum() for k in range(c)] for p, t in zip(labels, masks)])
  size = len(names) // 5
  for k, fold in enumerate(record['folds']):
    others = [i for i in range(len(names)) if not k * size <= i < (k + 1) * size]
    i, u = inter[others].sum(0), union[others].sum(0)
    want = np.mean(i[u > 0] / u[u > 0])
    assert abs(fold['test_miou'] - want) < 0.01, (k, fold['test_miou'], want)
