"""What a run made, for other frameworks: the synthetic dataset and the DeepLab segmenter.

  python -m dgan_jax.export dataset --workdir=workdirs/toy --format=png --out=toy_png
  python -m dgan_jax.export dataset --workdir=workdirs/toy --format=coco --out=toy_coco
  python -m dgan_jax.export dataset --workdir=workdirs/toy --format=hf --out=toy_hf
  python -m dgan_jax.export deeplab --workdir=workdirs/toy --run=synthetic --out=toy_deeplab.pt

`dataset` reads the generate stage's TFDS dataset (workdir/dataset) one record at a
time (nothing holds more than one image), every split: 'train' (the samples kept by
the uncertainty filter) and 'dropped'. A sample is named by its index, zero-padded
(000042). Classes come from the dataset's own generation.json. Formats:

  png   images/<name>.png (RGB), masks/<name>.png (class ids: 8-bit grey, 16-bit above
        256 classes), classes.json (id, name, colour), splits/<split>.txt (one name a
        line), samples.csv (name, split, index, uncertainty[, class_id]): the layout of
        mmsegmentation's BaseSegDataset (img_path='images', seg_map_path='masks',
        ann_file='splits/train.txt') and of a torchvision-style folder dataset
  coco  images/<name>.png, annotations/instances_<split>.json: one image entry per sample
        and one annotation per class present in it (class ids 1..C-1 as category ids;
        background 0 is every pixel no annotation covers), its mask as compressed RLE
        (pycocotools), iscrowd 0, area and bbox from the mask; classes.json
  hf    a Hugging Face `datasets` DatasetDict (save_to_disk): splits train/dropped with
        image and label (PIL images), index, uncertainty[, class_id];
        `datasets.load_from_disk(OUT)` reads it back

`deeplab` writes the run's epoch (evaluate's pick, `evaluate.best_epoch`; --epoch
overrides) as a PyTorch state dict in torchvision's DeepLabV3 names (backbone.*,
classifier.*, no aux_classifier; BatchNorm num_batches_tracked = the run's steps up to
that epoch), the inverse of `convert_weights resnet` through the same name maps
(convert_weights/resnet.py). ResNet-101 / ResNet-50 configs load with strict=True into
`torchvision.models.segmentation.deeplabv3_resnet101(num_classes=C, aux_loss=False)` /
`deeplabv3_resnet50(...)`; any other config into `torchvision_deeplab(arch)` (the same
torchvision classes with this network's blocks, widths and dilations). Beside OUT,
<stem>.json records the arch, classes, epoch, input size and normalization, and the
Python line that builds the module.

OUT is written under a temporary name and renamed when complete; an existing OUT is
replaced only when it is an earlier export (export.json; for deeplab, a .pt file).
"""

import csv
import json
import os
import shutil
import time

import numpy as np
from absl import app
from absl import flags
from PIL import Image
from tqdm import tqdm

from convert_weights import resnet as resnet_names
from dgan_jax import config as config_lib
from dgan_jax import io
from dgan_jax import main as main_lib   # --config and --workdir, parsed as main parses them
from dgan_jax.data import images as image_utils
from dgan_jax.downstream import deeplab
from dgan_jax.downstream import run as run_lib
from dgan_jax.downstream import train as train_lib
from dgan_jax.errors import InputError
from dgan_jax.generators import checkpoint as checkpoint_lib

FORMATS = ('png', 'coco', 'hf')
COMMANDS = ('dataset', 'deeplab')
RECORD = 'export.json'
READ_CHUNK = 32     # records read at once


# ----------------------------------------------------------------------------------------
# The dataset.


