"""Scoring trained DeepLab runs on a real test set with the cross-validation protocol.

Every epoch checkpoint of a run predicts every test image once (evaluation mode, the
image resized to the training resolution, argmax of the logits there); the per-image,
per-class intersection and union counts of all epochs form a table [E, N, C] from which
`metrics.cross_validate` picks one epoch per fold and scores it. Grids of colored
predictions show each fold's chosen model on the images it was scored on.

`make_predictor` is the one compiled prediction of a trained network: evaluation and
`python -m dgan_jax.segment` both call it, so a folder segmented with a run's epoch gets
the labels evaluation scored for the same images (same batch size). `best_epoch` is the
one epoch of a run that segment and export use.
"""


import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from dgan_jax import parallel
from dgan_jax.data import images as image_utils
from dgan_jax.downstream import deeplab
from dgan_jax.downstream import metrics
from dgan_jax.downstream import train as train_lib


def make_predictor(model: deeplab.DeepLabV3):
  """-> jitted fn(variables, images uint8 [B, R, R, 3], labels uint8 [B, R, R]) ->
  (prediction int32 [B, R, R], intersection [B, C], union [B, C], confidence float32
  [B]: each image's mean over pixels of the largest softmax probability); B a multiple
  of the mesh size, the batch sharded over it."""
  def predict(variables, images, labels):
    logits = model.apply(variables, deeplab.normalize(images), train=False)
    prediction = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    intersection, union = metrics.iou_counts(prediction, labels, model.arch.num_classes)
    confidence = jnp.mean(jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1), axis=(1, 2))
    return prediction, intersection, union, confidence

  # Shardings come from the arguments (see train.make_train_step): variables
  # replicated, batches placed by predict_all.
  return jax.jit(predict, compiler_options=parallel.compiler_options())


def make_predict(model: deeplab.DeepLabV3):
  """`make_predictor`'s compiled function without the confidence -> (prediction,
  intersection, union)."""
  predictor = make_predictor(model)
  return lambda variables, images, labels: predictor(variables, images, labels)[:3]


