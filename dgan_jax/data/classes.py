"""Names of the classes of class-conditional generators: ImageNet's wnids for
1000-class models, `class{id:04d}` otherwise."""

import functools

IMAGENET_CLASSES = 1000


@functools.lru_cache(maxsize=None)
def imagenet_wnids() -> tuple[str, ...]:
  """The 1000 ILSVRC-2012 wnids in class-id order (the sorted list TFDS ships)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  path = tfds.core.tfds_path('datasets/imagenet2012/labels.txt')
  wnids = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
  if len(wnids) != IMAGENET_CLASSES:
    raise RuntimeError(f'{path}: expected {IMAGENET_CLASSES} wnids, found {len(wnids)}')
  return wnids


def class_folder(class_id: int, num_classes: int) -> str:
  """The wnid of an ImageNet class; `class{id:04d}` for generators of other class sets."""
  if num_classes == IMAGENET_CLASSES:
    return imagenet_wnids()[class_id]
  return f'class{class_id:04d}'


def class_id_from_folder(folder: str, num_classes: int) -> int | None:
  """The inverse of `class_folder`; None when the name is neither."""
  if num_classes == IMAGENET_CLASSES and folder in imagenet_wnids():
    return imagenet_wnids().index(folder)
  if folder.startswith('class') and folder[5:].isdigit() and int(folder[5:]) < num_classes:
    return int(folder[5:])
  return None
