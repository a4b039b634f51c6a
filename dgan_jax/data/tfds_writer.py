"""Writes TFDS datasets (array_record shards + metadata) without TensorFlow.

The result opens with `tfds.builder_from_directory(path)` and reads with
`.as_data_source(split)`. Examples are serialized once, in shards; splits can then be
assembled from those shards by copying serialized records (no re-encoding).
"""

import os

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from tensorflow_datasets.core import example_serializer

FILE_TEMPLATE = '{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'


def segmentation_features(height: int, width: int, num_classes: int, latent_size: int,
                          extra_scalars: dict | None = None) -> tfds.features.FeaturesDict:
  """image uint8 [H, W, 3], label [H, W] (uint8, uint16 above 255 classes), latent float32
  [latent_size], uncertainty float32, index int64, plus one scalar per extra_scalars
  entry (name -> numpy dtype, e.g. BigGAN's {'class_id': np.int64})."""
  zlib = tfds.features.Encoding.ZLIB
  label_dtype = np.uint8 if num_classes <= 256 else np.uint16
  return tfds.features.FeaturesDict({
      'image': tfds.features.Tensor(shape=(height, width, 3), dtype=np.uint8, encoding=zlib),
      'label': tfds.features.Tensor(shape=(height, width), dtype=label_dtype, encoding=zlib),
      'latent': tfds.features.Tensor(shape=(latent_size,), dtype=np.float32),
      'uncertainty': tfds.features.Tensor(shape=(), dtype=np.float32),
      'index': tfds.features.Tensor(shape=(), dtype=np.int64),
      **{name: tfds.features.Tensor(shape=(), dtype=dtype)
         for name, dtype in (extra_scalars or {}).items()},
  })


class RecordWriter:
  """Serialized examples -> one array_record file, under a temporary name until close()."""

  def __init__(self, path: str, features: tfds.features.FeaturesDict | None = None):
    self.path = path
    self._tmp = path + '.partial'
    self._serializer = (example_serializer.ExampleSerializer(features.get_serialized_info())
                        if features is not None else None)
    self._features = features
    self._writer = array_record_module.ArrayRecordWriter(self._tmp, 'group_size:1')
    self.count = 0

  def write(self, example: dict) -> None:
    self.write_serialized(
        self._serializer.serialize_example(self._features.encode_example(example)))

  def write_serialized(self, record: bytes) -> None:
    self._writer.write(record)
    self.count += 1

  def close(self) -> None:
    self._writer.close()
    os.replace(self._tmp, self.path)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *_):
    if exc_type is None:
      self.close()
    else:
      self._writer.close()
      os.remove(self._tmp)


def count_records(path: str) -> int | None:
  """Records in an array_record file, or None when it is missing, truncated or damaged."""
  if not os.path.isfile(path):
    return None
  try:
    reader = array_record_module.ArrayRecordReader(path)
    try:
      count = reader.num_records()
      if count:
        reader.read([count - 1])   # the last record's chunk is whole
    finally:
      reader.close()
  except RuntimeError:
    return None
  return count


def read_records(path: str):
  """Yields the serialized records of one array_record file, in order."""
  reader = array_record_module.ArrayRecordReader(path)
  try:
    for i in range(reader.num_records()):
      yield reader.read([i])[0]
  finally:
    reader.close()


def shard_path(data_dir: str, name: str, split: str, shard: int, num_shards: int) -> str:
  return os.path.join(
      data_dir, f'{name}-{split}.array_record-{shard:05d}-of-{num_shards:05d}')


def write_metadata(data_dir: str, name: str, features: tfds.features.FeaturesDict,
                   shard_lengths: dict[str, list[int]], description: str = '') -> None:
  """dataset_info.json + features.json for the shards already in data_dir."""
  split_infos = [
      tfds.core.SplitInfo(
          name=split, shard_lengths=lengths, num_bytes=0,
          filename_template=tfds.core.ShardedFileTemplate(
              data_dir=data_dir, template=FILE_TEMPLATE, dataset_name=name, split=split,
              filetype_suffix='array_record'))
      for split, lengths in shard_lengths.items()]
  tfds.folder_dataset.write_metadata(
      data_dir=data_dir, features=features, split_infos=split_infos,
      filename_template=FILE_TEMPLATE, description=description, check_data=False)
