r"""Sequence parallelism measured: attention shards over devices, a nonlinear scan cannot,
a linear scan can.

  python -m experiments.sharding --workdir=/tmp/sharding --devices=1,2,4,8

For each device count N and strategy (compiler-sharded attention, ring attention, ring
attention with zig-zag causal balancing, carry-passing LSTM, an N-layer LSTM pipelined over
N devices (wavefront), sharded linear scan; attention causal): error against one device,
FLOPs per device, collective bytes, critical path, run and compile time
(``seqscale.studies.sharding``). Writes ``results.json``, ``results.md``,
``flops_per_device.png``, ``time.png``, ``critical_path.png`` and ``timeline.png`` (a
schematic of which device works when, drawn from the programs' structure, N = 4).
On CPU the N devices are forced host devices (``--xla_force_host_platform_device_count``),
which must be set before JAX starts: the script re-launches itself once per N in a
subprocess and says so. On GPU/TPU it uses the real devices (counts above what exists are
skipped). Hardware: CPU, 2 cores shared: about 45 s at the default T=256.
Expected result: attention FLOPs per device ~1/N; carry-passing LSTM critical path the same
at every N; wavefront ~T + (N-1) T/8 against N*T on one device; sharded linear scan
critical path ~2T/N + 2 log2 N. On 2 cores, times beyond
N = 2 are not speed-ups (the N "devices" share 2 cores).

Multi-host: ``--processes=2`` runs each N as 2 ``jax.distributed`` processes on 127.0.0.1
(gloo collectives), N/2 forced devices each; the rows should equal one process's (timings
aside):

  python -m experiments.sharding --workdir=/tmp/sharding_mp --devices=2,4,8 --processes=2
"""

import json
import os
import socket
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4", "8"], "Device counts on the seq axis.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "T; a multiple of 2N for every N.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per measurement (median).")
_PROCESSES = flags.DEFINE_integer(
    "processes", 1, "CPU only: run each N as this many jax.distributed processes on "
    "127.0.0.1 (N / processes devices each), to check multi-host gives the same rows.")
_CHILD = flags.DEFINE_integer("child_devices", 0, "Internal: measure N devices, write rows.")
_ROWS_OUT = flags.DEFINE_string("rows_out", "", "Internal: where a child writes its rows.")


def _fail(message: str) -> None:
  print("error: " + message, file=sys.stderr, flush=True)
  sys.exit(2)


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def _child_rows(n: int, processes: int) -> list[dict]:
  local = n // processes
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                      + f" --xla_force_host_platform_device_count={local}").strip()
  where = "a subprocess" if processes == 1 else f"each of {processes} processes"
  print(f"CPU: forcing {local} host device(s) in {where} "
        f"(XLA_FLAGS=--xla_force_host_platform_device_count={local})", flush=True)
  if processes > 1:
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}",
               JAX_NUM_PROCESSES=str(processes))
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "rows.json")
    cmd = [sys.executable, "-m", "experiments.sharding", f"--child_devices={n}",
           f"--rows_out={out}", f"--seq_len={_SEQ_LEN.value}", f"--repeats={_REPEATS.value}"]
    procs = [subprocess.Popen(cmd, env=dict(env, JAX_PROCESS_ID=str(i)) if processes > 1
                              else env) for i in range(processes)]
    codes = [p.wait() for p in procs]
    if any(codes):
      _fail(f"a subprocess for --devices={n} failed (exit codes {codes})")
    with open(out) as f:
      return [dict(row, processes=processes) for row in json.load(f)]


def main(argv):
  del argv
  from seqscale.studies import sharding  # pylint: disable=g-import-not-at-top
  sizes = sharding.Sizes(T=_SEQ_LEN.value)
  if _CHILD.value:
    from seqscale import parallel  # pylint: disable=g-import-not-at-top
    parallel.initialize(parallel.cluster_from())  # JAX_* environment; no-op for one process
    import jax  # pylint: disable=g-import-not-at-top
    rows = sharding.measure_all(_CHILD.value, sizes=sizes, repeats=_REPEATS.value)
    if jax.process_index() == 0:
      with open(_ROWS_OUT.value, "w") as f:
        json.dump(rows, f)
    return
  if not _WORKDIR.value:
    _fail("--workdir is required")
  try:
    counts = [int(d) for d in _DEVICES.value]
  except ValueError:
    _fail(f"--devices={','.join(_DEVICES.value)}; must be positive integers, e.g. 1,2,4,8")
  if _PROCESSES.value < 1 or any(n % _PROCESSES.value for n in counts):
    _fail(f"--processes={_PROCESSES.value}: must be >= 1 and divide every N in --devices="
          f"{counts}")
  if any(n < 1 for n in counts) or any(_SEQ_LEN.value % (2 * n) for n in counts):
    _fail(f"--devices={counts} with --seq_len={_SEQ_LEN.value}: every N must be >= 1 and "
          "divide T / 2")
  import jax  # pylint: disable=g-import-not-at-top
  from seqscale import outputs  # pylint: disable=g-import-not-at-top
  cpu = jax.default_backend() == "cpu"
  rows = []
  for n in counts:
    if cpu:
      rows += _child_rows(n, _PROCESSES.value)
    elif n <= jax.device_count():
      rows += sharding.measure_all(n, sizes=sizes, repeats=_REPEATS.value)
    else:
      print(f"skipping --devices={n}: {jax.device_count()} devices here")
  cores = os.cpu_count() or 1
  note = (f"CPU with {cores} cores: the N devices are forced host devices sharing them, so "
          f"times beyond N = {cores} are not speed-ups; FLOPs per device, collective bytes "
          "and the critical path carry the argument." if cpu else "")
  ctx = outputs.run_context(devices=counts, sizes=vars(sizes), forced_cpu_devices=cpu,
                            processes=_PROCESSES.value, note=note)
  print(sharding.write(rows, _WORKDIR.value, ctx))
  if note:
    print(note)
  print(f"wrote {_WORKDIR.value}/results.json, results.md and plots")


if __name__ == "__main__":
  app.run(main)