class DatasetReader:
  """The generate stage's dataset, split by split, record by record."""

  def __init__(self, workdir: str):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    self.data_dir = os.path.join(workdir, io.DATASET)
    if not os.path.isfile(os.path.join(self.data_dir, 'dataset_info.json')):
      raise InputError(f'--workdir: {self.data_dir} holds no synthetic dataset (run the '
                       'generate stage first)')
    self.generation = io.read_json(os.path.join(self.data_dir, 'generation.json')) or {}
    builder = tfds.builder_from_directory(self.data_dir)
    self.splits = [s for s in ('train', 'dropped') if s in builder.info.splits]
    self._sources = {s: builder.as_data_source(s) for s in self.splits}
    data = self.generation.get('config', {}).get('data', {})
    if not data.get('class_names'):
      raise InputError(f'{self.data_dir}/generation.json: no config.data.class_names (written '
                       'by an older generate stage? rerun it)')
    self.class_names = list(data['class_names'])
    self.palette = image_utils.palette_array(len(self.class_names), tuple(data.get('palette')
                                                                          or ()))
    total = sum(len(s) for s in self._sources.values())
    self.width = max(6, len(str(max(total - 1, 0))))

  def __len__(self) -> int:
    return sum(len(s) for s in self._sources.values())

  def count(self, split: str) -> int:
    return len(self._sources[split])

  def records(self, split: str):
    """Yields (name, example dict) of one split in stored order."""
    source = self._sources[split]
    for start in range(0, len(source), READ_CHUNK):
      for example in source.__getitems__(list(range(start, min(start + READ_CHUNK,
                                                                  len(source))))):
        yield f'{int(example["index"]):0{self.width}d}', example

  def classes_record(self) -> dict:
    record = {'classes': [{'id': i, 'name': n, 'color': self.palette[i].tolist()}
                          for i, n in enumerate(self.class_names)],
              'background': 0, 'ignore_label': None,
              'source': os.path.abspath(self.data_dir)}
    if self.generation.get('classes'):
      record['sample_classes'] = self.generation['classes']   # class-conditional generators
    return record


def check_out(out: str, marker: str = RECORD) -> None:
  if not out:
    raise InputError('--out: give the folder to write to')
  if os.path.lexists(out) and not os.path.isfile(os.path.join(out, marker)):
    raise InputError(f'--out: {out} exists and is not an earlier export (no {marker}); choose '
                     'a new folder')


def _save_mask(path: str, label: np.ndarray) -> None:
  with io.atomic_file(path, 'wb') as f:
    Image.fromarray(np.asarray(label)).save(f, format='PNG')


def _meta_columns(example: dict) -> dict:
  row = {'index': int(example['index']), 'uncertainty': float(example['uncertainty'])}
  if 'class_id' in example:
    row['class_id'] = int(example['class_id'])
  return row


def export_png(reader: DatasetReader, tmp: str, progress: bool) -> dict:
  os.makedirs(os.path.join(tmp, 'images'))
  os.makedirs(os.path.join(tmp, 'masks'))
  os.makedirs(os.path.join(tmp, 'splits'))
  counts = {}
  with open(os.path.join(tmp, 'samples.csv'), 'w', newline='') as table, tqdm(
      total=len(reader), desc='export png', unit='image', disable=not progress) as bar:
    writer = None
    for split in reader.splits:
      with open(os.path.join(tmp, 'splits', f'{split}.txt'), 'w') as names:
        for name, example in reader.records(split):
          image_utils.save_png(os.path.join(tmp, 'images', f'{name}.png'), example['image'])
          _save_mask(os.path.join(tmp, 'masks', f'{name}.png'), example['label'])
          names.write(name + '\n')
          row = {'name': name, 'split': split, **_meta_columns(example)}
          if writer is None:
            writer = csv.DictWriter(table, list(row), lineterminator='\n')
            writer.writeheader()
          writer.writerow(row)
          counts[split] = counts.get(split, 0) + 1
          bar.update()
  return counts


def _coco_annotations(label: np.ndarray, image_id: int, next_id: int, num_classes: int):
  """One annotation per class 1..C-1 present in the label map (compressed RLE)."""
  from pycocotools import mask as mask_utils  # pylint: disable=import-outside-toplevel
  out = []
  for c in np.unique(label):
    if c == 0 or c >= num_classes:
      continue
    rle = mask_utils.encode(np.asfortranarray((label == c).astype(np.uint8)))
    out.append({'id': next_id + len(out), 'image_id': image_id, 'category_id': int(c),
                'segmentation': {'size': [int(s) for s in rle['size']],
                                 'counts': rle['counts'].decode('ascii')},
                'area': int(mask_utils.area(rle)),
                'bbox': [float(v) for v in mask_utils.toBbox(rle)], 'iscrowd': 0})
  return out


