"""Several processes: start-up of ``jax.distributed`` and the few agreements they make at start.

``maybe_initialize``: ``jax.distributed.initialize()`` when asked or when the platform says so, i.e.
when the environment describes a multi-process job: a coordinator address
(``JAX_COORDINATOR_ADDRESS``, with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` where no cluster
manager provides them -- e.g. several processes on one machine), SLURM or Open MPI with more than
one task, or a multi-host Cloud TPU slice. JAX's own cluster detection then fills in the rest.

The helpers below are collective: every process must call them, in the same order. They run at
start-up only (never per training step): ``all_processes`` gathers one number per process,
``barrier`` waits for all, ``check_shared_workdir`` verifies that every process sees the same work
directory (a local path on hosts without shared storage gives each host its own, and resuming
would silently diverge).
"""
import os
import secrets
from typing import List, Optional

import jax
import numpy as np
from absl import logging


class HostsDisagreeError(RuntimeError):
  """The processes of a multi-process run do not see the same work directory or run."""


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


def all_processes(value: int) -> List[int]:
  """Every process's ``value`` (an integer), in process order; collective."""
  if jax.process_count() == 1:
    return [int(value)]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  gathered = multihost_utils.process_allgather(np.asarray([int(value)], np.int64))
  return [int(v) for v in np.asarray(gathered).reshape(-1)]


def from_first_process(value: int) -> int:
  """Process 0's ``value`` on every process; collective."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(multihost_utils.broadcast_one_to_all(np.asarray(int(value), np.int64)))


def barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


HOSTS_CHECK_FILE = "hosts_check"


def check_shared_workdir(workdir, latest_step: Optional[int]) -> Optional[int]:
  """Process 0's latest checkpoint step, after checking that every process sees the same run.

  Process 0 writes a random token into ``workdir``; every process reads it back and reports its
  own latest step. If any process cannot read the token or sees another latest step, every
  process raises ``HostsDisagreeError`` naming them (no process is left waiting in a collective).
  ``workdir`` is an ``epath.Path``; ``latest_step`` this process's view (None: no checkpoint).
  """
  if jax.process_count() == 1:
    return latest_step
  token = from_first_process(secrets.randbits(62) if jax.process_index() == 0 else 0)
  marker = workdir / HOSTS_CHECK_FILE
  if jax.process_index() == 0:
    marker.write_text(str(token))
  barrier("resunet_jax.hosts_check")
  try:
    seen = int(marker.read_text().strip())
  except (OSError, ValueError):
    seen = -1
  same = all_processes(int(seen == token))
  steps = all_processes(-1 if latest_step is None else int(latest_step))
  blind = [p for p, ok in enumerate(same) if not ok]
  if blind or len(set(steps)) > 1:
    views = ", ".join(f"process {p}: {'no checkpoint' if s < 0 else f'step {s}'}"
                      + ("" if same[p] else " (does not see process 0's files)")
                      for p, s in enumerate(steps))
    raise HostsDisagreeError(
        f"the {len(steps)} processes do not see the same work directory {workdir}: {views}. "
        "The work directory must be one location every host reads and writes (shared or cloud "
        "storage such as gs://bucket/run), not a local path on each host.")
  return None if steps[0] < 0 else steps[0]
