"""Multi-host initialisation: ``jax.distributed.initialize`` from config or environment.

The same program runs on every host (process). Each one feeds its own slice of the global
batch; ``jax.make_array_from_process_local_data`` assembles the slices into one global
array (see ``data_parallel.JitDataParallel.put_batch``). On CPU the cross-process
collectives use gloo (JAX's default), so several processes on 127.0.0.1 behave as hosts.
"""

from __future__ import annotations

import dataclasses
import os

import jax
from absl import logging


@dataclasses.dataclass(frozen=True)
class Cluster:
  """Where this process sits: the coordinator's ``host:port``, process count and id."""

  coordinator_address: str
  num_processes: int
  process_id: int


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name}={value!r}; must be an integer") from None


def cluster_from(coordinator_address: str = "", num_processes: int = 0,
                 process_id: int = -1) -> Cluster | None:
  """The cluster named by the arguments, else by ``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; None when neither names one (single host).

  Raises:
    ValueError: when only some of the three are given, or they are inconsistent.
  """
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  count = num_processes or _env_int("JAX_NUM_PROCESSES") or 0
  pid = process_id if process_id >= 0 else _env_int("JAX_PROCESS_ID")
  pid = -1 if pid is None else pid
  if not address and count in (0, 1) and pid in (-1, 0):
    return None
  if not address or count < 1 or pid < 0:
    raise ValueError(
        f"multi-host needs a coordinator address, a process count and a process id; got "
        f"coordinator_address={address!r}, num_processes={count}, process_id={pid} (set "
        "config.parallel.* or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
  if ":" not in address:
    raise ValueError(f"coordinator_address={address!r}; must be 'host:port'")
  if not 0 <= pid < count:
    raise ValueError(f"process_id={pid}; must be in [0, {count}) for num_processes={count}")
  return Cluster(address, count, pid)


def initialize(cluster: Cluster | None) -> None:
  """Runs ``jax.distributed.initialize`` once for a multi-host cluster; no-op for None.

  Must run before anything touches a JAX backend (devices, arrays, jit).
  """
  if cluster is None or jax.distributed.is_initialized():
    return
  logging.info("jax.distributed.initialize(%s, num_processes=%d, process_id=%d)",
               cluster.coordinator_address, cluster.num_processes, cluster.process_id)
  jax.distributed.initialize(coordinator_address=cluster.coordinator_address,
                             num_processes=cluster.num_processes,
                             process_id=cluster.process_id)
