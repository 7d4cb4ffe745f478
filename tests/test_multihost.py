"""Multi-host auto-detection (``parallel.multihost``): which environments say several
processes, the line when it cannot tell, and 2 processes on 127.0.0.1 started the way
``srun`` starts them (SLURM variables only), which find each other through
``jax.distributed.initialize()`` with no arguments."""

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import ROOT
from seqscale.parallel import multihost
from seqscale.parallel.multihost import Cluster

SLURM = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_NTASKS": "2",
         "SLURM_PROCID": "1", "SLURM_LOCALID": "1"}


@pytest.mark.parametrize("env, cluster, reason", [
    ({}, None, None),
    ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, None, None),
    (SLURM, Cluster("", 2, 1, "slurm"), None),
    (dict(SLURM, SLURM_NTASKS="1"), None, None),
    ({k: v for k, v in SLURM.items() if k != "SLURM_STEP_NODELIST"}, None,
     "SLURM_NTASKS=2 but SLURM_STEP_NODELIST unset (not launched by srun?)"),
    ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3",
      "OMPI_MCA_orte_hnp_uri": "1234.0;tcp://10.0.0.1:5555"}, Cluster("", 4, 3, "ompi"), None),
    ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3"}, None,
     "OMPI_COMM_WORLD_SIZE=4 but OMPI_MCA_orte_hnp_uri unset"),
    ({"PMI_SIZE": "8"}, None, "PMI_SIZE=8: an MPI launch JAX does not detect"),
    ({"TPU_WORKER_HOSTNAMES": "t-w-0,t-w-1,t-w-2,t-w-3", "TPU_WORKER_ID": "2"},
     Cluster("", 0, -1, "tpu"), None),
    ({"TPU_PROCESS_ADDRESSES": "10.0.0.1:8476,10.0.0.2:8476"}, Cluster("", 0, -1, "tpu"), None),
    ({"MEGASCALE_NUM_SLICES": "2"}, Cluster("", 0, -1, "tpu"), None),
    ({"TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0"}, None, None),  # one host
    ({"TPU_WORKER_ID": "3"}, None, "TPU_WORKER_ID=3 but no TPU_WORKER_HOSTNAMES"),
])
def test_detect(env, cluster, reason):
  found, why = multihost.detect(env)
  assert found == cluster
  if reason is None:
    assert why is None
  else:
    assert why.startswith(reason) and "num_processes=1" in why, why


def test_detect_names_a_bad_variable():
  with pytest.raises(ValueError, match="SLURM_NTASKS='two'; must be an integer"):
    multihost.detect({"SLURM_NTASKS": "two"})


@pytest.fixture
def clean_env(monkeypatch):
  for var in list(os.environ):
    if var.startswith(("SLURM_", "OMPI_", "PMI", "TPU_", "MEGASCALE_", "JAX_COORDINATOR",
                       "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")):
      monkeypatch.delenv(var)
  warnings = []
  monkeypatch.setattr(multihost.logging, "warning", lambda fmt, *a: warnings.append(fmt % a))
  return warnings


def test_cluster_from_prefers_explicit_then_detects(clean_env, monkeypatch):
  for k, v in SLURM.items():
    monkeypatch.setenv(k, v)
  assert multihost.cluster_from() == Cluster("", 2, 1, "slurm")
  assert multihost.cluster_from("h:1", 3, 0) == Cluster("h:1", 3, 0, "explicit")
  assert multihost.cluster_from(num_processes=1) is None  # one process, asked for
  monkeypatch.setenv("JAX_NUM_PROCESSES", "1")
  assert multihost.cluster_from() is None
  assert not clean_env
  monkeypatch.delenv("JAX_NUM_PROCESSES")
  monkeypatch.delenv("SLURM_STEP_NODELIST")
  assert multihost.cluster_from() is None
  [line] = clean_env
  assert line.startswith("multi-host: SLURM_NTASKS=2 but SLURM_STEP_NODELIST unset")


def test_initialize_calls_jax_without_arguments_for_a_detected_cluster(clean_env, monkeypatch):
  calls = []
  monkeypatch.setattr(multihost.jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(multihost.jax.distributed, "initialize",
                      lambda *a, **kw: calls.append((a, kw)))
  multihost.initialize(Cluster("", 2, 1, "slurm"))
  multihost.initialize(Cluster("h:1", 2, 1))
  multihost.initialize(None)
  assert calls == [((), {}), ((), dict(coordinator_address="h:1", num_processes=2,
                                       process_id=1))]

  def started(*a, **kw):
    raise RuntimeError("jax.distributed.initialize() must be called before any JAX calls")
  monkeypatch.setattr(multihost.jax.distributed, "initialize", started)
  multihost.initialize(Cluster("", 2, 1, "slurm"))  # detected: a warning, runs alone
  [line] = clean_env
  assert "the slurm environment says 2 processes, but JAX had already started" in line
  with pytest.raises(RuntimeError, match="must be called before"):
    multihost.initialize(Cluster("h:1", 2, 1))  # explicit: the user asked, so it fails


_CHILD = """
import json
from seqscale.parallel import multihost
cluster = multihost.cluster_from()
multihost.initialize(cluster)
import jax
import numpy as np
from jax.experimental import multihost_utils
gathered = multihost_utils.process_allgather(np.array([10.0 * (jax.process_index() + 1)]))
print("RESULT " + json.dumps({"source": cluster.source, "count": jax.process_count(),
                              "index": jax.process_index(), "devices": jax.device_count(),
                              "gathered": np.asarray(gathered).ravel().tolist()}))
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_slurm_processes_on_localhost_find_each_other():
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                              "JAX_PROCESS_ID", "TPU_", "MEGASCALE_"))}
  env.update(SLURM, JAX_PLATFORMS="cpu", JAX_COORDINATOR_PORT=str(_free_port()),
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  procs = [subprocess.Popen([sys.executable, "-c", _CHILD], cwd=ROOT, text=True,
                            env=dict(env, SLURM_PROCID=str(i), SLURM_LOCALID=str(i)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  outs = [p.communicate(timeout=120)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
  results = [json.loads(next(l for l in o.splitlines() if l.startswith("RESULT "))[7:])
             for o in outs]
  assert [r["index"] for r in results] == [0, 1]
  for r in results:
    assert r["source"] == "slurm" and r["count"] == 2 and r["devices"] == 2
    assert r["gathered"] == [10.0, 20.0]  # each process's value reached the other
