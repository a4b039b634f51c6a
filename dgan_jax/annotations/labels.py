"""The run's classes as labelling tools name and colour them."""

import numpy as np

from dgan_jax.data import images as image_utils
from dgan_jax.errors import InputError

# Names tools give the unlabelled class (CVAT's label map, LabelMe's examples); they mean
# class 0 unless the config names a class so.
IMPLICIT_BACKGROUND = ('background', '_background_')


class LabelSet:
  """config.data.class_names with their palette colours; names match case-insensitively,
  and config.data.label_aliases maps other spellings to class names."""

  def __init__(self, class_names, palette=(), aliases=None):
    self.names = tuple(class_names)
    self.colors = image_utils.palette_array(len(self.names), tuple(palette))   # [C, 3] uint8
    self._ids = {name.lower(): i for i, name in enumerate(self.names)}
    for name in IMPLICIT_BACKGROUND:
      self._ids.setdefault(name, 0)
    for alias, name in dict(aliases or {}).items():
      if not isinstance(name, str) or name.lower() not in self._ids:
        raise InputError(f'config.data.label_aliases.{alias}: {name!r} is not in '
                         f'config.data.class_names {list(self.names)}')
      self._ids[alias.lower()] = self._ids[name.lower()]

  @classmethod
  def from_config(cls, data_config) -> 'LabelSet':
    return cls(data_config.class_names, data_config.palette,
               data_config.get('label_aliases') or {})

  def __len__(self) -> int:
    return len(self.names)

  @property
  def mask_dtype(self):
    return np.uint8 if len(self.names) <= 256 else np.int32

  def id_of(self, label, where: str) -> int:
    """The class id of a tool's label; InputError naming `where` and the known classes."""
    class_id = self._ids.get(str(label).strip().lower())
    if class_id is None:
      raise InputError(f'{where}: label {label!r} is not a class of the config (known: '
                       f'{", ".join(self.names)}); rename it or map it with '
                       'config.data.label_aliases')
    return class_id

  def hex_color(self, class_id: int) -> str:
    return '#' + ''.join(f'{v:02x}' for v in self.colors[class_id])

  def nearest(self, rgb: np.ndarray, tolerance: float, colors: np.ndarray | None = None,
              ids: np.ndarray | None = None):
    """[h, w, 3] uint8 -> ([h, w] class ids, [h, w] bool: farther than `tolerance`
    (Euclidean RGB distance) from every colour). `colors` [K, 3] with class `ids` [K]
    replace the palette (a tool's own colour map)."""
    colors = self.colors if colors is None else colors
    ids = np.arange(len(colors)) if ids is None else np.asarray(ids)
    flat = rgb.reshape(-1, 3).astype(np.int32)
    unique, inverse = np.unique(flat, axis=0, return_inverse=True)
    distance = np.sqrt(((unique[:, None, :] - colors[None].astype(np.int32)) ** 2).sum(-1))
    best = distance.argmin(1)
    class_map = ids[best][inverse.ravel()].reshape(rgb.shape[:2])
    off = (distance[np.arange(len(unique)), best] > tolerance)[inverse.ravel()]
    return class_map, off.reshape(rgb.shape[:2])
