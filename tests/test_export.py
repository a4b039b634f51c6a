"""python -m dgan_jax.export: the synthetic dataset as PNG folders, COCO and Hugging Face
`datasets`, read back by PIL, pycocotools and `datasets` against the TFDS dataset pixel for
pixel; the DeepLab run as a torchvision state dict, loaded strict=True by torchvision's own
deeplabv3_resnet50 / resnet101 and compared logit for logit; bad inputs."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, import_torchvision, relative_error
from dgan_jax import export as export_lib
from dgan_jax.downstream import deeplab
from dgan_jax.downstream import train as train_lib
from dgan_jax.errors import InputError
from results_workdir import relative, results_workdir  # pylint: disable=unused-import

CONFIG = '--config=configs/test.py'


def run_export(*args):
  return subprocess.run([sys.executable, '-m', 'dgan_jax.export', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600)


def tfds_records(workdir):
  """split -> [example] of the generate stage's dataset, read by TFDS itself."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  builder = tfds.builder_from_directory(str(workdir / 'dataset'))
  out = {}
  for split in builder.info.splits:
    source = builder.as_data_source(split)
    out[split] = [source[i] for i in range(len(source))]
  return out


def name_of(example, records):
  width = max(6, len(str(sum(len(r) for r in records.values()) - 1)))
  return f'{int(example["index"]):0{width}d}'


def test_png_export_is_the_dataset_pixel_for_pixel(results_workdir, tmp_path):
  out = tmp_path / 'png'
  result = run_export('dataset', CONFIG, f'--workdir={relative(results_workdir)}',
                      '--format=png', f'--out={relative(out)}')
  assert result.returncode == 0, result.stderr[-3000:]
  records = tfds_records(results_workdir)
  assert set(records) == {'train', 'dropped'} and records['dropped']
  for split, examples in records.items():
    names = (out / 'splits' / f'{split}.txt').read_text().split()
    assert names == [name_of(e, records) for e in examples]
    for name, example in zip(names, examples):
      np.testing.assert_array_equal(np.asarray(Image.open(out / 'images' / f'{name}.png')),
                                    example['image'])
      mask = Image.open(out / 'masks' / f'{name}.png')
      assert mask.mode == 'L'
      np.testing.assert_array_equal(np.asarray(mask), example['label'])
  classes = json.loads((out / 'classes.json').read_text())
  assert [c['name'] for c in classes['classes']] == ['background', 'part_a', 'part_b']
  assert sorted(os.listdir(out / 'images')) == sorted(os.listdir(out / 'masks'))
  assert len(os.listdir(out / 'images')) == sum(len(r) for r in records.values())
  rows = (out / 'samples.csv').read_text().splitlines()
  assert rows[0] == 'name,split,index,uncertainty' and len(rows) == 1 + len(os.listdir(out / 'images'))
  assert json.loads((out / 'export.json').read_text())['splits'] == {
      s: len(r) for s, r in records.items()}


def test_coco_export_read_by_pycocotools_is_the_dataset(results_workdir, tmp_path):
  """pycocotools' COCO index and annToMask rebuild each label map: background where no
  annotation covers a pixel, one annotation per class present, no two overlapping."""
  from pycocotools.coco import COCO  # pylint: disable=import-outside-toplevel
  out = tmp_path / 'coco'
  result = run_export('dataset', CONFIG, f'--workdir={relative(results_workdir)}',
                      '--format=coco', f'--out={relative(out)}')
  assert result.returncode == 0, result.stderr[-3000:]
  records = tfds_records(results_workdir)
  for split, examples in records.items():
    coco = COCO(str(out / 'annotations' / f'instances_{split}.json'))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == ['part_a', 'part_b']
    images = coco.loadImgs(coco.getImgIds())
    assert [i['file_name'] for i in images] == [f'{name_of(e, records)}.png' for e in examples]
    for entry, example in zip(images, examples):
      np.testing.assert_array_equal(np.asarray(Image.open(out / 'images' / entry['file_name'])),
                                    example['image'])
      label = np.zeros((entry['height'], entry['width']), np.int64)
      covered = np.zeros(label.shape, np.int64)
      annotations = coco.loadAnns(coco.getAnnIds(imgIds=entry['id']))
      for annotation in annotations:
        mask = coco.annToMask(annotation).astype(bool)
        assert annotation['area'] == mask.sum() and annotation['iscrowd'] == 0
        label[mask] = annotation['category_id']
        covered += mask
      assert covered.max() <= 1
      assert sorted(a['category_id'] for a in annotations) == sorted(
          int(c) for c in np.unique(example['label']) if c > 0)
      np.testing.assert_array_equal(label, example['label'])


