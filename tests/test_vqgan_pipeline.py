"""VQGAN in the pipeline: configs/test_vqgan.py through every stage, and annotated images
that train the labeler through the encoder (a plain folder of photographs of any shape,
a BigGAN run's BigDatasetGAN-layout folder without latents)."""

import importlib
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import conftest
from dgan_jax import generators
from dgan_jax import stages
from dgan_jax.bigdatasetgan import head as head_lib
from dgan_jax.data import annotated


def _config(**data):
  config = importlib.import_module('configs.test_vqgan').get_config()
  for key, value in data.items():
    config.data[key] = value
  return config


@pytest.fixture(scope='module')
def vqgan():
  config = _config()
  return generators.from_config(config.generator, config.seed)


def _uint8(image) -> np.ndarray:
  """[-1, 1] -> uint8 as DatasetGAN writes samples: floor(x * 127.5 + 128), clipped."""
  return np.clip(np.floor(np.asarray(image) * 127.5 + 128), 0, 255).astype(np.uint8)


def _psnr(a, b) -> float:
  mse = np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)
  return 10 * np.log10(255 ** 2 / mse)


@pytest.fixture(scope='module')
def vqgan_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('vqgan') / 'work'
  relative = os.path.relpath(workdir, conftest.REPO)
  result = conftest.run_main('--config=configs/test_vqgan.py', f'--workdir={relative}',
                             timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.mark.slow
def test_vqgan_stages_end_to_end(vqgan_workdir, vqgan):
  workdir = vqgan_workdir
  # sample: BigDatasetGAN's layout; each image is its class token and z's tokens decoded.
  annotate = workdir / 'annotate'
  latent = annotate / 'latents' / 'vqgan32' / 'n02105162' / 'n02105162_225_0003.npy'
  z = np.load(latent)
  assert z.shape == (1, 64)
  saved = np.asarray(Image.open(str(latent).replace('latents', 'images').replace('.npy',
                                                                                 '.png')))
  tokens = vqgan.sample_tokens([225], z, temperature=1.0, top_k=100)
  image, _ = vqgan.decode_tokens(tokens)
  assert np.abs(saved.astype(int) - _uint8(image[0])).max() <= 1
  # train_interpreter: the heads learn from the brightness masks drawn on those images,
  # run through the encoder; the reconstruction PSNR is that of the stored images.
  info = json.loads((workdir / 'head' / 'info.json').read_text())
  assert info['num_annotated'] == 8 and info['classes'] == [200, 225]
  assert info['format'] == 'bigdatasetgan'
  stored = np.stack([np.asarray(Image.open(p)) for p in sorted(
      (workdir / 'annotate_synthetic' / 'images' / 'vqgan32').glob('*/*.png'))])
  reconstructed, _ = vqgan.reconstruct(stored / 127.5 - 1)
  assert info['reconstruction_psnr'] == pytest.approx(_psnr(_uint8(reconstructed), stored),
                                                      abs=0.01)
  arch, _, meta = head_lib.load(str(workdir / 'head'))
  assert arch.num_members == 2 and meta['steps'] == 30
  assert arch.feature_channels == (64, 64, 32)   # the decoder's 8, 16 and 32 px levels
  # generate: 12 samples, the 3 most uncertain dropped; sample 7 is class 200's number 1.
  builder = tfds.builder_from_directory(str(workdir / 'dataset'))
  records = {int(r['index']): r for split in ('train', 'dropped')
             for r in builder.as_data_source(split=split)}
  assert sorted(records) == list(range(12))
  assert len(builder.as_data_source(split='train')) == 9
  assert [int(records[i]['class_id']) for i in range(12)] == [225] * 6 + [200] * 6
  record = records[7]
  image, _ = vqgan.decode_tokens(vqgan.sample_tokens([200], record['latent'][None],
                                                     top_k=100))
  assert np.abs(record['image'].astype(int) - _uint8(image[0])).max() <= 1
  for name in ('eval.json', 'report.md', 'dataset/preview.png', 'head/check.png'):
    assert (workdir / name).exists(), name


def _photographs(folder, shapes, num_classes, seed=0):
  """image_{i}.png of the given (h, w) and mask_{i}.png with blocks of every class."""
  rng = np.random.default_rng(seed)
  folder.mkdir()
  pictures, masks = [], []
  for i, (h, w) in enumerate(shapes):
    picture = rng.integers(0, 256, (h, w, 3), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    for c in range(1, num_classes):
      top, left = rng.integers(0, h - 12), rng.integers(0, w - 12)
      mask[top:top + 12, left:left + 12] = c
    Image.fromarray(picture).save(folder / f'image_{i}.png')
    Image.fromarray(mask).save(folder / f'mask_{i}.png')
    pictures.append(picture)
    masks.append(mask)
  return pictures, masks


def _expected(picture, mask, size):
  """The centred square, bicubic to the generator's size (PIL), the mask nearest (the
  source pixel floor(i * side / size))."""
  h, w = mask.shape
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  image = np.asarray(Image.fromarray(picture[top:top + side, left:left + side]).resize(
      (size, size), Image.BICUBIC))
  index = np.arange(size) * side // size
  return image, mask[top:top + side, left:left + side][index[:, None], index[None, :]]


def test_photographs_of_any_shape_are_encoded(vqgan, tmp_path):
  config = _config(num_classes=3, class_names=('background', 'a', 'b'), num_annotated=3,
                   min_segment_pixels=0)
  pictures, masks = _photographs(tmp_path / 'photos', [(40, 48), (48, 40), (32, 32)], 3)
  data = annotated.read(str(tmp_path / 'photos'), vqgan, vqgan.sampling(config), config.data,
                        (32, 32))
  assert data.names == ['image_0.png', 'image_1.png', 'image_2.png'] and data.class_ids is None
  for i in range(3):
    image, mask = _expected(pictures[i], masks[i], 32)
    np.testing.assert_array_equal(data.image(i), image)
    np.testing.assert_array_equal(data.masks([i])[0], mask)
    np.testing.assert_allclose(data.inputs['image'][i], image / 127.5 - 1, atol=1e-6)


def test_a_biggan_runs_annotations_are_encoded(vqgan, tmp_path):
  """BigDatasetGAN's layout from a 48 px BigGAN (subset biggan48), images and masks only:
  no latents are read; classes come from the names."""
  root = tmp_path / 'biggan'
  rng = np.random.default_rng(1)
  expected = {}
  for class_id, wnid in ((225, 'n02105162'), (200, 'n02097474')):
    for kind in ('images', 'annotations'):
      (root / kind / 'biggan48' / wnid).mkdir(parents=True)
    picture = rng.integers(0, 256, (48, 48, 3), np.uint8)
    mask = np.zeros((48, 48), np.uint8)
    mask[8:30, 10:40] = 255
    stem = f'{wnid}_{class_id}_0000'
    Image.fromarray(picture).save(root / 'images' / 'biggan48' / wnid / f'{stem}.png')
    Image.fromarray(mask).save(root / 'annotations' / 'biggan48' / wnid / f'{stem}.png')
    expected[class_id] = _expected(picture, (mask > 0).astype(np.uint8), 32)
  config = _config()
  data = annotated.read(str(root), vqgan, vqgan.sampling(config), config.data, (32, 32))
  assert data.format == 'bigdatasetgan' and list(data.class_ids) == [200, 225]
  np.testing.assert_array_equal(data.inputs['class_id'], [200, 225])
  for i, class_id in enumerate((200, 225)):
    np.testing.assert_array_equal(data.image(i), expected[class_id][0])
    np.testing.assert_array_equal(data.masks([i])[0], expected[class_id][1])


def test_train_interpreter_learns_from_photographs(vqgan, tmp_path):
  """The MLP ensemble on the decoder's maps of encoded photographs: check.png shows
  photograph | reconstruction | mask; info.json holds the reconstruction's PSNR."""
  config = _config(num_classes=3, class_names=('background', 'a', 'b'), num_annotated=3,
                   min_segment_pixels=0, synthetic_masks=False)
  config.labeler = 'mlp'
  config.interpreter.num_members = 2
  config.interpreter.num_steps = 20
  config.interpreter.log_every = 10
  pictures, masks = _photographs(tmp_path / 'photos', [(40, 48), (48, 40), (32, 32)], 3)
  config.data.annotation_dir = str(tmp_path / 'photos')
  workdir = tmp_path / 'work'
  stages.train_interpreter(config, str(workdir))
  info = json.loads((workdir / 'interpreter' / 'info.json').read_text())
  assert info['num_annotated'] == 3 and info['steps'] == 20
  prepared = np.stack([_expected(p, m, 32)[0] for p, m in zip(pictures, masks)])
  reconstructed, _ = vqgan.reconstruct(prepared / 127.5 - 1)
  assert info['reconstruction_psnr'] == pytest.approx(
      _psnr(_uint8(reconstructed), prepared), abs=0.01)
  check = np.asarray(Image.open(workdir / 'interpreter' / 'check.png'))
  assert check.shape == (2 + 3 * 34, 2 + 3 * 34, 3)
  np.testing.assert_array_equal(check[2:34, 2:34], prepared[0])
  assert np.abs(check[2:34, 36:68].astype(int) - _uint8(reconstructed[0])).max() <= 1


def test_imagenet_config_names_taming_model_and_fits_its_maps(tmp_path):
  """configs/bigdatasetgan_vqgan.py: the cin_transformer's numbers (taming's project.yaml)
  are the architecture's defaults; its head groups fit the decoder's maps; a missing
  checkpoint says how to get one; bad sampling settings name their field."""
  from dgan_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from dgan_jax.errors import InputError  # pylint: disable=import-outside-toplevel
  from dgan_jax.generators import vqgan as vqgan_lib  # pylint: disable=import-outside-toplevel
  arch = vqgan_lib.VQGANArch()
  assert (arch.resolution, arch.ch, arch.ch_mult, arch.attn_resolutions, arch.n_embed,
          arch.embed_dim) == (256, 128, (1, 1, 2, 2, 4), (16,), 16384, 256)
  assert (arch.vocab_size, arch.block_size, arch.n_layer, arch.n_head, arch.n_embd,
          arch.num_classes) == (16384, 256, 48, 24, 1536, 1000)
  config = importlib.import_module('configs.bigdatasetgan_vqgan').get_config()
  assert (config.vqgan.temperature, config.vqgan.top_k) == (1.0, 600)
  head_lib.HeadArch(tuple(r for _, r, _ in arch.feature_maps),
                    tuple(c for _, _, c in arch.feature_maps), 0,
                    group_sizes=tuple(config.biggan.head.group_sizes),
                    group_channels=tuple(config.biggan.head.group_channels))
  config.generator.checkpoint = str(tmp_path / 'nowhere')
  with pytest.raises(InputError, match='convert_weights vqgan'):
    generators.from_config(config.generator, config.seed)
  for field, value in (('temperature', 0.0), ('top_k', -1)):
    bad = _config()
    bad.vqgan[field] = value
    with pytest.raises(InputError, match=f'config.vqgan.{field}'):
      config_lib.validate(bad)
  too_many = _config()
  too_many.vqgan.top_k = 2000
  g = generators.from_config(too_many.generator, too_many.seed)
  with pytest.raises(InputError, match='config.vqgan.top_k'):
    g.sampling(too_many)


_DEVICES_SCRIPT = '''
import importlib, sys
import jax, numpy as np
from dgan_jax import factory as factory_lib, features, generators
from dgan_jax.bigdatasetgan import head as head_lib, train as train_lib
config = importlib.import_module('configs.test_vqgan').get_config()
g = generators.from_config(config.generator, config.seed)
layout = features.layout_for(g, config.data)
specs = g.feature_specs
heads = head_lib.HeadArch(tuple(s.height for s in specs), tuple(s.channels for s in specs), 0,
                          group_sizes=(8, 16, 32), group_channels=(16, 8, 8), num_members=2)
labeler = train_lib.Labeler(heads, variables=head_lib.init(heads, 0))
outs = {}
for name, devices, batch in (('four', jax.local_devices()[:4], 8),
                             ('one', jax.local_devices()[:1], 3)):
  factory = factory_lib.Factory(g, g.sampling(config), labeler, layout, batch_size=batch,
                                devices=devices)
  outs[name] = factory(np.arange(12))
np.savez(sys.argv[1], **{f'{n}_{k}': v for n, out in outs.items() for k, v in out.items()})
'''


@pytest.mark.slow
def test_sample_i_is_the_same_on_four_devices_and_one(tmp_path):
  """The compiled generate step (sampling included) under shard_map on 4 CPU devices with
  batches of 8, and on one device with batches of 3: the same samples."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  path = str(tmp_path / 'out.npz')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4')
  result = subprocess.run([sys.executable, '-c', _DEVICES_SCRIPT, path], cwd=conftest.REPO,
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  out = np.load(path)
  np.testing.assert_array_equal(out['four_z'], out['one_z'])
  np.testing.assert_array_equal(out['four_class_id'], [225] * 6 + [200] * 6)
  assert np.abs(out['four_image'].astype(int) - out['one_image']).max() <= 1
  assert (out['four_label'] == out['one_label']).mean() > 0.999
  np.testing.assert_allclose(out['four_uncertainty'], out['one_uncertainty'], rtol=1e-4,
                             atol=1e-6)
  assert len({im.tobytes() for im in out['four_image']}) == 12
