"""Pieces shared by the training loops (interpreter ensemble, BigDatasetGAN head)."""

import time

import jax
import numpy as np


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
