"""Domains: where a run's annotations, test images and extra baselines come from. The
stages call these hooks and never ask which domain runs.

  'default'  a person annotates the sample stage's images; real test images come from
             config.evaluate.test_dir (or stand-ins, config.evaluate.synthetic_test_images)
  'toy'      dgan_jax/toy/stages.py (config.toy.enabled): rendered cars with exact masks,
             an annotator model, a rendered test set, the fully supervised ceiling run and
             a per-pixel colour classifier (a baseline record for the report)

A new domain subclasses `Domain` in its own module and adds its name here. A domain
keeps its data in workdir/<its name>/; a `<name>_baseline.json` record there ({'miou',
'class_iou', 'description', optional 'label', 'trained_on', 'num_train_images'}) is a
row of the report's tables.
"""

import importlib
import os
from typing import Callable

from absl import logging

from dgan_jax import io

REGISTRY = {'default': 'dgan_jax.domains', 'toy': 'dgan_jax.toy.stages'}


class Domain:
  """The hooks, with what a real domain does: nothing beyond the config."""

  def annotate(self, config, workdir: str) -> None:
    """The annotate stage: labels the sample stage's images, where a person would."""
    logging.info('annotate: masks are read from %s',
                 config.data.annotation_dir or os.path.join(workdir, io.ANNOTATE))

  def test_dir(self, config, workdir: str) -> str | None:
    """A test folder the domain provides (None: config.evaluate.test_dir, or stand-ins)."""
    del config, workdir
    return None

  def finetune_dir(self, config, workdir: str) -> str | None:
    """A labelled folder (the test folder's formats) the fine-tuning runs train on when
    config.downstream.finetune_dir is empty; None: the field is required."""
    del config, workdir
    return None

  def extra_runs(self) -> dict[str, Callable]:
    """Downstream runs of the domain's own: name -> source(config, workdir) returning
    (examples source, steps per epoch or 0, description)."""
    return {}

  def report_notes(self, config) -> list[str]:
    """Sentences the report adds after its summary."""
    del config
    return []


def domain_name(config) -> str:
  return 'toy' if config.toy.enabled else 'default'


def from_config(config) -> Domain:
  module = importlib.import_module(REGISTRY[domain_name(config)])
  return module.Domain()