def predict_all(predict, variables, images: np.ndarray, labels: np.ndarray, batch_size: int,
                mesh: Mesh):
  """Runs `predict` over [N, ...] arrays in batches (the last one padded) ->
  (prediction [N, R, R], intersection [N, C], union [N, C]) as numpy."""
  batch_size = -(-batch_size // mesh.size) * mesh.size
  by_batch = NamedSharding(mesh, P('data'))
  outputs = []
  for start in range(0, len(images), batch_size):
    chunk_images, chunk_labels = images[start:start + batch_size], labels[start:start + batch_size]
    count = len(chunk_images)
    if count < batch_size:
      pad = ((0, batch_size - count),)
      chunk_images = np.pad(chunk_images, pad + ((0, 0),) * 3)
      chunk_labels = np.pad(chunk_labels, pad + ((0, 0),) * 2,
                            constant_values=metrics.IGNORE_LABEL)
    chunk_images, chunk_labels = jax.device_put((chunk_images, chunk_labels), by_batch)
    out = jax.device_get(predict(variables, chunk_images, chunk_labels))
    outputs.append([o[:count] for o in out])
  return tuple(np.concatenate(parts) for parts in zip(*outputs))


def score_epochs(arch: deeplab.DeepLabArch, run_dir: str, test, batch_size: int,
                 mesh: Mesh | None = None, dtype: str = 'float32', progress: bool = True,
                 description: str = ''):
  """-> (epochs [E], intersections [E, N, C], unions [E, N, C]) of every epoch checkpoint
  in run_dir on the test images."""
  mesh = mesh or parallel.make_mesh()
  epochs = train_lib.epoch_checkpoints(run_dir)
  if not epochs:
    raise FileNotFoundError(f'{run_dir}/epochs: no checkpoints')
  predict = make_predict(deeplab.DeepLabV3(arch, train_lib.DTYPES[dtype]))
  replicated = NamedSharding(mesh, P())
  intersections, unions = [], []
  for epoch in tqdm(epochs, desc=f'evaluate {description}'.strip(), unit='epoch',
                    disable=not progress):
    variables = jax.device_put(train_lib.restore_epoch(run_dir, epoch, arch), replicated)
    _, intersection, union = predict_all(predict, variables, test.images, test.labels,
                                         batch_size, mesh)
    intersections.append(intersection)
    unions.append(union)
  return epochs, np.stack(intersections), np.stack(unions)


def fold_previews(arch: deeplab.DeepLabArch, run_dir: str, test, folds: list[dict],
                  epochs: list[int], palette: np.ndarray, count: int, batch_size: int,
                  mesh: Mesh | None = None, dtype: str = 'float32') -> list[np.ndarray]:
  """Per fold, a grid of (image | ground truth | prediction) for up to `count` of the
  images the fold's chosen checkpoint is scored on. Ignored pixels are black."""
  mesh = mesh or parallel.make_mesh()
  predict = make_predict(deeplab.DeepLabV3(arch, train_lib.DTYPES[dtype]))
  replicated = NamedSharding(mesh, P())
  grids = []
  for fold in folds:
    shown = np.asarray(fold['test'][:count])
    variables = jax.device_put(
        train_lib.restore_epoch(run_dir, epochs[fold['selected_epoch']], arch), replicated)
    prediction, _, _ = predict_all(predict, variables, test.images[shown],
                                   test.labels[shown], batch_size, mesh)
    grids.append(prediction_grid(test.images[shown], test.labels[shown], prediction, palette))
  return grids


def prediction_grid(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
                    palette: np.ndarray) -> np.ndarray:
  """images [N, R, R, 3], labels and predictions [N, R, R] -> a grid of (image | ground
  truth | prediction). Ignored pixels are black."""
  colors = np.concatenate([palette, np.zeros((256 - len(palette), 3), np.uint8)])
  tiles = np.concatenate([images, colors[labels], colors[predictions]], axis=2)
  return image_utils.grid(np.stack([image_utils.enlarge(t) for t in tiles]), columns=2)


def best_epoch(run_record: dict) -> int:
  """The one epoch of an evaluated run (an eval.json 'runs' entry) that segment and
  export use: the epoch the most folds selected; ties go to the larger mean over folds of
  the validation mIoU, then to the earlier epoch. Only validation scores decide, as for
  each fold's choice."""
  epochs = [int(e) for e in run_record['all_images_miou_per_epoch']]
  votes = {}
  for fold in run_record['folds']:
    votes[fold['selected_epoch']] = votes.get(fold['selected_epoch'], 0) + 1

  def validation_mean(epoch):
    scores = [fold['validation_miou_per_epoch'][epochs.index(epoch)]
              for fold in run_record['folds']]
    scores = [v for v in scores if v is not None]
    return float(np.mean(scores)) if scores else -np.inf

  return min(votes, key=lambda e: (-votes[e], -validation_mean(e), e))


def summarize(cross: dict, epochs: list[int], intersections: np.ndarray, unions: np.ndarray,
              class_names, image_names) -> dict:
  """The JSON record of one run: cross-validation with epochs and class names, a
  per-class table (mean and std over folds), and each epoch's mIoU on all test images."""
  folds = []
  for fold in cross['folds']:
    folds.append({
        'fold': fold['fold'],
        'validation_images': [image_names[i] for i in fold['validation']],
        'selected_epoch': epochs[fold['selected_epoch']],
        'validation_miou_per_epoch': _nan_to_none(fold['validation_miou']),
        'test_miou': _nan_to_none(fold['test_miou']),
        'test_miou_absent_as_zero': fold['test_miou_absent_as_zero'],
        'class_iou': dict(zip(class_names, _nan_to_none(fold['test_class_iou'])))})
  table = np.asarray([f['test_class_iou'] for f in cross['folds']], np.float64)  # [K, C]
  per_class = {}
  for c, name in enumerate(class_names):
    column = table[:, c][~np.isnan(table[:, c])]
    per_class[name] = ({'mean': float(column.mean()), 'std': float(column.std()),
                        'folds': int(column.size)} if column.size else None)
  whole = [metrics.mean_iou(intersections[e].sum(0), unions[e].sum(0))
           for e in range(len(epochs))]
  return {'miou_mean': _nan_to_none(cross['mean']), 'miou_std': _nan_to_none(cross['std']),
          'miou_absent_as_zero_mean': float(np.mean(
              [f['test_miou_absent_as_zero'] for f in cross['folds']])),
          'folds': folds, 'class_iou': per_class,
          'all_images_miou_per_epoch': dict(zip((str(e) for e in epochs), _nan_to_none(whole)))}


def _nan_to_none(value):
  if isinstance(value, (list, tuple)):
    return [_nan_to_none(v) for v in value]
  return None if value is None or np.isnan(value) else float(value)


def format_table(class_names, runs: dict[str, dict]) -> str:
  """A plain-text per-class IoU table (mean over folds, %), one column per run."""
  names = list(runs)
  width = max(len(n) for n in class_names) + 2
  lines = [''.ljust(width) + ''.join(n[:16].rjust(18) for n in names)]
  for name in class_names:
    cells = []
    for run in names:
      entry = runs[run]['class_iou'][name]
      cells.append(('-' if entry is None else
                    f'{100 * entry["mean"]:.1f} ± {100 * entry["std"]:.1f}').rjust(18))
    lines.append(name.ljust(width) + ''.join(cells))
  lines.append('mIoU'.ljust(width) + ''.join(
      f'{100 * runs[r]["miou_mean"]:.1f} ± {100 * runs[r]["miou_std"]:.1f}'.rjust(18)
      if runs[r]['miou_mean'] is not None else '-'.rjust(18) for r in names))
  return '\n'.join(lines)
