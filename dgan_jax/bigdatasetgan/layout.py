"""BigDatasetGAN's folder layout: annotated BigGAN samples and their latents.

  <root>/annotations/<subset>/<wnid>/<stem>.png   the mask: nonzero pixels are foreground
  <root>/images/<subset>/<wnid>/<stem>.png        the sample (optional; shown in check.png)
  <root>/latents/<subset>/<wnid>/<stem>.npy       its z, [1, dim_z] (or [dim_z])

The class id is the second-to-last '_'-separated field of the stem (`..._<wnid>_<class
id>_<number>`), as BigDatasetGAN's reader takes it; a mask is paired with the latent of
the same stem. `subset` is 'biggan512' in BigDatasetGAN's release (f'biggan{resolution}'
here). The `sample` stage writes images/ and latents/ in this layout, named
`<wnid>_<class id>_<number>` with the ImageNet wnid of the class (`class_folder`); masks
drawn on those images go to annotations/.
"""

import dataclasses
import glob
import os

import numpy as np
from PIL import Image

from dgan_jax.data import annotations as annotations_lib
from dgan_jax.data import classes
from dgan_jax.data.classes import class_folder
from dgan_jax.data import images as image_utils
from dgan_jax.errors import InputError

def sample_stem(class_id: int, number: int, num_classes: int) -> str:
  return f'{class_folder(class_id, num_classes)}_{class_id}_{number:04d}'


def class_id_of(path: str) -> int:
  """The class of a sample file: the stem's second-to-last '_' field (BigDatasetGAN
  naming), else its folder (an ImageNet wnid, or class{id:04d}); InputError otherwise."""
  stem = os.path.splitext(os.path.basename(path))[0]
  fields = stem.split('_')
  if len(fields) >= 3 and fields[-2].isdigit():
    return int(fields[-2])
  folder = os.path.basename(os.path.dirname(path))
  class_id = classes.class_id_from_folder(folder, classes.IMAGENET_CLASSES)
  if class_id is None:
    raise InputError(f'{path}: no class: the file name must end in _<class id>_<number> or '
                     'its folder be an ImageNet wnid or class<id>')
  return class_id


def class_id_from_stem(path: str, num_classes: int) -> int:
  """Second-to-last '_' field of the file name; InputError naming the file otherwise."""
  stem = os.path.splitext(os.path.basename(path))[0]
  fields = stem.split('_')
  if len(fields) < 3 or not fields[-2].lstrip('-').isdigit():
    raise InputError(f'{path}: the file name must end in _<class id>_<number> '
                     '(BigDatasetGAN naming, e.g. n02105162_225_0003)')
  class_id = int(fields[-2])
  if not 0 <= class_id < num_classes:
    raise InputError(f'{path}: class id {class_id} is outside the generator\'s '
                     f'[0, {num_classes})')
  return class_id


def read_latent(path: str, dim_z: int) -> np.ndarray:
  """A latents/ file -> z [dim_z] float32; InputError naming the file otherwise."""
  try:
    z = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise InputError(f'{path}: not a readable .npy array ({e})') from None
  if z.shape not in ((1, dim_z), (dim_z,)):
    raise InputError(f'{path}: a latent must be [1, {dim_z}] or [{dim_z}] (the generator\'s '
                     f'dim_z), got shape {z.shape}')
  z = np.asarray(z, np.float32).reshape(dim_z)
  if not np.all(np.isfinite(z)):
    raise InputError(f'{path}: latent contains NaN or infinity')
  return z


def read_mask(path: str, size: int) -> np.ndarray:
  """A mask PNG (any mode; converted to grey) -> [size, size] uint8, 1 where nonzero.
  A mask of another square size is resized (nearest); other shapes are an InputError."""
  grey = _read_grey(path)
  if grey.shape[0] != grey.shape[1]:
    raise InputError(f'{path}: mask is {grey.shape[0]}x{grey.shape[1]}; BigGAN samples are '
                     f'square ({size}x{size})')
  return _foreground(grey, (size, size))


