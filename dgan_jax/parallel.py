"""Processes and devices: joining a multi-process run, the one device mesh, and the XLA
options the heavy steps compile with."""

from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

DATA_AXIS = 'data'

# XLA:CPU (jax 0.10) hands dots, convolutions, reductions and elementwise fusions to
# YNNPACK by default. On a 2-core Xeon (2026-12-07) its dots with more outputs than inputs
# (a 1x1 convolution 256 -> 1024 channels on 8192 pixels: 21 ms against Eigen's 15), its
# convolution kernel gradients (3x3, 256 channels, 64x64: 140 ms against 39) and the
# interpreter's batched first layer were slower, its reductions faster (a training-mode
# BatchNorm of [2, 64, 64, 1024], forward and backward: 21 ms against 117 ms). So YNNPACK
# keeps the reductions only.
# XLA:CPU's default scheduler orders work for concurrency: in the DeepLab train step
# (ResNet-101, 512 px, batch 2) it computed the backward pass's BatchNorm terms (x - mean,
# a second copy of every convolution output) during the forward pass and kept them, 6.82
# GB of temporaries in all. The memory-minimizing scheduler computes them where they are
# used: 4.17 GB, at the same speed (2026-12-07).
CPU_COMPILER_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_REDUCE',
                        'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}


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


def compiler_options(platform: str | None = None) -> dict | None:
  """`jax.jit(..., compiler_options=...)` for the interpreter's and DeepLab's steps on
  `platform` (default: the default backend's). The generate step keeps XLA's defaults:
  these options did not change its time."""
  if (platform or jax.default_backend()) == 'cpu':
    return dict(CPU_COMPILER_OPTIONS)
  return None


def make_mesh(devices: Sequence[jax.Device] | None = None, scope: str = 'local') -> Mesh:
  """A 1-D mesh with axis 'data' over `devices`, by default this process's devices
  (scope 'local': work each process does alone, such as generating its shards) or every
  process's (scope 'global': one data-parallel computation across hosts)."""
  if devices is None:
    if scope not in ('local', 'global'):
      raise ValueError(f"scope must be 'local' or 'global', got {scope!r}")
    devices = jax.local_devices() if scope == 'local' else jax.devices()
  return Mesh(np.asarray(devices), (DATA_AXIS,))
