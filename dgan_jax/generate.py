"""The `generate` stage: run the factory over sample indices, write shards, keep the most
certain samples as a TFDS dataset.

Sample indices 0..N-1 are cut into shards of `samples_per_shard`; shard k belongs to
process k % process_count. A finished shard is `raw/shard-{k}-n{count}.array_record`
plus its `.scores.npy` ([count, 2]: index, score), both renamed into place when complete,
so an interrupted run resumes at the first missing shard and a larger `num_samples`
only generates the new indices. When every process has finished, process 0 ranks all
scores, keeps the N - floor(N * drop_fraction) least uncertain samples (ties: smaller
index first) and assembles the dataset by copying serialized records:

  workdir/dataset/   {name}-train.array_record-*   the kept samples, by index
                     {name}-dropped.array_record-* the dropped ones
                     dataset_info.json, features.json (TFDS metadata)
                     generation.json  every sample's score, the threshold, the config (and
                                      the classes of a conditional generator)
                     preview.png      samples and their labels, kept (green) / dropped (red)
  workdir/generate/  raw/ (the shards), plan.json (what the shards depend on: a changed
                     plan deletes them), summary.json (timing)
"""

import errno
import glob
import json
import os
import re
import shutil
import time

import numpy as np
from absl import logging
from tqdm import tqdm

from dgan_jax import io
from dgan_jax import parallel
from dgan_jax.data import images as image_utils
from dgan_jax.data import tfds_writer
from dgan_jax.errors import InputError

_BASE_FEATURES = ('image', 'label', 'latent', 'uncertainty', 'index')
_SHARD = re.compile(r'shard-(\d+)-n(\d+)\.scores\.npy$')


def shard_ranges(num_samples: int, samples_per_shard: int) -> list[tuple[int, int]]:
  return [(start, min(start + samples_per_shard, num_samples))
          for start in range(0, num_samples, samples_per_shard)]


def _shard_base(raw_dir: str, shard: int, count: int) -> str:
  return os.path.join(raw_dir, f'shard-{shard:05d}-n{count}')


def _shard_complete(base: str, count: int) -> bool:
  """Whether a raw shard's scores and records are both whole. A damaged one (a truncated
  file, a partial copy) is deleted to be made again: raw shards are a cache."""
  scores_path = base + '.scores.npy'
  if not os.path.exists(scores_path):
    return False
  try:
    table_shape = np.load(scores_path, allow_pickle=False).shape
  except (OSError, ValueError, EOFError):
    table_shape = None
  if table_shape == (count, 2) and tfds_writer.count_records(base + '.array_record') == count:
    return True
  logging.warning('generate: %s is damaged; making it again', base)
  io.remove([scores_path, base + '.array_record'])
  return False


def generate_shards(factory, features, raw_dir: str, num_samples: int, samples_per_shard: int,
                    batch_size: int, process_index: int = 0, process_count: int = 1) -> dict:
  """Generates this process's missing shards. Returns timing figures."""
  os.makedirs(raw_dir, exist_ok=True)
  label_dtype = features['label'].np_dtype
  extra = [k for k in features.keys() if k not in _BASE_FEATURES]  # e.g. BigGAN's class_id
  ranges = shard_ranges(num_samples, samples_per_shard)
  mine = [k for k in range(len(ranges)) if k % process_count == process_index]
  pending = [k for k in mine
             if not _shard_complete(_shard_base(raw_dir, k, ranges[k][1] - ranges[k][0]),
                                    ranges[k][1] - ranges[k][0])]
  total = sum(ranges[k][1] - ranges[k][0] for k in pending)
  start_time = time.time()
  generated = 0
  written = []   # bytes of each shard written
  with tqdm(total=total, desc=f'generate (process {process_index})', unit='img') as bar:
    for position, k in enumerate(pending):
      begin, end = ranges[k]
      base = _shard_base(raw_dir, k, end - begin)
      scores = []
      try:
        with tfds_writer.RecordWriter(base + '.array_record', features) as writer:
          for batch_start in range(begin, end, batch_size):
            indices = np.arange(batch_start, min(batch_start + batch_size, end))
            out = factory(indices)
            for j, index in enumerate(indices):
              writer.write({'image': out['image'][j],
                            'label': out['label'][j].astype(label_dtype),
                            'latent': out['z'][j], 'uncertainty': out['uncertainty'][j],
                            'index': np.int64(index), **{k: out[k][j] for k in extra}})
              scores.append((index, out['uncertainty'][j]))
            generated += len(indices)
            bar.update(len(indices))
        io.save_npy(base + '.scores.npy', np.asarray(scores, np.float64))
      except OSError as e:
        if e.errno != errno.ENOSPC:
          raise
        io.remove([base + '.scores.npy'])
        left = len(pending) - position
        need = (f'about {left * np.mean(written) / 2**30:.2f} GB more for the {left} '
                'shards left' if written else f'room for {left} more shards')
        raise InputError(f'{raw_dir}: the disk filled up while writing {base}.array_record; '
                         f'the finished shards are kept ({len(written)} of them from this run), '
                         f'and it needs {need}; free space and rerun') from None
      written.append(os.path.getsize(base + '.array_record'))
  seconds = time.time() - start_time
  return {'generated': generated, 'seconds': round(seconds, 3),
          'images_per_second': round(generated / seconds, 3) if generated else None,
          'shards': len(pending)}


