"""Multi-host initialisation: ``jax.distributed.initialize`` from config or environment.

The same program runs on every host (process). Each one feeds its own slice of the global
batch; ``jax.make_array_from_process_local_data`` assembles the slices into one global
array (see ``data_parallel.JitDataParallel.put_batch``). On CPU the cross-process
collectives use gloo (JAX's default), so several processes on 127.0.0.1 behave as hosts.

Where the cluster comes from, first match wins:

1. explicit: ``coordinator_address``, ``num_processes``, ``process_id`` (the trainer's
   ``config.parallel.*``), else ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
   ``JAX_PROCESS_ID``. ``num_processes=1`` (or ``JAX_NUM_PROCESSES=1``) means one process
   and turns the detection below off;
2. detected: the variables JAX's own cluster detection reads (``jax._src.clusters``) say
   several processes, and ``jax.distributed.initialize()`` is called without arguments so
   that JAX fills them in:

   - SLURM (``srun``): ``SLURM_JOB_ID``, ``SLURM_STEP_NODELIST``, ``SLURM_NTASKS`` > 1,
     ``SLURM_PROCID``, ``SLURM_LOCALID``. JAX gives each task one GPU (``SLURM_LOCALID``),
     so launch one task per GPU; ``JAX_COORDINATOR_PORT`` overrides the port it derives
     from the job id;
   - Open MPI (``mpirun``): ``OMPI_MCA_orte_hnp_uri`` and ``OMPI_COMM_WORLD_SIZE`` > 1;
   - a Cloud TPU pod slice: ``TPU_WORKER_HOSTNAMES`` or ``TPU_PROCESS_ADDRESSES`` listing
     several hosts, or ``MEGASCALE_NUM_SLICES`` > 1;
3. otherwise one process. Where the environment hints at several processes that cannot be
   told apart (SLURM without ``srun``'s step variables, Open MPI 5 without its ORTE URI,
   another MPI, a TPU VM naming its worker but no host list), one warning line says so and
   how to name the cluster.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import jax
from absl import logging

EXPLICIT = "explicit"
_SLURM = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
          "SLURM_LOCALID")
_TPU_HOSTS = ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES")
_HOW = ("name the cluster with --config.parallel.coordinator_address=HOST0:PORT "
        "--config.parallel.num_processes=N --config.parallel.process_id=I (or "
        "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), or set num_processes=1 "
        "to run one process")


@dataclasses.dataclass(frozen=True)
class Cluster:
  """Where this process sits: the coordinator's ``host:port``, process count and id.

  ``source`` says where they came from: ``"explicit"``, or a detected environment
  (``"slurm"``, ``"ompi"``, ``"tpu"``) whose address JAX itself works out (``""`` here).
  """

  coordinator_address: str
  num_processes: int
  process_id: int
  source: str = EXPLICIT


def _env_int(name: str, env: Mapping[str, str] | None = None) -> int | None:
  value = (os.environ if env is None else env).get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name}={value!r}; must be an integer") from None


def detect(env: Mapping[str, str] | None = None) -> tuple[Cluster | None, str | None]:
  """The multi-process cluster the environment (default ``os.environ``) describes, as JAX's
  cluster detection would find it, and a one-line reason where it hints at several
  processes but cannot say which (``(None, None)``: one process, nothing to say).

  Raises:
    ValueError: a variable that must be an integer is not.
  """
  env = os.environ if env is None else env
  ntasks = _env_int("SLURM_NTASKS", env)
  if ntasks is not None and ntasks > 1:
    missing = [v for v in _SLURM if v not in env]
    if not missing:
      return Cluster("", ntasks, _env_int("SLURM_PROCID", env), "slurm"), None
    return None, (f"SLURM_NTASKS={ntasks} but {', '.join(missing)} unset (not launched by "
                  f"srun?): running as one process; launch with srun, or {_HOW}")
  size = _env_int("OMPI_COMM_WORLD_SIZE", env)
  if size is not None and size > 1:
    if "OMPI_MCA_orte_hnp_uri" in env:
      return Cluster("", size, _env_int("OMPI_COMM_WORLD_RANK", env), "ompi"), None
    return None, (f"OMPI_COMM_WORLD_SIZE={size} but OMPI_MCA_orte_hnp_uri unset (Open MPI 5 "
                  f"has none; JAX detects Open MPI 4 only): running as one process; {_HOW}")
  for name in ("PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"):
    if (_env_int(name, env) or 0) > 1:
      return None, (f"{name}={env[name]}: an MPI launch JAX does not detect: running as one "
                    f"process; {_HOW}")
  hosts = next((env[v] for v in _TPU_HOSTS if env.get(v)), "")
  slices = _env_int("MEGASCALE_NUM_SLICES", env) or 1
  if len([h for h in hosts.split(",") if h.strip()]) > 1 or slices > 1:
    return Cluster("", 0, -1, "tpu"), None
  if env.get("TPU_WORKER_ID") not in (None, "", "0") and not hosts:
    return None, (f"TPU_WORKER_ID={env['TPU_WORKER_ID']} but no TPU_WORKER_HOSTNAMES: cannot "
                  f"tell the pod's hosts; running as one process; {_HOW}")
  return None, None


def cluster_from(coordinator_address: str = "", num_processes: int = 0,
                 process_id: int = -1) -> Cluster | None:
  """The cluster named by the arguments, else by ``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, else detected (``detect``); None for one
  process (logging one warning line where the environment hints at more).

  Raises:
    ValueError: when only some of the three are given, or they are inconsistent.
  """
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  count = num_processes or _env_int("JAX_NUM_PROCESSES") or 0
  pid = process_id if process_id >= 0 else _env_int("JAX_PROCESS_ID")
  pid = -1 if pid is None else pid
  if not address and count in (0, 1) and pid in (-1, 0):
    if count == 1:  # one process, asked for: nothing to detect
      return None
    cluster, reason = detect()
    if reason:
      logging.warning("multi-host: %s", reason)
    return cluster
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

  An explicit cluster passes its three values; a detected one calls it without arguments,
  so that JAX reads the environment itself. Must run before anything touches a JAX backend
  (devices, arrays, jit): for an explicit cluster that is an error (JAX's RuntimeError);
  for a detected one, a warning line, and this process runs alone.
  """
  if cluster is None or jax.distributed.is_initialized():
    return
  if cluster.source == EXPLICIT:
    logging.info("jax.distributed.initialize(%s, num_processes=%d, process_id=%d)",
                 cluster.coordinator_address, cluster.num_processes, cluster.process_id)
    jax.distributed.initialize(coordinator_address=cluster.coordinator_address,
                               num_processes=cluster.num_processes,
                               process_id=cluster.process_id)
    return
  logging.info("multi-host: %s environment, %s processes: jax.distributed.initialize()",
               cluster.source, cluster.num_processes or "its")
  try:
    jax.distributed.initialize()
  except RuntimeError as e:
    if "must be called before" not in str(e):
      raise
    logging.warning("multi-host: the %s environment says %s processes, but JAX had already "
                    "started in this process, so it runs alone; initialise before any JAX "
                    "call, or %s", cluster.source, cluster.num_processes or "several", _HOW)
