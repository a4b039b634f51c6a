"""Images and label maps for DeepLab: the synthetic TFDS dataset, the annotated images
(few-shot baseline), real test folders; resizing, augmentation and batching.

Every image is brought to a square `resolution` x `resolution` grid as DatasetGAN's
ImageLabelDataset does (aspect ratio not kept): PIL bicubic for images (PIL's default
`resize` filter), nearest neighbour with PIL's pixel-centre rule for label maps.

Training order: the examples are read along one endless stream, the concatenation of
permutations p_0, p_1, ... of 0..N-1, p_k drawn from numpy's default_rng([seed,
SHUFFLE_STREAM, k]); step s of the run takes stream positions [s*B, (s+1)*B). Example
randomness (augmentation) comes from default_rng([seed, AUGMENT_STREAM, position]). So a
batch depends on (seed, step) only: a resumed run sees what an uninterrupted one would.
"""

import concurrent.futures
import dataclasses
import os
import threading
from typing import Iterator, Sequence

import numpy as np

from dgan_jax.bigdatasetgan import layout as layout_lib
from dgan_jax.data import annotated
from dgan_jax.data import annotations
from dgan_jax.data import images as image_utils
from dgan_jax.downstream import deeplab
from dgan_jax.downstream.metrics import IGNORE_LABEL
from dgan_jax.errors import InputError

SHUFFLE_STREAM = 11
AUGMENT_STREAM = 12
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')
# Padding of images smaller than the crop: ImageNet's mean colour (0 after `normalize`).
PAD_COLOR = tuple(int(round(255 * m)) for m in deeplab.IMAGENET_MEAN)


def resize_label(label: np.ndarray, height: int, width: int) -> np.ndarray:
  """[h, w] ids -> [height, width]: PIL's NEAREST (source pixel floor((i + 0.5) * h /
  height)), for any integer dtype."""
  h, w = label.shape
  if (h, w) == (height, width):
    return label
  rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
  cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
  return label[rows[:, None], cols[None, :]]


