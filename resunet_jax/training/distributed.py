"""Multi-process start-up: ``jax.distributed.initialize()`` when asked or when the platform says so.

"The platform says so" when the environment describes a multi-process job: a coordinator address
(``JAX_COORDINATOR_ADDRESS``, with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` where no cluster
manager provides them -- e.g. several processes on one machine), SLURM or Open MPI with more than
one task, or a multi-host Cloud TPU slice. JAX's own cluster detection then fills in the rest.
"""
import os
from typing import Optional

import jax
from absl import logging


def platform_requests_distributed(environ=None) -> bool:
  env = os.environ if environ is None else environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
    return True
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return True
  if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    return True
  return False


def maybe_initialize(requested: Optional[bool]) -> bool:
  """Initialises the JAX distributed runtime if ``requested`` (None: if the environment asks).

  Returns whether it did. Must run before any JAX computation.
  """
  wanted = platform_requests_distributed() if requested is None else requested
  if not wanted:
    return False
  kwargs = {}
  for key, env in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
    if os.environ.get(env):
      kwargs[key] = int(os.environ[env])
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices.",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True
