"""Datasets written without TensorFlow read back through TFDS."""

import os

import numpy as np
import tensorflow_datasets as tfds

from dgan_jax.data import tfds_writer


def _example(i, num_classes):
  rng = np.random.RandomState(i)
  return {'image': rng.randint(0, 256, (6, 5, 3)).astype(np.uint8),
          'label': rng.randint(0, num_classes, (6, 5)).astype(
              np.uint8 if num_classes <= 256 else np.uint16),
          'latent': rng.standard_normal(4).astype(np.float32),
          'uncertainty': np.float32(i / 10), 'index': np.int64(100 + i)}


def test_write_and_read_back_through_tfds(tmp_path):
  for num_classes in (12, 300):
    data_dir = str(tmp_path / f'ds{num_classes}')
    features = tfds_writer.segmentation_features(6, 5, num_classes, 4)
    raw = str(tmp_path / f'raw{num_classes}.array_record')
    with tfds_writer.RecordWriter(raw, features) as writer:
      for i in range(5):
        writer.write(_example(i, num_classes))
    # Splits assembled from the raw shard by copying serialized records.
    os.makedirs(data_dir)
    lengths = {}
    for split, keep in (('train', lambda i: i != 3), ('dropped', lambda i: i == 3)):
      path = tfds_writer.shard_path(data_dir, 'synthetic', split, 0, 1)
      with tfds_writer.RecordWriter(path) as writer:
        for i, record in enumerate(tfds_writer.read_records(raw)):
          if keep(i):
            writer.write_serialized(record)
      lengths[split] = [writer.count]
    tfds_writer.write_metadata(data_dir, 'synthetic', features, lengths, 'test data')

    builder = tfds.builder_from_directory(data_dir)
    train = builder.as_data_source('train')
    assert len(train) == 4 and len(builder.as_data_source('dropped')) == 1
    for position, i in enumerate([0, 1, 2, 4]):
      expected, got = _example(i, num_classes), train[position]
      for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
        if np.ndim(expected[key]):
          assert got[key].dtype == expected[key].dtype, key
