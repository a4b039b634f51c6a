"""Processes and devices."""

import jax


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