def export_coco(reader: DatasetReader, tmp: str, progress: bool) -> dict:
  """Streams each split's instances JSON: image and annotation entries go to two
  temporary files as they are made, joined into the JSON at the end of the split."""
  os.makedirs(os.path.join(tmp, 'images'))
  os.makedirs(os.path.join(tmp, 'annotations'))
  categories = [{'id': c, 'name': n, 'supercategory': ''}
                for c, n in enumerate(reader.class_names) if c > 0]
  counts, image_id, annotation_id = {}, 0, 1
  with tqdm(total=len(reader), desc='export coco', unit='image', disable=not progress) as bar:
    for split in reader.splits:
      parts = {k: os.path.join(tmp, f'.{split}.{k}') for k in ('images', 'annotations')}
      with open(parts['images'], 'w') as images, open(parts['annotations'], 'w') as annotations:
        for name, example in reader.records(split):
          image_id += 1
          label = np.asarray(example['label'])
          image_utils.save_png(os.path.join(tmp, 'images', f'{name}.png'), example['image'])
          entry = {'id': image_id, 'file_name': f'{name}.png', 'height': int(label.shape[0]),
                   'width': int(label.shape[1]), **_meta_columns(example)}
          images.write((',' if images.tell() else '') + json.dumps(entry))
          for annotation in _coco_annotations(label, image_id, annotation_id,
                                              len(reader.class_names)):
            annotations.write((',' if annotations.tell() else '') + json.dumps(annotation))
            annotation_id += 1
          counts[split] = counts.get(split, 0) + 1
          bar.update()
      with open(os.path.join(tmp, 'annotations', f'instances_{split}.json'), 'w') as f:
        f.write('{"info": ' + json.dumps({'description': f'dgan_jax synthetic dataset, '
                                                         f'split {split}'})
                + ', "licenses": [], "categories": ' + json.dumps(categories)
                + ', "images": [')
        for key in ('images', 'annotations'):
          with open(parts[key]) as part:
            shutil.copyfileobj(part, f)
          f.write('], "annotations": [' if key == 'images' else ']}')
      io.remove(parts.values())
  return counts


def _datasets_module():
  try:
    import datasets  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise InputError('--format=hf needs the Hugging Face `datasets` package (pip install '
                     'datasets); --format=png and coco need nothing more') from None
  return datasets


def export_hf(reader: DatasetReader, tmp: str, progress: bool) -> dict:
  datasets = _datasets_module()
  cache = tmp + '.cache'
  io.remove([cache])
  columns = {'image': datasets.Image(), 'label': datasets.Image(),
             'index': datasets.Value('int64'), 'uncertainty': datasets.Value('float32')}
  if reader.generation.get('classes'):
    columns['class_id'] = datasets.Value('int64')
  features = datasets.Features(columns)
  bar = tqdm(total=len(reader), desc='export hf', unit='image', disable=not progress)

  def rows(split):
    for name, example in reader.records(split):
      bar.update()
      yield {'image': Image.fromarray(np.asarray(example['image'])),
             'label': Image.fromarray(np.asarray(example['label'])),
             **{k: v for k, v in _meta_columns(example).items() if k in columns}}

  was_enabled = datasets.is_progress_bar_enabled()
  try:
    datasets.disable_progress_bars()
    splits = {split: datasets.Dataset.from_generator(
        rows, gen_kwargs={'split': split}, features=features, cache_dir=cache,
        keep_in_memory=False) for split in reader.splits}
    datasets.DatasetDict(splits).save_to_disk(tmp)
  finally:
    if was_enabled:
      datasets.enable_progress_bars()
    bar.close()
    io.remove([cache])
  return {split: len(ds) for split, ds in splits.items()}


EXPORTERS = {'png': export_png, 'coco': export_coco, 'hf': export_hf}


def export_dataset(workdir: str, fmt: str, out: str, progress: bool = True) -> dict:
  """The synthetic dataset of `workdir` in format `fmt` (module docstring) -> the
  export.json record."""
  if fmt not in FORMATS:
    raise InputError(f'--format: must be one of {", ".join(FORMATS)}; got {fmt!r}')
  check_out(out)
  if fmt == 'hf':
    _datasets_module()      # before anything is read
  reader = DatasetReader(workdir)
  if not len(reader):
    raise InputError(f'{reader.data_dir}: the dataset is empty')
  start = time.perf_counter()
  with io.atomic_dir(out) as tmp:
    counts = EXPORTERS[fmt](reader, tmp, progress)
    io.write_json(os.path.join(tmp, 'classes.json'), reader.classes_record())
    record = {'format': fmt, 'dataset': os.path.abspath(reader.data_dir), 'splits': counts,
              'classes': reader.class_names,
              'seconds': round(time.perf_counter() - start, 2)}
    io.write_json(os.path.join(tmp, RECORD), record)
  return record


# ----------------------------------------------------------------------------------------
# The segmenter.

