"""Pieces shared by the training loops (interpreter ensemble, BigDatasetGAN head)."""

import contextlib
import os
import time

import jax
import numpy as np
from absl import logging as absl_logging
from tqdm import tqdm


@contextlib.contextmanager
def quiet_orbax_logging():
  """Orbax logs every save at INFO; keep absl at WARNING or above while training."""
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(min(verbosity, absl_logging.WARNING))
  try:
    yield
  finally:
    absl_logging.set_verbosity(verbosity)


def open_checkpoints(checkpoint_dir: str, save_every: int, state, shardings, name: str):
  """An orbax CheckpointManager over checkpoint_dir (None when it is empty), and the
  state resumed from its latest step (placed with `shardings`) or `state` unchanged."""
  if not checkpoint_dir:
    return None, state
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  manager = ocp.CheckpointManager(
      os.path.abspath(checkpoint_dir),
      options=ocp.CheckpointManagerOptions(save_interval_steps=save_every, max_to_keep=2))
  if manager.latest_step() is not None:
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
    state = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(abstract))
    tqdm.write(f'{name}: resumed at step {int(state["step"])} from {checkpoint_dir}')
  return manager, state


def finish_run(state, step: int, bar, manager, history: dict, run_start: float | None,
               run_count: int) -> tuple[dict, float]:
  """Ends a training run: waits for the device, closes the progress bar, saves the final
  step if the manager has not, closes the manager.

  Returns (state on the host with `history` as arrays, items per second since the first
  step's result).
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  jax.block_until_ready(state)
  run_seconds = time.perf_counter() - run_start if run_start is not None else 0.0
  bar.update(step - bar.n)
  bar.close()
  if manager is not None:
    if manager.latest_step() != step:
      manager.save(step, args=ocp.args.StandardSave(state), force=True)
    manager.wait_until_finished()
    manager.close()
  state = jax.device_get(state)
  state['history'] = {k: np.asarray(v) for k, v in history.items()}
  return state, run_count / run_seconds if run_seconds > 0 else 0.0
