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
which must be set before JAX starts: the study runs each N in a subprocess
(``sharding.subprocess_rows``) and says so. On GPU/TPU it uses the real devices (counts above what exists are
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

from absl import flags

from experiments import cli
from seqscale.studies import sharding

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
_DEVICES = cli.DEFINE_integer_list("devices", [1, 2, 4, 8], "Device counts N on the seq axis.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "T; a multiple of 2N for every N.",
                                lower_bound=2)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per measurement (median).",
                                lower_bound=1)
_PROCESSES = flags.DEFINE_integer(
    "processes", 1, "CPU only: run each N as this many jax.distributed processes on "
    "127.0.0.1 (N / processes devices each), to check multi-host gives the same rows.",
    lower_bound=1)


def settings() -> sharding.Settings:
  """The study's settings from the flags."""
  return sharding.Settings(devices=tuple(_DEVICES.value), seq_len=_SEQ_LEN.value,
                           repeats=_REPEATS.value, processes=_PROCESSES.value)


def main(s: sharding.Settings, workdir: str) -> None:
  print(sharding.run(s, workdir, progress=lambda line: print(line, flush=True))["markdown"])
  print(f"wrote {workdir}/results.json, results.md and plots", flush=True)


if __name__ == "__main__":
  cli.run(main, settings)