def read_scores(raw_dir: str, num_samples: int, samples_per_shard: int):
  """-> (shard files in index order, indices [N] int64, scores [N] float64)."""
  shards, indices, scores = [], [], []
  for k, (begin, end) in enumerate(shard_ranges(num_samples, samples_per_shard)):
    base = _shard_base(raw_dir, k, end - begin)
    if not os.path.exists(base + '.scores.npy'):
      raise FileNotFoundError(f'{base}.scores.npy: shard missing (a process has not finished)')
    table = np.load(base + '.scores.npy')
    shards.append(base + '.array_record')
    indices.append(table[:, 0].astype(np.int64))
    scores.append(table[:, 1])
  return shards, np.concatenate(indices), np.concatenate(scores)


def select(indices: np.ndarray, scores: np.ndarray, drop_fraction: float):
  """-> (kept mask [N] bool, threshold): keep the N - floor(N * drop_fraction) lowest
  scores; ties go to the smaller index."""
  order = np.lexsort((indices, scores))
  num_keep = len(scores) - int(len(scores) * drop_fraction)
  kept = np.zeros(len(scores), bool)
  kept[order[:num_keep]] = True
  threshold = float(scores[order[num_keep - 1]]) if num_keep else float('-inf')
  return kept, threshold


def _preview(features, shards, kept_mask, scores, palette, count: int) -> np.ndarray:
  """Grid of (image | colored label) pairs: the first samples and the most uncertain
  ones, framed green when kept and red when dropped."""
  most_uncertain = np.argsort(-scores)[:max(1, count // 4)]
  wanted = set(range(min(count - len(most_uncertain), len(scores)))) | set(
      most_uncertain.tolist())
  tiles = []
  position = 0
  for shard in shards:
    for record in tfds_writer.read_records(shard):
      if position in wanted:
        example = features.deserialize_example_np(record)
        pair = image_utils.enlarge(np.concatenate(
            [example['image'], image_utils.colorize(example['label'], palette)], axis=1))
        color = (40, 180, 40) if kept_mask[position] else (220, 30, 30)
        tiles.append(np.pad(pair, ((3, 3), (3, 3), (0, 0)), mode='constant',
                            constant_values=0))
        frame = np.ones(tiles[-1].shape[:2], bool)
        frame[3:-3, 3:-3] = False
        tiles[-1][frame] = color
      position += 1
  return image_utils.grid(np.stack(tiles), columns=4)


def finalize(config, features, raw_dir: str, out_dir: str, timing: dict,
             num_samples: int | None = None, classes=()) -> dict:
  """Ranks every score and writes the dataset directory (atomically).
  num_samples: default config.generate.num_samples; classes: (id, name) of the classes
  of a conditional generator's samples, recorded in generation.json."""
  gen = config.generate
  num_samples = gen.num_samples if num_samples is None else num_samples
  shards, indices, scores = read_scores(raw_dir, num_samples, gen.samples_per_shard)
  kept_mask, threshold = select(indices, scores, gen.drop_fraction)
  try:
    with io.atomic_dir(out_dir) as tmp:
      return _write_dataset(config, features, tmp, shards, indices, scores, kept_mask,
                            threshold, timing, classes)
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise
    needed = sum(os.path.getsize(shard) for shard in shards)
    raise InputError(f'{out_dir}: the disk filled up while assembling the dataset; it '
                     f'needs about {needed / 2**30:.2f} GB free (the raw shards\' size). '
                     'Nothing partial was kept; free space and rerun') from None


def _write_dataset(config, features, tmp: str, shards, indices, scores, kept_mask,
                   threshold: float, timing: dict, classes) -> dict:
  """The dataset directory's contents, written into `tmp`."""
  gen = config.generate
  name = gen.dataset_name
  counts = {'train': int(kept_mask.sum()), 'dropped': int((~kept_mask).sum())}
  lengths = {split: [] for split in counts}
  writers = {}
  shard_counter = {split: 0 for split in counts}
  per_shard = gen.samples_per_shard

  def writer_for(split):
    current = writers.get(split)
    if current is None or current.count == per_shard:
      if current is not None:
        current.close()
        lengths[split].append(current.count)
      num_shards = -(-counts[split] // per_shard)
      path = tfds_writer.shard_path(tmp, name, split, shard_counter[split], num_shards)
      shard_counter[split] += 1
      writers[split] = current = tfds_writer.RecordWriter(path)
    return current

  position = 0
  for shard in tqdm(shards, desc='assemble dataset', unit='shard'):
    for record in tfds_writer.read_records(shard):
      writer_for('train' if kept_mask[position] else 'dropped').write_serialized(record)
      position += 1
  for split, writer in writers.items():
    writer.close()
    lengths[split].append(writer.count)
  lengths = {split: lens for split, lens in lengths.items() if counts[split]}
  tfds_writer.write_metadata(
      tmp, name, features, lengths,
      description=f'DatasetGAN synthetic dataset ({config.data.name}): {counts["train"]} '
                  f'kept of {len(scores)} samples, uncertainty <= {threshold:.6g}')
  palette = image_utils.palette_array(config.data.num_classes, config.data.palette)
  image_utils.save_png(os.path.join(tmp, 'preview.png'),
                       _preview(features, shards, kept_mask, scores, palette,
                                gen.preview_count))
  record = {'num_samples': int(len(scores)), 'num_kept': counts['train'],
            'drop_fraction': gen.drop_fraction, 'top_fraction': gen.top_fraction,
            'threshold': threshold, 'seed': config.seed,
            'samples': [{'index': int(i), 'uncertainty': float(s), 'kept': bool(k)}
                        for i, s, k in zip(indices, scores, kept_mask)],
            'timing': timing, 'config': json.loads(config.to_json())}
  if classes:
    record['classes'] = [{'id': int(c), 'name': name} for c, name in classes]
  io.write_json(os.path.join(tmp, 'generation.json'), record)
  return record


def wait_for_processes(raw_dir: str, process_count: int, timeout: float = 24 * 3600) -> None:
  """Process 0 waits until every process has left its done marker."""
  deadline = time.time() + timeout
  while True:
    done = glob.glob(os.path.join(raw_dir, f'process-*-of-{process_count}.done'))
    if len(done) >= process_count:
      return
    if time.time() > deadline:
      raise TimeoutError(f'{raw_dir}: only {len(done)} of {process_count} processes finished')
    time.sleep(1.0)


def _wait_for_plan(plan_path: str, plan: dict, timeout: float = 3600) -> None:
  """Processes other than 0 wait until process 0 has cleared stale shards and written
  the plan, so none writes a shard that is then deleted."""
  deadline = time.time() + timeout
  while True:
    try:
      if io.read_json(plan_path) == json.loads(json.dumps(plan)):
        return
    except json.JSONDecodeError:
      pass
    if time.time() > deadline:
      raise TimeoutError(f'{plan_path}: process 0 has not written the current plan')
    time.sleep(1.0)


def run(config, factory, workdir: str, plan: dict, num_samples: int) -> None:
  """The whole stage for this process (see the module docstring).

  factory: `layout.output_shape`, `latent_size`, `extra_features` (name -> numpy dtype of
  per-sample scalars), `num_devices` and `__call__(indices) -> dict` (image, label,
  uncertainty, z, and the extra features).
  plan: what sample i depends on besides its index (seed, sampling, labeler weights):
  when it differs from the plan of the shards on disk, they are deleted first; a finished
  dataset of num_samples samples under the same plan is kept as it is.
  """
  gen = config.generate
  out_dir = os.path.join(workdir, io.DATASET)
  stage_dir = os.path.join(workdir, io.GENERATE)
  raw_dir = os.path.join(stage_dir, 'raw')
  plan_path = os.path.join(stage_dir, 'plan.json')
  record = io.read_json(os.path.join(out_dir, 'generation.json'))
  plan = json.loads(json.dumps(plan))
  same_plan = io.read_json(plan_path) == plan
  if same_plan and record is not None and record['num_samples'] == num_samples:
    logging.info('generate: %s is complete, skipping', out_dir)
    return
  process_index, process_count = parallel.initialize(config.distributed)
  if process_index == 0:
    io.start_over_if_changed(plan_path, plan, [raw_dir], 'generate')
  else:
    _wait_for_plan(plan_path, plan)
  height, width = factory.layout.output_shape
  features = tfds_writer.segmentation_features(height, width, config.data.num_classes,
                                               factory.latent_size, factory.extra_features)
  timing = generate_shards(factory, features, raw_dir, num_samples, gen.samples_per_shard,
                           gen.batch_size, process_index, process_count)
  timing.update(num_devices=factory.num_devices, process_index=process_index,
                process_count=process_count)
  io.write_json(os.path.join(raw_dir, f'process-{process_index}-of-{process_count}.done'),
                timing)
  if process_index != 0:
    return
  wait_for_processes(raw_dir, process_count)
  all_timing = [io.read_json(p) for p in sorted(glob.glob(
      os.path.join(raw_dir, f'process-*-of-{process_count}.done')))]
  record = finalize(config, features, raw_dir, out_dir, {'processes': all_timing},
                    num_samples, classes=factory.sampling.class_names())
  io.write_json(os.path.join(stage_dir, 'summary.json'),
                {'num_samples': record['num_samples'], 'num_kept': record['num_kept'],
                 'threshold': record['threshold'], 'processes': all_timing})
  for marker in glob.glob(os.path.join(raw_dir, 'process-*.done')):
    os.remove(marker)
  if not gen.keep_raw:
    shutil.rmtree(raw_dir)
  logging.info('generate: kept %d of %d samples (uncertainty <= %.4g) in %s',
               record['num_kept'], record['num_samples'], record['threshold'], out_dir)