def _read_grey(path: str) -> np.ndarray:
  """A mask PNG in any mode -> [h, w] uint8 grey; InputError naming it when unreadable."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert('L'))
  except (OSError, SyntaxError, ValueError) as e:
    raise InputError(f'{path}: not a readable image ({e})') from None


def _foreground(grey: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """[h, w] -> [shape] uint8, 1 where nonzero (resized nearest when the size differs)."""
  return (annotations_lib.resize_nearest(grey, *shape) != 0).astype(np.uint8)


@dataclasses.dataclass
class Annotations:
  """Annotated samples of one layout root, in (wnid folder, file name) order."""
  root: str
  subset: str
  names: list[str]              # '<wnid>/<stem>'
  class_ids: np.ndarray         # [N] int32
  latents: np.ndarray           # [N, dim_z] float32
  mask_paths: list[str]
  image_paths: list[str | None]

  def __len__(self) -> int:
    return len(self.names)

  def masks(self, indices, size: int) -> np.ndarray:
    """-> [len(indices), size, size] uint8 in {0, 1}."""
    return np.stack([read_mask(self.mask_paths[i], size) for i in indices])

  def image(self, index: int) -> np.ndarray | None:
    """The stored sample [h, w, 3] uint8, or None when images/ lacks it."""
    path = self.image_paths[index]
    if path is None:
      return None
    return image_utils.read_rgb(path)


def subset_name(g) -> str:
  """The subset folder of generator g's samples: 'biggan512' for BigDatasetGAN's
  BigGAN-512 (family and resolution)."""
  return f'{g.family}{g.resolution}'


def paths(root: str, subset: str, folder: str, stem: str) -> dict[str, str]:
  """The annotation, image and latent paths of one sample."""
  return {'annotation': os.path.join(root, 'annotations', subset, folder, stem + '.png'),
          'image': os.path.join(root, 'images', subset, folder, stem + '.png'),
          'latent': os.path.join(root, 'latents', subset, folder, stem + '.npy')}


def read(root: str, subset: str, dim_z: int, num_classes: int) -> Annotations:
  """Every mask under <root>/annotations/<subset>/*/ with its latent and class id.

  Raises InputError naming the file for a mask without its latent, a malformed latent,
  a class id outside [0, num_classes), or when there is no mask at all."""
  mask_dir = os.path.join(root, 'annotations', subset)
  mask_paths = sorted(glob.glob(os.path.join(glob.escape(mask_dir), '*', '*.png')))
  if not mask_paths:
    raise InputError(f'{mask_dir}: no masks (<wnid>/<stem>.png, BigDatasetGAN layout: '
                     'annotations/, images/, latents/ under config.data.annotation_dir)')
  names, class_ids, latents, image_paths = [], [], [], []
  for mask_path in mask_paths:
    folder = os.path.basename(os.path.dirname(mask_path))
    stem = os.path.splitext(os.path.basename(mask_path))[0]
    where = paths(root, subset, folder, stem)
    class_ids.append(class_id_from_stem(mask_path, num_classes))
    if not os.path.isfile(where['latent']):
      raise InputError(f'{mask_path}: its latent {where["latent"]} is missing')
    latents.append(read_latent(where['latent'], dim_z))
    image_paths.append(where['image'] if os.path.isfile(where['image']) else None)
    names.append(f'{folder}/{stem}')
  return Annotations(root, subset, names, np.asarray(class_ids, np.int32), np.stack(latents),
                     mask_paths, image_paths)


def write_sample(root: str, subset: str, class_id: int, number: int, num_classes: int,
                 image: np.ndarray, z: np.ndarray) -> str:
  """Writes images/.../<stem>.png and latents/.../<stem>.npy ([1, dim_z]); -> the stem."""
  folder = class_folder(class_id, num_classes)
  stem = sample_stem(class_id, number, num_classes)
  where = paths(root, subset, folder, stem)
  for key in ('image', 'latent'):
    os.makedirs(os.path.dirname(where[key]), exist_ok=True)
  image_utils.save_png(where['image'], image)
  np.save(where['latent'], np.asarray(z, np.float32).reshape(1, -1))
  return stem


def read_pairs(root: str, limit: int | None = None):
  """Every mask under <root>/annotations/*/*/ with its image (any subset; images/ with
  the same path and a .png, .jpg or .jpeg extension) -> (images: list of uint8
  [h, w, 3], masks: list of uint8 [h, w] at the image's size, 1 = foreground, class ids
  [N] int32 (`class_id_of`), names '<subset>/<wnid>/<stem>'), sorted by subset, folder
  and name (the first `limit` of them). InputError naming a mask without its image."""
  mask_paths = sorted(glob.glob(os.path.join(glob.escape(root), 'annotations', '*', '*',
                                             '*.png')))[:limit]
  if not mask_paths:
    raise InputError(f'{root}/annotations: no masks (<subset>/<wnid>/<stem>.png)')
  images, masks, class_ids, names = [], [], [], []
  for mask_path in mask_paths:
    relative = os.path.relpath(os.path.splitext(mask_path)[0],
                               os.path.join(root, 'annotations'))
    candidates = [os.path.join(root, 'images', relative + ext)
                  for ext in ('.png', '.jpg', '.jpeg', '.JPEG', '.JPG')]
    image_path = next((p for p in candidates if os.path.isfile(p)), None)
    if image_path is None:
      raise InputError(f'{mask_path}: its image {candidates[0]} (or .jpg) is missing')
    picture = image_utils.read_rgb(image_path)
    images.append(picture)
    masks.append(_foreground(_read_grey(mask_path), picture.shape[:2]))
    class_ids.append(class_id_of(mask_path))
    names.append(relative)
  return images, masks, np.asarray(class_ids, np.int32), names
