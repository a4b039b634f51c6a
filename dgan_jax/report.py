"""The `report` stage: a finished workdir -> report.md and report.html (the same content).

  workdir/report.md, report.html  summary, mIoU and per-class IoU tables, images, protocol
  workdir/report/                 the PNGs both files show (relative paths)

Inputs: eval.json and eval/ (evaluate), the annotated samples and masks, the labeler's
folder (its check.png and preview.png), dataset/ (generate), and baseline records a
domain left in its folder (`<domain name>/<name>_baseline.json`, e.g. the toy domain's
per-pixel colour classifier); sections whose inputs are missing are left out, except
eval.json, which is required.
"""

import glob
import html
import os
import shutil
import typing

import numpy as np
from absl import logging

from dgan_jax import domains
from dgan_jax import io
from dgan_jax import labelers
from dgan_jax import parallel
from dgan_jax.data import annotated
from dgan_jax.data import images as image_utils
from dgan_jax.downstream import data as data_lib
from dgan_jax.downstream import train as train_lib
from dgan_jax.errors import InputError

RUN_LABELS = {'labeler': 'labeler (no DeepLab)',
              'few_shot': 'few-shot', 'synthetic': 'synthetic (filtered)',
              'synthetic_unfiltered': 'synthetic (unfiltered)',
              'supervised': 'fully supervised',
              'finetune_few_shot': 'pretrained, fine-tuned on the annotated images',
              'finetune': 'pretrained, fine-tuned on the labelled real images',
              'real': 'from scratch on the labelled real images'}
# Fine-tuning runs -> the from-scratch run on the same images (the transfer comparison).
TRANSFER_PAIRS = {'finetune_few_shot': 'few_shot', 'finetune': 'real'}
BASELINE_LABELS = {'colour': 'per-pixel colour classifier'}
EXAMPLE_COUNT = 16
_CSS = ('body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}'
        'table{border-collapse:collapse;margin:1em 0}'
        'th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}'
        'img{image-rendering:pixelated;max-width:100%}figure{margin:1em 0}'
        'figcaption{font-style:italic}')


class Figure(typing.NamedTuple):
  """A PNG under workdir/report/ (path relative to the workdir) shown as a block or a cell."""
  path: str
  caption: str = ''


def report(config, workdir: str) -> None:
  """Writes workdir/report.md, report.html and report/ (skipped when report.md is newer
  than eval.json)."""
  eval_path = os.path.join(workdir, io.EVAL_JSON)
  if not os.path.isfile(eval_path):
    raise InputError(f'{eval_path}: missing (run the evaluate stage first)')
  out_md = os.path.join(workdir, f'{io.REPORT}.md')
  evaluation = io.read_json(eval_path)
  compared = _compared_runs(config, evaluation)
  inputs = [eval_path] + [os.path.join(w, io.EVAL_JSON) for w in compared_workdirs(config)]
  if os.path.exists(out_md) and os.path.getmtime(out_md) > max(map(os.path.getmtime, inputs)):
    logging.info('report: %s is newer than %s, skipping', out_md, ', '.join(inputs))
    return
  process_index, _ = parallel.initialize(config.distributed)
  if process_index != 0:
    return
  generation = io.read_json(os.path.join(workdir, io.DATASET, 'generation.json'))
  baselines = _baselines(workdir)
  protocol = evaluation['protocol']
  with io.atomic_dir(os.path.join(workdir, io.REPORT)) as tmp:
    blocks = _text_blocks(config, evaluation, generation, baselines, compared)
    blocks += _image_blocks(config, workdir, tmp, evaluation, generation)
    blocks += [('h2', 'Protocol'), ('p', protocol['description'].rstrip('.') + '.'),
               ('p', 'mIoU: ' + protocol['miou'].rstrip('.') + '.')]
  title = blocks[0][1]
  io.write_text(os.path.join(workdir, f'{io.REPORT}.html'), _to_html(title, blocks))
  io.write_text(out_md, _to_markdown(blocks))  # last: its presence marks a finished report
  logging.info('report: wrote %s and report.html', out_md)


def compared_workdirs(config) -> list[str]:
  return [w.strip() for w in config.report.compare_with.split(',') if w.strip()]