def test_hf_export_loads_with_datasets(results_workdir, tmp_path):
  datasets = pytest.importorskip('datasets')
  out = tmp_path / 'hf'
  record = export_lib.export_dataset(str(results_workdir), 'hf', str(out), progress=False)
  loaded = datasets.load_from_disk(str(out))
  records = tfds_records(results_workdir)
  assert record['splits'] == {s: len(r) for s, r in records.items()}
  for split, examples in records.items():
    rows = loaded[split]
    assert len(rows) == len(examples)
    for row, example in zip(rows, examples):
      np.testing.assert_array_equal(np.asarray(row['image']), example['image'])
      np.testing.assert_array_equal(np.asarray(row['label']), example['label'])
      assert row['index'] == int(example['index'])
  assert not [p for p in os.listdir(tmp_path) if p != 'hf']   # no cache or .partial left


def test_trained_run_exports_to_torchvision(results_workdir, tmp_path):
  """The CLI's state dict of the run's evaluated epoch loads strict=True into torchvision's
  DeepLabV3 classes built as this network, and gives our logits in eval mode."""
  torch = pytest.importorskip('torch')
  import_torchvision()
  out = tmp_path / 'model.pt'
  result = run_export('deeplab', CONFIG, f'--workdir={relative(results_workdir)}',
                      '--run=synthetic', f'--out={relative(out)}')
  assert result.returncode == 0, result.stderr[-3000:]
  meta = json.loads((tmp_path / 'model.json').read_text())
  evaluation = json.loads((results_workdir / 'eval.json').read_text())
  assert meta['epoch'] == evaluation['runs']['synthetic']['best_epoch']
  arch = deeplab.DeepLabArch.from_json(meta['arch'])
  model = export_lib.torchvision_deeplab(meta['arch'])
  model.load_state_dict(torch.load(out, weights_only=True), strict=True)

  run_dir = str(results_workdir / 'downstream' / 'synthetic')
  variables = train_lib.restore_epoch(run_dir, meta['epoch'], arch)
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  ours = np.asarray(deeplab.DeepLabV3(arch).apply(variables, deeplab.normalize(images),
                                                  train=False))
  x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
       - torch.tensor(meta['input']['mean'])[:, None, None]) / torch.tensor(
           meta['input']['std'])[:, None, None]
  with torch.no_grad():
    theirs = model(x)['out'].permute(0, 2, 3, 1).numpy()
  assert relative_error(ours, theirs) < 1e-5   # measured 2.5e-7


def _random_variables(arch, seed):
  """torchvision-style initial weights with BatchNorm scale, bias and running statistics
  drawn at random (so that a swapped mean/var or scale/bias shows)."""
  params, batch_stats = deeplab.init(arch, seed)
  rng = np.random.default_rng(seed)
  flat = {}
  for key, value in export_lib.checkpoint_lib.flatten(
      {'params': params, 'batch_stats': batch_stats}).items():
    value = np.asarray(value, np.float32)
    leaf = key.rsplit('/', 1)[-1]
    if leaf == 'scale' or leaf == 'var':
      value = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
    elif leaf == 'mean' or (leaf == 'bias' and '/out/' not in key):
      value = rng.normal(0, 0.1, value.shape).astype(np.float32)
    flat[key] = value
  return export_lib.checkpoint_lib.unflatten(flat)


