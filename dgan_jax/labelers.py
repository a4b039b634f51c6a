"""The Labeler interface: what learns per-pixel labels from a generator's feature maps,
and the registry of the labelers there are (chosen by `config.labeler`, independent of
the generator):

  'mlp'        DatasetGAN's ensemble of per-pixel MLPs (dgan_jax/interpreter.py);
               options in config.interpreter
  'conv_head'  BigDatasetGAN's convolutional segmentation head (dgan_jax/bigdatasetgan/
               head.py; trained, and wrapped as a labeler, by bigdatasetgan/train.py);
               options in config.biggan.head and config.biggan.train

Every labeler is an ensemble of M members; the generate step turns the members'
predictions into a label (majority vote) and an uncertainty (Jensen-Shannon divergence).
"""

import abc
import importlib
import os
from typing import Any, Callable, ClassVar

import jax

from dgan_jax.errors import InputError

REGISTRY = {'mlp': 'dgan_jax.interpreter', 'conv_head': 'dgan_jax.bigdatasetgan.train'}

# (variables, feature maps: list of [B, h, w, C], class conditioning [B, D] or None)
#   -> (label [B, H', W] int32, pixel uncertainty [B, H', W] float32, image score [B])
LabelFn = Callable[[Any, list[jax.Array], jax.Array | None],
                   tuple[jax.Array, jax.Array, jax.Array]]


class Labeler(abc.ABC):
  """A trained (or untrained) labeler: its architecture and variables."""
  name: ClassVar[str] = ''
  folder: ClassVar[str] = ''      # its workdir folder (see dgan_jax/io.py)
  meta_file: ClassVar[str] = ''   # the file whose presence marks a complete saved labeler

  variables: Any
  arch: Any          # with num_members

  @property
  def num_members(self) -> int:
    return self.arch.num_members

  @classmethod
  @abc.abstractmethod
  def create(cls, config, g, layout) -> 'Labeler':
    """An untrained labeler for generator g's feature maps (`g.feature_specs`) and the
    labelled grid `layout`, its options from the labeler's config section."""

  @classmethod
  @abc.abstractmethod
  def load(cls, directory: str) -> 'Labeler':
    """A saved labeler; CheckpointError naming the file when it is missing or corrupt."""

  @abc.abstractmethod
  def save(self, directory: str, info: dict) -> None:
    """Writes the labeler (meta_file last) with `info` in its metadata."""

  @abc.abstractmethod
  def record(self) -> dict:
    """JSON: the architecture and training options (a change restarts training)."""

  @abc.abstractmethod
  def check_layout(self, g, layout) -> None:
    """InputError when the labeler does not fit generator g's maps and the grid."""

  @abc.abstractmethod
  def train(self, g, sampling, data, layout, seed: int, checkpoint_dir: str) -> dict:
    """Trains on the annotated set `data` (dgan_jax/data/annotated.py), resuming from
    the orbax checkpoints in checkpoint_dir; sets `variables`. Returns
    {'steps', 'history' (arrays per logged step: 'step', 'loss' [M], 'accuracy' [M]),
    **figures worth recording in info.json}."""

  @abc.abstractmethod
  def label_fn(self, layout, top_fraction: float, chunk_rows: int) -> LabelFn:
    """The pure labelling function of the generate step (see LabelFn)."""


def labeler_class(name: str) -> type[Labeler]:
  if name not in REGISTRY:
    raise InputError(f'config.labeler: unknown labeler {name!r}; known: {sorted(REGISTRY)}')
  return importlib.import_module(REGISTRY[name]).Labeler


def from_config(config) -> type[Labeler]:
  return labeler_class(config.labeler)


def workdir_folder(config, workdir: str) -> str:
  """Where the train_interpreter stage keeps the run's labeler: workdir/<its folder>."""
  return os.path.join(workdir, from_config(config).folder)