def _compared_runs(config, evaluation: dict) -> dict[str, dict]:
  """config.report.compare_with's runs: '<workdir name>: <run label>' -> its eval.json run
  record. InputError naming the file when a workdir is unevaluated or was scored on other
  test images (names, in order), classes, folds or resolution than this run."""
  out = {}
  for other in compared_workdirs(config):
    path = os.path.join(other, io.EVAL_JSON)
    record = io.read_json(path)
    if record is None:
      raise InputError(f'config.report.compare_with: {path} is missing (evaluate {other} '
                       'first)')
    mine, theirs = evaluation['protocol'], record['protocol']
    for what, a, b in (('test images', evaluation['test_images'], record['test_images']),
                       ('classes', evaluation['classes'], record['classes']),
                       ('folds', mine['num_folds'], theirs['num_folds']),
                       ('resolution', mine['resolution'], theirs['resolution'])):
      if a != b:
        raise InputError(f'config.report.compare_with: {path} was scored with other {what} '
                         'than this run; only runs on the same test set compare')
    name = os.path.basename(os.path.normpath(other))
    out.update({f'{name}: {_label(run)}': record['runs'][run]
                for run in _ordered_runs(record['runs'])})
  return out


def _baselines(workdir: str) -> list[tuple[str, dict]]:
  """(label, record) of every baseline record a domain left in its folder of the workdir
  (workdir/<domain name>/<name>_baseline.json)."""
  out = []
  paths = [p for name in domains.REGISTRY for p in sorted(
      glob.glob(os.path.join(glob.escape(workdir), name, '*_baseline.json')))]
  for path in paths:
    name = os.path.basename(path)[:-len('_baseline.json')]
    record = io.read_json(path)
    out.append((record.get('label') or BASELINE_LABELS.get(name, name), record))
  return out


def _ordered_runs(runs: dict) -> list[str]:
  """Run names in RUN_LABELS order, then any others in their given order."""
  return [r for r in RUN_LABELS if r in runs] + [r for r in runs if r not in RUN_LABELS]


def _label(run: str) -> str:
  return RUN_LABELS.get(run, run)


def _percent(value) -> str:
  return '-' if value is None else f'{100 * value:.1f}'


def _text_blocks(config, evaluation: dict, generation: dict | None,
                 baselines: list[tuple[str, dict]], compared: dict[str, dict]) -> list:
  """Title, summary, the mIoU and per-class IoU tables (this run's rows, then the compared
  workdirs', then the baselines)."""
  runs = evaluation['runs']
  names = _ordered_runs(runs)
  protocol = evaluation['protocol']
  summary = f'The interpreter was trained on {config.data.num_annotated} annotated images.'
  if generation is not None:
    summary += (f' {generation["num_samples"]} synthetic samples were generated; the '
                f'uncertainty filter kept {generation["num_kept"]} and dropped '
                f'{generation["num_samples"] - generation["num_kept"]}.')
  stand_in = ('stand-in synthetic test images' if protocol.get('stand_in_test_images')
              else 'test images')
  summary += f' The segmenters are scored on {protocol["num_test_images"]} {stand_in}.'
  few, synthetic = (runs.get(r, {}).get('miou_mean') for r in ('few_shot', 'synthetic'))
  if few is not None and synthetic is not None:
    summary += (f' A segmenter trained on the synthetic dataset reaches {_percent(synthetic)}% '
                f'mIoU against {_percent(few)}% for one trained on the annotated images '
                f'alone ({100 * (synthetic - few):+.1f} points).')
  labeler = runs.get('labeler', {}).get('miou_mean')
  if labeler is not None:
    summary += (f' The labeler itself, run on each test image\'s features, reaches '
                f'{_percent(labeler)}% mIoU')
    summary += (f' ({100 * (labeler - synthetic):+.1f} points against the synthetic '
                'dataset\'s segmenter).' if synthetic is not None else '.')
  supervised = runs.get('supervised', {}).get('miou_mean')
  if supervised is not None:
    summary += (f' Fully supervised training on {runs["supervised"]["num_train_images"]} '
                f'image-mask pairs reaches {_percent(supervised)}%.')
  summary += _transfer_summary(runs)
  blocks = [('h1', f'DatasetGAN report: {config.data.name or "unnamed dataset"}'),
            ('p', summary)]
  blocks += [('p', note) for note in domains.from_config(config).report_notes(config)]

  labelled = [(_label(run), runs[run]) for run in names] + list(compared.items())
  rows = []
  for label, r in labelled:
    miou = ('-' if r['miou_mean'] is None else
            f'{_percent(r["miou_mean"])} ± {_percent(r["miou_std"])}')
    rows.append([label, r['trained_on'], str(r['num_train_images']), miou,
                 _percent(r['miou_absent_as_zero_mean'])])
  for label, baseline in baselines:
    rows.append([label, baseline.get('trained_on', '-'),
                 str(baseline.get('num_train_images', '-')), _percent(baseline['miou']), '-'])
  blocks += [('h2', 'Mean IoU'),
             ('p', f'Mean ± std over {protocol["num_folds"]} folds, in %.'),
             ('table', ['run', 'trained on', 'images', 'mIoU (%)',
                        'mIoU, absent as zero (%)'], rows)]
  blocks += [('p', baseline['description']) for _, baseline in baselines
             if 'description' in baseline]

  columns = [(label, r['class_iou']) for label, r in labelled]
  columns += [(label, baseline.get('class_iou', {})) for label, baseline in baselines]
  rows = []
  for name in evaluation['classes']:
    cells = [name]
    for _, table in columns:
      value = table.get(name)
      cells.append(_percent(value['mean'] if isinstance(value, dict) else value))
    rows.append(cells)
  blocks += [('h2', 'Per-class IoU'),
             ('p', "Mean over folds, in %; '-': the class is in neither the predictions nor "
                   'the ground truth of any fold.'),
             ('table', ['class'] + [label for label, _ in columns], rows)]
  return blocks