@pytest.mark.parametrize('builder,stage_sizes', [('deeplabv3_resnet50', (3, 4, 6, 3)),
                                                 ('deeplabv3_resnet101', (3, 4, 23, 3))])
def test_torchvision_builders_load_the_export_strictly(builder, stage_sizes):
  """torchvision's own constructors, as the export's JSON names them; ResNet-50's logits on
  random images against ours in eval mode (ResNet-101 differs only by layer3's 23 blocks,
  whose names the strict load checks)."""
  torch = pytest.importorskip('torch')
  torchvision = import_torchvision()
  arch = deeplab.DeepLabArch(num_classes=5, stage_sizes=stage_sizes)
  assert export_lib.torchvision_recipe(arch).startswith(
      f'torchvision.models.segmentation.{builder}(')
  model = getattr(torchvision.models.segmentation, builder)(
      weights=None, weights_backbone=None, num_classes=5, aux_loss=False).eval()
  variables = _random_variables(arch, 1)
  state = export_lib.torch_state_dict(arch, variables, batches_tracked=7)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
  assert int(model.backbone.bn1.num_batches_tracked) == 7
  if builder != 'deeplabv3_resnet50':
    return
  images = np.random.default_rng(2).integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
  ours = np.asarray(jax.jit(lambda v, x: deeplab.DeepLabV3(arch).apply(
      v, deeplab.normalize(x), train=False))(variables, images))
  mean = torch.tensor(deeplab.IMAGENET_MEAN)[:, None, None]
  std = torch.tensor(deeplab.IMAGENET_STD)[:, None, None]
  with torch.no_grad():
    theirs = model((torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std)
  assert relative_error(ours, theirs['out'].permute(0, 2, 3, 1).numpy()) < 1e-4  # measured 2.5e-6


def test_bad_inputs_end_in_one_line_and_write_nothing(results_workdir, tmp_path, monkeypatch):
  import configs.test as test_config  # pylint: disable=import-outside-toplevel
  config = test_config.get_config()
  workdir = str(results_workdir)
  with pytest.raises(InputError, match=r"--format: must be one of png, coco, hf; got 'voc'"):
    export_lib.export_dataset(workdir, 'voc', str(tmp_path / 'a'))
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(InputError, match=r'--workdir: .*empty/dataset holds no synthetic '
                     'dataset'):
    export_lib.export_dataset(str(empty), 'png', str(tmp_path / 'b'))
  taken = tmp_path / 'taken'
  taken.mkdir()
  (taken / 'mine.txt').write_text('keep')
  with pytest.raises(InputError, match=r'--out: .*taken exists and is not an earlier export'):
    export_lib.export_dataset(workdir, 'png', str(taken))
  with pytest.raises(InputError, match=r"--run: .*downstream/nope holds no finished"):
    export_lib.export_deeplab(config, workdir, 'nope', str(tmp_path / 'm.pt'))
  with pytest.raises(InputError, match=r'--out: .*taken is a folder'):
    export_lib.export_deeplab(config, workdir, 'synthetic', str(taken))
  with monkeypatch.context() as patch:
    patch.setitem(sys.modules, 'datasets', None)     # `import datasets` fails
    with pytest.raises(InputError, match=r'--format=hf needs the Hugging Face `datasets` '
                       r'package \(pip install datasets\)'):
      export_lib.export_dataset(workdir, 'hf', str(tmp_path / 'd'))
  assert sorted(os.listdir(tmp_path)) == ['empty', 'taken']
  assert os.listdir(taken) == ['mine.txt'] and os.listdir(empty) == []

  result = run_export('dataset', CONFIG, f'--workdir={relative(results_workdir)}',
                      '--format=voc', f'--out={relative(tmp_path / "c")}')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --format: must be one of png, coco, hf; got 'voc'")
  result = run_export('models', CONFIG, f'--workdir={relative(results_workdir)}')
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(
      'error: give one command: dataset or deeplab')
  assert sorted(os.listdir(tmp_path)) == ['empty', 'taken']
