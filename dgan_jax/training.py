"""The training loop the labelers share (the MLP ensemble, BigDatasetGAN's head), and its
pieces: the orbax checkpoint manager, quiet logging."""

import contextlib
import os
import time
from typing import Callable

import jax
import numpy as np
from absl import logging as absl_logging
from tqdm import tqdm

from dgan_jax import io
from dgan_jax.errors import InputError


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
  state resumed from its latest step or `state`, either placed with `shardings` (so that a
  fresh and a resumed run hand the step identically placed arrays: one compilation)."""
  state = jax.device_put(state, shardings)
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


HISTORY_FILE = 'history.json'   # beside the orbax steps: the logged metrics so far


def resumed_history(history_path: str | None, step: int, metric_names) -> dict:
  """The logged history up to `step` (the checkpoint a run resumes from), so that a
  resumed run's history covers all of its steps; empty for a fresh run."""
  history = {'step': [], 'seconds': [], **{name: [] for name in metric_names}}
  try:
    previous = io.read_json(history_path) if history_path and step > 0 else None
  except InputError:
    previous = None   # a damaged history: keep what this run logs
  if isinstance(previous, dict) and set(previous) == set(history):
    keep = [i for i, s in enumerate(previous['step']) if s <= step]
    history = {k: [v[i] for i in keep] for k, v in previous.items()}
  return history


def run(state, checkpoint_dir: str | None, checkpoint_every: int, shardings,
        total_steps: int, step_fn: Callable, *, desc: str, rate_name: str, log_every: int,
        metric_names: tuple[str, ...], postfix: Callable[[dict], dict], progress: bool = True,
        keep_going: Callable[[], bool] = lambda: True,
        steps_per_call: int = 1) -> tuple[dict, float]:
  """The training loop both labelers share: resume, step, checkpoint, log, finish.

  state: the initial training state (with an int 'step'), placed with `shardings`; it is
  replaced by the newest orbax checkpoint in checkpoint_dir when there is one.
  step_fn(state, step, limit) -> (state, metrics, items, steps): `steps` training steps
  from `step` in one call, 1 <= steps <= limit; limit is at most steps_per_call and ends
  calls on logged and checkpointed steps. metrics (of the call's last step) stay on the
  device except on logged steps (every log_every-th, the last, and the one after which
  keep_going() turns false); items count toward the rate.
  Returns (state on the host with 'history': per logged step its number, the training
  seconds so far and each of metric_names, across resumes (kept in checkpoint_dir's
  history.json); items per second over the steps after the first (compiling) one).
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  with quiet_orbax_logging():
    manager, state = open_checkpoints(checkpoint_dir, checkpoint_every, state, shardings,
                                      desc)
    step = int(state['step'])
    history_path = os.path.join(checkpoint_dir, HISTORY_FILE) if checkpoint_dir else None
    history = resumed_history(history_path, step, metric_names)
    seconds_before = history['seconds'][-1] if history['seconds'] else 0.0
    loop_start = time.perf_counter()
    bar = tqdm(total=total_steps, initial=step, desc=desc, unit='step', disable=not progress,
               dynamic_ncols=True)
    window_start, window_items = time.perf_counter(), 0
    run_start, run_items = None, 0
    while step < total_steps and keep_going():
      limit = min(steps_per_call, total_steps - step, log_every - step % log_every)
      if manager is not None and checkpoint_every > 0:
        limit = min(limit, checkpoint_every - step % checkpoint_every)
      state, metrics, items, steps = step_fn(state, step, limit)
      step += steps
      window_items += items
      if run_start is None:   # the first call, which compiled
        jax.block_until_ready(metrics)
        run_start = time.perf_counter()
      else:
        run_items += items
      if manager is not None:
        manager.save(step, args=ocp.args.StandardSave(state))
      if step % log_every == 0 or step == total_steps or not keep_going():
        metrics = jax.device_get(metrics)
        now = time.perf_counter()
        history['step'].append(step)
        history['seconds'].append(seconds_before + now - loop_start)
        for name in metric_names:
          history[name].append(np.asarray(metrics[name]).tolist())
        if history_path:
          io.write_json(history_path, history)
        bar.set_postfix(**postfix(metrics),
                        **{rate_name: f'{window_items / (now - window_start):,.2f}'})
        bar.update(step - bar.n)
        window_start, window_items = now, 0
    return finish_run(state, step, bar, manager, history, run_start, run_items)


def finish_run(state, step: int, bar, manager, history: dict, run_start: float | None,
            run_count: int) -> tuple[dict, float]:
  """Waits for the device, closes the progress bar, saves the final step if the manager
  has not, closes the manager; -> (state on the host with `history` as arrays, items per
  second since the first step's result)."""
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