def _transfer_summary(runs: dict) -> str:
  """Sentences comparing each fine-tuned run with the from-scratch run on its images."""
  text = ''
  for tuned, scratch in TRANSFER_PAIRS.items():
    a, b = (runs.get(r, {}).get('miou_mean') for r in (tuned, scratch))
    if a is None or b is None:
      continue
    source = runs[tuned].get('initialised_from', {}).get('run_dir', 'another run')
    text += (f' Initialised from {os.path.basename(source)} and fine-tuned on '
             f'{runs[tuned]["num_train_images"]} images, the segmenter reaches {_percent(a)}% '
             f'against {_percent(b)}% from scratch on the same images '
             f'({100 * (a - b):+.1f} points; fold std {_percent(runs[tuned]["miou_std"])} and '
             f'{_percent(runs[scratch]["miou_std"])}).')
  return text


def _image_blocks(config, workdir: str, out_dir: str, evaluation: dict,
                  generation: dict | None) -> list:
  """Writes the report's PNGs into out_dir; -> the blocks showing them."""
  palette = image_utils.palette_array(config.data.num_classes, config.data.palette)
  blocks = [('h2', 'Images')]

  def save(name: str, image: np.ndarray, caption: str) -> None:
    image_utils.save_png(os.path.join(out_dir, name), image)
    blocks.append(('image', Figure(f'report/{name}', caption)))

  def copy(source: str, name: str, caption: str) -> None:
    if os.path.isfile(source):
      shutil.copyfile(source, os.path.join(out_dir, name))
      blocks.append(('image', Figure(f'report/{name}', caption)))

  annotated = _annotated(config, workdir)
  if annotated is not None:
    save('annotated.png', train_lib.preview_batch(*annotated, palette),
         f'The {len(annotated[0])} annotated images and their masks (image | mask).')
  labeler_dir = labelers.workdir_folder(config, workdir)
  copy(os.path.join(labeler_dir, 'check.png'), 'interpreter_check.png',
       'Labeler input check: annotated image | regenerated from its latent | mask.')
  copy(os.path.join(labeler_dir, 'preview.png'), 'interpreter_preview.png',
       'The labeler on its annotated images: image | mask | prediction | members\' '
       'disagreement (white: most).')
  dataset_dir = os.path.join(workdir, io.DATASET)
  if generation is not None:
    if generation['num_kept']:
      kept = data_lib.SyntheticSource(dataset_dir, None, split='train')
      pairs = kept.get(range(min(EXAMPLE_COUNT, len(kept))))
      save('synthetic_kept.png', _pairs_grid(pairs, palette),
           f'Synthetic examples kept by the filter, the first {len(pairs)} by sample index '
           f'(image | label); kept: uncertainty <= {generation["threshold"]:.4g}.')
    # The dropped split holds the dropped samples in generation.json's order (by index).
    dropped = [s for s in generation['samples'] if not s['kept']]
    worst = sorted(range(len(dropped)),
                   key=lambda p: -dropped[p]['uncertainty'])[:EXAMPLE_COUNT]
    if worst:
      pairs = data_lib.SyntheticSource(dataset_dir, None, split='dropped').get(worst)
      scores = ', '.join(f'{dropped[p]["uncertainty"]:.4g} (sample {dropped[p]["index"]})'
                         for p in worst)
      save('synthetic_dropped.png', _pairs_grid(pairs, palette),
           f'Filtered out: the {len(worst)} most uncertain samples (image | label), in '
           f'reading order; uncertainty (sample index): {scores}.')
  eval_dir = os.path.join(workdir, io.EVAL)
  copy(os.path.join(eval_dir, 'test_set.png'), 'test_set.png',
       'Test images and their ground truth (image | mask).')
  for run in _ordered_runs(evaluation['runs']):
    copy(os.path.join(eval_dir, f'{run}_fold0.png'), f'{run}_fold0.png',
         f'{_label(run)}, fold 0: image | ground truth | prediction on test images '
         'outside the fold (ignored pixels black).')

  rows = []
  for c, name in enumerate(config.data.class_names):
    swatch = f'legend_{c}.png'
    image_utils.save_png(os.path.join(out_dir, swatch),
                         np.broadcast_to(palette[c], (16, 16, 3)))
    rows.append([str(c), name, Figure(f'report/{swatch}'),
                 '#' + ''.join(f'{v:02x}' for v in palette[c])])
  blocks += [('h3', 'Class colours'), ('table', ['id', 'class', 'colour', 'RGB'], rows)]
  if list(evaluation['classes']) != list(config.data.class_names):
    blocks.append(('p', 'Test predictions use the evaluation classes ('
                        + ', '.join(evaluation['classes']) + ') with a generated palette.'))
  return blocks