@dataclasses.dataclass(frozen=True)
class Augment:
  """Random scale in scale_range (of the square `resolution` grid), random crop back to
  it (or padding: PAD_COLOR, IGNORE_LABEL), random horizontal flip."""
  resolution: int
  flip: bool = False
  scale_range: tuple[float, float] = (1.0, 1.0)

  @property
  def enabled(self) -> bool:
    return self.flip or tuple(self.scale_range) != (1.0, 1.0)

  def __call__(self, image: np.ndarray, label: np.ndarray,
               rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """image uint8 [h, w, 3], label [h, w] -> ([R, R, 3] uint8, [R, R] uint8)."""
    r = self.resolution
    if rng is None or not self.enabled:
      return image_utils.resize_image(image, r, r), resize_label(label, r, r).astype(np.uint8)
    low, high = self.scale_range
    size = max(1, int(round(r * rng.uniform(low, high))))
    image, label = image_utils.resize_image(image, size, size), resize_label(label, size, size)
    if size >= r:
      y, x = rng.integers(0, size - r + 1, size=2)
      image, label = image[y:y + r, x:x + r], label[y:y + r, x:x + r]
    else:
      y, x = rng.integers(0, r - size + 1, size=2)
      canvas = np.empty((r, r, 3), np.uint8)
      canvas[...] = PAD_COLOR
      canvas[y:y + size, x:x + size] = image
      padded = np.full((r, r), IGNORE_LABEL, label.dtype)
      padded[y:y + size, x:x + size] = label
      image, label = canvas, padded
    if self.flip and rng.random() < 0.5:
      image, label = image[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label).astype(np.uint8)


def class_lookup(class_map: Sequence[int], num_classes: int) -> np.ndarray | None:
  """eval_class_map (training class -> test class) as a lookup table over all uint8
  values (unmapped ids become IGNORE_LABEL); None for the identity."""
  if not class_map:
    return None
  table = np.full(256, IGNORE_LABEL, np.uint8)
  table[:num_classes] = np.asarray(class_map, np.uint8)
  return table


def binary_lookup() -> np.ndarray:
  """Every class but 0 (and the ignore label) -> 1: foreground vs background."""
  table = np.ones(256, np.uint8)
  table[0], table[IGNORE_LABEL] = 0, IGNORE_LABEL
  return table


@dataclasses.dataclass(frozen=True)
class LabelMap:
  """How stored labels become the classes the segmenter predicts: through `lookup`
  (a uint8 table over all label values: eval_class_map, foreground/background), or, with
  `class_values`, every foreground pixel (label not 0, not ignored) takes the value of
  its sample's class (a class-conditional generator's (K + 1)-way segmentation)."""
  lookup: np.ndarray | None = None
  class_values: dict | None = None      # class id -> label value

  def __call__(self, label: np.ndarray, class_id=None) -> np.ndarray:
    if self.lookup is not None:
      label = self.lookup[label]
    if self.class_values is not None:
      if class_id is None or int(class_id) not in self.class_values:
        raise InputError(f'class {class_id} is not among the classes of the run '
                         f'{sorted(self.class_values)} (config.downstream.label_mode '
                         "'class' needs every sample's class)")
      foreground = (label != 0) & (label != IGNORE_LABEL)
      label = np.where(foreground, self.class_values[int(class_id)], label).astype(np.uint8)
    return label


IDENTITY = LabelMap()


def as_label_map(mapping) -> LabelMap:
  """A LabelMap, a lookup table or None -> LabelMap."""
  if isinstance(mapping, LabelMap):
    return mapping
  return LabelMap(lookup=mapping)


class SyntheticSource:
  """The `generate` stage's TFDS dataset (split 'train'): (image uint8 [H, W, 3],
  label [H, W] in the training classes, mapped through `mapping`: a LabelMap or a lookup
  table)."""

  def __init__(self, data_dir: str, mapping=None, split: str = 'train'):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    if not os.path.isfile(os.path.join(data_dir, 'dataset_info.json')):
      raise InputError(f'{data_dir}: no synthetic dataset (run the generate stage first)')
    self.data_dir = data_dir
    self._source = tfds.builder_from_directory(data_dir).as_data_source(split)
    self._map = as_label_map(mapping)
    self._lock = threading.Lock()   # Batches reads from several threads

  def __len__(self) -> int:
    return len(self._source)

  def get(self, indices: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    with self._lock:
      examples = self._source.__getitems__([int(i) for i in indices])
    return [(example['image'], self._map(example['label'], example.get('class_id')))
            for example in examples]


class ArraySource:
  """Images and labels held in memory (annotated images, test sets), labels mapped
  through `mapping` (a LabelMap or a lookup table) with each image's class id."""

  def __init__(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
               mapping=None, class_ids: Sequence[int] | None = None):
    if len(images) != len(labels):
      raise ValueError(f'{len(images)} images but {len(labels)} labels')
    mapping = as_label_map(mapping)
    class_ids = [None] * len(labels) if class_ids is None else list(class_ids)
    self.images = list(images)
    self.labels = [mapping(l, c) for l, c in zip(labels, class_ids)]

  def __len__(self) -> int:
    return len(self.images)

  def get(self, indices: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(self.images[i], self.labels[i]) for i in indices]


def stream_indices(seed: int, num_examples: int, start: int, count: int) -> np.ndarray:
  """Positions start .. start+count-1 of the shuffled stream (module docstring)."""
  first, last = start // num_examples, (start + count - 1) // num_examples
  perms = np.concatenate([
      np.random.default_rng([seed, SHUFFLE_STREAM, k]).permutation(num_examples)
      for k in range(first, last + 1)])
  offset = start - first * num_examples
  return perms[offset:offset + count]


class Batches:
  """Training batches of one process: its share of every global batch.

  get(step) -> (images uint8 [B/P, R, R, 3], labels uint8 [B/P, R, R]) for process
  `process_index` of `process_count` (rows process_index*B/P ... of the global batch).
  `iterate(first, last)` yields steps first..last-1 with `workers` threads preparing
  up to `prefetch` batches ahead.
  """

  def __init__(self, source, batch_size: int, seed: int, augment: Augment,
               process_index: int = 0, process_count: int = 1, workers: int = 4,
               prefetch: int = 2):
    if batch_size % process_count:
      raise InputError(f'batch size {batch_size} does not split over {process_count} processes')
    if len(source) == 0:
      raise InputError('no training examples')
    self.source, self.batch_size, self.seed, self.augment = source, batch_size, seed, augment
    self.local_batch = batch_size // process_count
    self.process_index = process_index
    self.workers, self.prefetch = workers, prefetch

  def get(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    start = step * self.batch_size + self.process_index * self.local_batch
    positions = np.arange(start, start + self.local_batch)
    indices = stream_indices(self.seed, len(self.source), start, self.local_batch)
    pairs = self.source.get(indices)
    images, labels = zip(*[
        self.augment(image, label, np.random.default_rng([self.seed, AUGMENT_STREAM, int(p)]))
        for (image, label), p in zip(pairs, positions)])
    return np.stack(images), np.stack(labels)

  def iterate(self, first: int, last: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
      pending = [pool.submit(self.get, s) for s in range(first, min(first + self.prefetch, last))]
      for step in range(first, last):
        batch = pending.pop(0).result()
        ahead = step + len(pending) + 1
        if ahead < last:
          pending.append(pool.submit(self.get, ahead))
        yield batch


# ----------------------------------------------------------------------------------------
# Folders of real images.


@dataclasses.dataclass
class LabeledImages:
  """names [N]; images uint8 [N, R, R, 3]; labels uint8 [N, R, R] (IGNORE_LABEL kept)."""
  names: list[str]
  images: np.ndarray
  labels: np.ndarray


def read_test_folder(folder: str, num_classes: int, resolution: int,
                     mapping: LabelMap = IDENTITY) -> LabeledImages:
  """DatasetGAN's test-set layout (see `labelled_pairs`), each pair resized to the
  square resolution grid."""
  names, images, labels = [], [], []
  for name, image, label in labelled_pairs(folder, num_classes, mapping):
    names.append(name)
    images.append(image_utils.resize_image(image, resolution, resolution))
    labels.append(resize_label(label, resolution, resolution))
  return LabeledImages(names, np.stack(images), np.stack(labels))


def labelled_pairs(folder: str, num_classes: int, mapping: LabelMap = IDENTITY,
                   field: str = 'config.evaluate.test_dir'
                   ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
  """A folder of labelled real images, one pair at a time, as stored -> (name, image
  uint8 [h, w, 3], label uint8 [h', w'] (a mask may have another size than its image));
  `field` names the config field in errors (raised before the first pair).

  DatasetGAN's test-set layout: images (.png/.jpg/...) and .npy masks in one folder,
  paired by their sorted order (plain string sort, as the original's `sort()`, which
  also fixes the folds). Mask ids must be < num_classes or IGNORE_LABEL; a [h, w, k]
  mask uses channel 0.

  A folder with an annotations/ subfolder is in BigDatasetGAN's layout instead (images/
  and annotations/<subset>/<wnid>/<stem>, foreground masks, the class from the name):
  its labels go through `mapping` (foreground/background, or the sample's class)."""
  if not folder or not os.path.isdir(folder):
    raise InputError(f'{field}: {folder or "(empty)"} is not a directory '
                     '(a folder of images and .npy masks with matching sorted names)')
  if annotated.detect_format(folder) == annotated.LAYOUT:
    return iter(_read_layout_pairs(folder, num_classes, mapping))
  names = sorted(os.listdir(folder))
  image_names = [n for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
  mask_names = [n for n in names if n.endswith('.npy')]
  if not image_names or len(image_names) != len(mask_names):
    raise InputError(f'{folder}: {len(image_names)} images and {len(mask_names)} .npy masks; '
                     'a test folder needs one mask per image')
  return _plain_pairs(folder, image_names, mask_names, num_classes)


def _plain_pairs(folder, image_names, mask_names, num_classes):
  for image_name, mask_name in zip(image_names, mask_names):
    mask_file = os.path.join(folder, mask_name)
    try:
      mask = np.load(mask_file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
      raise InputError(f'{mask_file}: not a readable .npy array ({e})') from None
    if mask.ndim == 3:
      mask = mask[..., 0]
    if mask.ndim != 2 or not (np.issubdtype(mask.dtype, np.integer)
                              or np.all(mask == np.round(mask))):
      raise InputError(f'{mask_file}: a mask must be [height, width] integer class ids, got '
                       f'{mask.dtype} {mask.shape}')
    mask = mask.astype(np.int64)
    bad = (mask < 0) | ((mask >= num_classes) & (mask != IGNORE_LABEL))
    if bad.any():
      raise InputError(f'{mask_file}: class id {int(mask[bad][0])} outside 0..{num_classes - 1}'
                       f' (and not the ignore label {IGNORE_LABEL})')
    yield (os.path.splitext(image_name)[0],
           image_utils.read_rgb(os.path.join(folder, image_name)), mask.astype(np.uint8))


def _read_layout_pairs(folder: str, num_classes: int, mapping: LabelMap):
  images, masks, class_ids, names = layout_lib.read_pairs(folder)
  labels = [mapping(mask, c) for mask, c in zip(masks, class_ids)]
  for name, label in zip(names, labels):
    if label.max(initial=0) >= num_classes and label.max() != IGNORE_LABEL:
      raise InputError(f'{folder}/annotations/{name}.png: label {int(label.max())} outside '
                       f'0..{num_classes - 1}')
  return list(zip(names, images, labels))


def read_labelled(folder: str, num_classes: int, mapping: LabelMap = IDENTITY,
                  field: str = 'config.downstream.finetune_dir') -> ArraySource:
  """A labelled folder in the test-set formats (`labelled_pairs`) as a training source,
  each mask resized to its image (nearest) where their sizes differ."""
  images, labels = [], []
  for _, image, label in labelled_pairs(folder, num_classes, mapping, field):
    images.append(image)
    labels.append(resize_label(label, *image.shape[:2]))
  return ArraySource(images, labels)


def read_annotated(annotation_dir: str, count: int, num_classes: int,
                   min_segment_pixels: int = annotations.MIN_SEGMENT_PIXELS,
                   mapping=None) -> ArraySource:
  """The annotated images and masks (`annotated.read_pairs`: the first `count` of a
  DatasetGAN or plain folder, masks resized to their image, small segments cleaned; or
  every sample of BigDatasetGAN's layout), labels through `mapping`."""
  images, masks, class_ids = annotated.read_pairs(annotation_dir, count, num_classes,
                                                  min_segment_pixels)
  return ArraySource(images, masks, mapping, class_ids)


def apply_lookup(source: ArraySource, mapping) -> ArraySource:
  """The source's examples with their labels (already mapped once) mapped again."""
  return source if mapping is None else ArraySource(source.images, source.labels, mapping)