TORCHVISION_BUILDERS = {(3, 4, 23, 3): 'deeplabv3_resnet101', (3, 4, 6, 3): 'deeplabv3_resnet50'}


def torch_names(arch: deeplab.DeepLabArch) -> dict[str, tuple[str, callable]]:
  """torchvision DeepLabV3 name -> (our flat name, layout transform ours -> PyTorch):
  convert_weights/resnet.py's name maps read backwards."""
  names = resnet_names.backbone_name_map(arch.stage_sizes, 'backbone.')
  names.update(resnet_names.head_name_map(len(arch.aspp_rates)))
  return {torch: (ours, resnet_names.to_torch(transform))
          for torch, (ours, transform) in names.items()}


def torch_state_dict(arch: deeplab.DeepLabArch, variables: dict,
                     batches_tracked: int = 0) -> dict[str, np.ndarray]:
  """{'params', 'batch_stats'} -> torchvision's state dict as numpy arrays (float32;
  every BatchNorm's num_batches_tracked int64 = batches_tracked)."""
  flat = {k: np.asarray(v, np.float32) for k, v in checkpoint_lib.flatten(variables).items()}
  names = torch_names(arch)
  checkpoint_lib.check_names_and_shapes(flat, deeplab.variable_shapes(arch),
                                        "the run's checkpoint")
  state = {}
  for torch, (ours, transform) in names.items():
    state[torch] = np.array(transform(flat[ours]), np.float32, order='C')  # own, writable
    if torch.endswith('.running_var'):
      state[torch[:-len('running_var')] + 'num_batches_tracked'] = np.asarray(
          batches_tracked, np.int64)
  return state


def _dilations(arch: deeplab.DeepLabArch) -> list[bool]:
  """torchvision's replace_stride_with_dilation for layer2..layer4."""
  layout = arch.stage_layout()
  return [i < len(layout) and layout[i][0] == 1 for i in range(1, 4)]


def torchvision_recipe(arch: deeplab.DeepLabArch) -> str:
  """The Python that builds the torchvision module this network's state dict loads into."""
  builder = TORCHVISION_BUILDERS.get(arch.stage_sizes)
  if (builder and arch.width == 64 and arch.output_stride == 8
      and arch.aspp_rates == (12, 24, 36) and arch.aspp_channels == 256):
    return (f'torchvision.models.segmentation.{builder}(weights=None, weights_backbone=None, '
            f'num_classes={arch.num_classes}, aux_loss=False)')
  return f'dgan_jax.export.torchvision_deeplab({arch.to_json()})'


def torchvision_deeplab(arch):
  """torchvision's DeepLabV3 classes (ResNet with Bottleneck blocks, IntermediateLayerGetter,
  ASPP, DeepLabV3) built as `arch` (a DeepLabArch or its JSON) in evaluation mode: its
  blocks per stage, dilations (replace_stride_with_dilation), the backbone cut after its
  last stage, and, where torchvision's constructors fix them (stem width 64, ASPP 256
  channels), each convolution and BatchNorm resized to this network's channels. Needs
  torch and torchvision."""
  import torch  # pylint: disable=import-outside-toplevel
  from torchvision.models import resnet  # pylint: disable=import-outside-toplevel
  from torchvision.models._utils import IntermediateLayerGetter  # pylint: disable=import-outside-toplevel
  from torchvision.models.segmentation import deeplabv3  # pylint: disable=import-outside-toplevel
  arch = arch if isinstance(arch, deeplab.DeepLabArch) else deeplab.DeepLabArch.from_json(arch)
  stages = len(arch.stage_sizes)
  if stages > 4:
    raise InputError(f'torchvision ResNets have 4 stages, this network {stages}')
  layers = list(arch.stage_sizes) + [1] * (4 - stages)
  backbone = resnet.ResNet(resnet.Bottleneck, layers, replace_stride_with_dilation=_dilations(arch))
  if arch.width != 64:
    scale = lambda c: c * arch.width // 64   # every torchvision width is a multiple of 64
    for name, module in list(backbone.named_modules()):
      parent, _, leaf = name.rpartition('.')
      owner = backbone.get_submodule(parent) if parent else backbone
      if isinstance(module, torch.nn.Conv2d):
        setattr(owner, leaf, torch.nn.Conv2d(
            module.in_channels if module.in_channels == 3 else scale(module.in_channels),
            scale(module.out_channels), module.kernel_size, module.stride, module.padding,
            module.dilation, bias=False))
      elif isinstance(module, torch.nn.BatchNorm2d):
        setattr(owner, leaf, torch.nn.BatchNorm2d(scale(module.num_features)))
  body = IntermediateLayerGetter(backbone, return_layers={f'layer{stages}': 'out'})
  channels = arch.aspp_channels
  head = deeplabv3.DeepLabHead(arch.feature_channels, arch.num_classes, list(arch.aspp_rates))
  if channels != 256:
    head = torch.nn.Sequential(   # DeepLabHead's layers with other ASPP channels
        deeplabv3.ASPP(arch.feature_channels, list(arch.aspp_rates), channels),
        torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(channels), torch.nn.ReLU(),
        torch.nn.Conv2d(channels, arch.num_classes, 1))
  return deeplabv3.DeepLabV3(body, head).eval()


