"""Processes and devices: joining a multi-process run, and the one device mesh."""

from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

DATA_AXIS = 'data'


def initialize(distributed_config) -> tuple[int, int]:
  """Joins a multi-process run when the config asks; -> (process_index, process_count).
  Stages call it in turn: the first call joins, later ones only report."""
  if jax.distributed.is_initialized():
    pass
  elif distributed_config.num_processes > 1:
    jax.distributed.initialize(coordinator_address=distributed_config.coordinator_address,
                               num_processes=distributed_config.num_processes,
                               process_id=distributed_config.process_id)
  elif distributed_config.auto:
    jax.distributed.initialize()
  return jax.process_index(), jax.process_count()


def make_mesh(devices: Sequence[jax.Device] | None = None, scope: str = 'local') -> Mesh:
  """A 1-D mesh with axis 'data' over `devices`, by default this process's devices
  (scope 'local': work each process does alone, such as generating its shards) or every
  process's (scope 'global': one data-parallel computation across hosts)."""
  if devices is None:
    if scope not in ('local', 'global'):
      raise ValueError(f"scope must be 'local' or 'global', got {scope!r}")
    devices = jax.local_devices() if scope == 'local' else jax.devices()
  return Mesh(np.asarray(devices), (DATA_AXIS,))
