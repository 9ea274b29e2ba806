"""Multi-host start-up: `jax.distributed.initialize` from arguments, config or environment.

On TPU pods, SLURM, Open MPI and Kubernetes JAX detects everything itself: call `initialize()`
with no arguments on every host. Elsewhere (several GPU hosts, local CPU processes) give the
coordinator address, process count and this process's id, as arguments or as the environment
variables GEMMAX_COORDINATOR_ADDRESS, GEMMAX_NUM_PROCESSES, GEMMAX_PROCESS_ID.
"""

from __future__ import annotations

import logging
import os

import jax

from gemmax.errors import GemmaxError

log = logging.getLogger(__name__)
_ENV = ("GEMMAX_COORDINATOR_ADDRESS", "GEMMAX_NUM_PROCESSES", "GEMMAX_PROCESS_ID")


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  config=None,
  timeout_s: int = 300,
) -> None:
  """Joins this process to the job. `config` may be a mapping / ml_collections ConfigDict with
  the same three keys. A single process (num_processes 1) is left alone.
  """

  def pick(value, key, env, cast):
    if value is None and config is not None:
      value = config.get(key) if hasattr(config, "get") else getattr(config, key, None)
    if value is None and os.environ.get(env):
      value = os.environ[env]
    return None if value is None else cast(value)

  addr = pick(coordinator_address, "coordinator_address", _ENV[0], str)
  num = pick(num_processes, "num_processes", _ENV[1], int)
  pid = pick(process_id, "process_id", _ENV[2], int)
  if num == 1:
    return
  if (addr is None) != (num is None) or (addr is not None and pid is None):
    raise GemmaxError(
      f"distributed.initialize: give coordinator_address, num_processes and "
      f"process_id together (got {addr!r}, {num!r}, {pid!r}) or none of them"
    )
  if jax.config.jax_platforms in ("cpu",) or os.environ.get("JAX_PLATFORMS") == "cpu":
    # Cross-process collectives on CPU need an implementation; gloo ships with jaxlib.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=addr, num_processes=num, process_id=pid, initialization_timeout=timeout_s
  )
  log.info(
    "process %d/%d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