def export_deeplab(config, workdir: str, run: str, out: str, epoch: int | None = None) -> dict:
  """Writes the run's epoch as a torchvision state dict to `out` and its description to
  <out stem>.json -> that description."""
  if not out:
    raise InputError('--out: give the .pt file to write')
  if os.path.isdir(out):
    raise InputError(f'--out: {out} is a folder; give a file name such as model.pt')
  if os.path.lexists(out) and not out.endswith(('.pt', '.pth')):
    raise InputError(f'--out: {out} exists and is not an earlier export (.pt); choose a new name')
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise InputError('export deeplab writes a PyTorch file and needs torch (pip install '
                     'torch)') from None
  arch, run_dir, epoch, names, palette = run_lib.trained_run(config, workdir, run, epoch)
  trained = io.read_json(os.path.join(run_dir, 'train.json'))
  steps = (epoch + 1) * trained['steps_per_epoch']
  variables = train_lib.restore_epoch(run_dir, epoch, arch)
  state = {k: torch.from_numpy(v) for k, v in torch_state_dict(arch, variables, steps).items()}
  meta_path = os.path.splitext(out)[0] + '.json'
  meta = {'format': 'torchvision DeepLabV3 state dict', 'file': os.path.basename(out),
          'build': torchvision_recipe(arch), 'load': "model.load_state_dict(torch.load(path, "
          "weights_only=True), strict=True); model.eval()",
          'arch': arch.to_json(), 'classes': list(names), 'palette': palette.tolist(),
          'run': run, 'run_dir': os.path.abspath(run_dir), 'epoch': epoch,
          'input': {'resolution': config.downstream.resolution,
                    'resize': 'bicubic to resolution x resolution (aspect ratio not kept)',
                    'scale': 'uint8 / 255', 'mean': list(deeplab.IMAGENET_MEAN),
                    'std': list(deeplab.IMAGENET_STD), 'layout': 'NCHW RGB'},
          'output': "model(x)['out']: logits [B, C, H, W]"}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with io.atomic_file(out, 'wb') as f:
    torch.save(state, f)
  io.write_json(meta_path, meta)
  return meta


def define_flags() -> None:
  """The command's flags (besides main's --config and --workdir); defined only when it runs,
  so that importing the module defines none."""
  flags.DEFINE_string('format', 'png', 'dataset: png, coco or hf.')
  flags.DEFINE_string('out', None, 'dataset: the output folder; deeplab: the .pt file.')
  flags.DEFINE_string('run', 'synthetic', 'deeplab: the downstream run.')
  flags.DEFINE_integer('epoch', None, "deeplab: the run's epoch (default: evaluate's pick).")


def main(argv):
  f = flags.FLAGS
  try:
    if len(argv) != 2 or argv[1] not in COMMANDS:
      raise InputError(f'give one command: {" or ".join(COMMANDS)} (python -m dgan_jax.export '
                       f'dataset --workdir=W --format=png --out=OUT); got {argv[1:]}')
    config = f.config
    config_lib.validate(config)
    main_lib.resolve_paths(config)
    workdir = os.path.abspath(os.path.expanduser(f.workdir))
    if not os.path.isdir(workdir):
      raise InputError(f'--workdir: {workdir} is not a folder')
    if argv[1] == 'dataset':
      record = export_dataset(workdir, f.format, f.out)
      print(f'export: {sum(record["splits"].values())} samples ({record["splits"]}) as '
            f'{f.format} -> {f.out}')
    else:
      meta = export_deeplab(config, workdir, f.run, f.out, f.epoch)
      print(f'export: {f.run} epoch {meta["epoch"]} -> {f.out}; build it with {meta["build"]}')
  except InputError as e:
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=main_lib.parse_flags)