def _annotated(config, workdir: str) -> tuple[np.ndarray, np.ndarray] | None:
  """-> (images [N, H, W, 3], masks [N, H, W] at the image size) of up to EXAMPLE_COUNT
  annotated images the labeler read (those of the first one's size), or None when there
  are none."""
  folder = annotated.used_folder(config, workdir)
  if not os.path.isdir(folder):
    return None
  try:
    images, masks, _ = annotated.read_pairs(folder, config.data.num_annotated,
                                            config.data.num_classes,
                                            config.data.min_segment_pixels,
                                            limit=EXAMPLE_COUNT)
  except InputError as e:
    logging.warning('report: no annotated images shown (%s)', e)
    return None
  same = [i for i, image in enumerate(images) if image.shape == images[0].shape]
  return (np.stack([images[i] for i in same]),
          np.stack([masks[i] for i in same]).astype(np.uint8))


def _pairs_grid(pairs: list, palette: np.ndarray) -> np.ndarray:
  return train_lib.preview_batch(np.stack([p[0] for p in pairs]),
                                 np.stack([p[1] for p in pairs]), palette)


def _md_cell(cell) -> str:
  if isinstance(cell, Figure):
    return f'![{cell.caption}]({cell.path})'
  return str(cell).replace('|', '\\|').replace('\n', ' ')


def _to_markdown(blocks: list) -> str:
  lines = []
  for kind, *content in blocks:
    if kind in ('h1', 'h2', 'h3'):
      lines += ['#' * int(kind[1]) + ' ' + content[0], '']
    elif kind == 'p':
      lines += [content[0], '']
    elif kind == 'table':
      header, rows = content
      lines.append('| ' + ' | '.join(_md_cell(c) for c in header) + ' |')
      lines.append('|' + '---|' * len(header))
      lines += ['| ' + ' | '.join(_md_cell(c) for c in row) + ' |' for row in rows]
      lines.append('')
    else:
      image = content[0]
      lines += [f'![{os.path.basename(image.path)}]({image.path})', '', f'*{image.caption}*', '']
  return '\n'.join(lines)


def _html_cell(cell) -> str:
  if isinstance(cell, Figure):
    return f'<img src="{html.escape(cell.path)}" alt="{html.escape(cell.caption)}">'
  return html.escape(str(cell))


def _to_html(title: str, blocks: list) -> str:
  parts = ['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
           f'<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>']
  for kind, *content in blocks:
    if kind in ('h1', 'h2', 'h3'):
      parts.append(f'<{kind}>{html.escape(content[0])}</{kind}>')
    elif kind == 'p':
      parts.append(f'<p>{html.escape(content[0])}</p>')
    elif kind == 'table':
      header, rows = content
      parts.append('<table><tr>' + ''.join(f'<th>{_html_cell(c)}</th>' for c in header)
                   + '</tr>')
      parts += ['<tr>' + ''.join(f'<td>{_html_cell(c)}</td>' for c in row) + '</tr>'
                for row in rows]
      parts.append('</table>')
    else:
      image = content[0]
      parts.append(f'<figure>{_html_cell(image)}<figcaption>{html.escape(image.caption)}'
                   '</figcaption></figure>')
  parts.append('</body></html>')
  return '\n'.join(parts) + '\n'
