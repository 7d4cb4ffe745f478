r"""seqscale's layers next to the best peers: time, tokens/s, memory; ratios in one run.

  python -m experiments.bench --workdir=/tmp/bench                # T = 128 .. 8192, ~35 min
  python -m experiments.bench --workdir=/tmp/bench_quick --quick  # T = 128, float32, ~2 min

First the machine's practical peak: [n, n] matmuls, n = 256 .. 4096, of XLA and torch,
float32 and bfloat16 side by side. Then, for every registered model (one layer of each
family), causal attention and multi-head attention: forward and forward+backward time per
step (median of repetitions, compile time apart), tokens/s and compiled peak memory,
float32 and bfloat16, with the peers in the same group, timed round-robin
(torch.nn.LSTM/GRU/RNN, flax.nnx.RNN, torch sdpa, jax.nn.dot_product_attention,
flax.nnx.MultiHeadAttention). Then the targets of issue 18, each measured in one group of
alternating candidates (median of at least 5 runs) and printed as measured number, target,
pass/fail and load average: LSTM/GRU fwd+bwd / torch.nn at (B, T, D) = (32, 512, 256)
(<= 0.9) and (1, 8192, 256) (<= 1), causal attention / torch sdpa at T = 256 .. 8192 (<= 1),
the Transformer LM (d=512, 6 layers, T=512, B=8) train step's MFU against the best
float32 matmul of either library (>= 0.5). Writes results.json, results.md and PNG plots
to --workdir; results.json's context names the CPU and its vector extensions. Default:
bfloat16 at T = 512 and 2048 only (``--lengths``/``--dtypes`` widen it); models too slow or
too large to measure get a row saying so. Hardware: any. Run time on the shared 2-core
Intel Xeon (AVX-512, AMX): the full run took 30 min (load average ~3) before the matmul
sweep and the B=1, T=8192 and attention T=256 and 8192 targets were added (about 4 min
more); --quick took 4.6 min at load average 9 to 12.
"""

import dataclasses
import os
import sys

from absl import flags

from experiments import cli
from seqscale.studies import bench

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (results.json, table, plots).")
_QUICK = flags.DEFINE_bool("quick", False, "Small shapes and lengths: about a minute.")
_LAYERS = flags.DEFINE_list("layers", None, "Only these layers (registry names, attention, "
                            "mha); default all.")
_LENGTHS = cli.DEFINE_integer_list("lengths", None, "Lengths T (default 128,512,2048,8192).")
_DTYPES = flags.DEFINE_list("dtypes", None, "float32 and/or bfloat16 (default both).")
_REPEATS = flags.DEFINE_integer("repeats", None, "Timed runs per candidate (median; default 5).",
                                lower_bound=1)
_TARGETS = flags.DEFINE_bool("targets", True, "Also measure the issue's targets.")
_OMP_WAIT = flags.DEFINE_enum(
    "omp_wait_policy", "PASSIVE", ["PASSIVE", "ACTIVE", "default"], "OMP_WAIT_POLICY for "
    "PyTorch when the environment does not set it: PASSIVE keeps its threads from spinning on "
    "a shared, oversubscribed machine (ACTIVE made torch several times slower there); "
    "'default' leaves torch's own.")
cli.check_names(_DTYPES, ("float32", "bfloat16"))


def settings() -> bench.Settings:
  """The study's settings from the flags."""
  changes = {"targets": _TARGETS.value}
  if _LAYERS.value:
    changes["layers"] = tuple(_LAYERS.value)
  if _LENGTHS.value:
    changes["lengths"] = tuple(_LENGTHS.value)
  if _DTYPES.value:
    changes["dtypes"] = tuple(_DTYPES.value)
  if _REPEATS.value is not None:
    changes["repeats"] = _REPEATS.value
  return dataclasses.replace(bench.QUICK if _QUICK.value else bench.Settings(), **changes)


def main(s: bench.Settings, workdir: str) -> None:
  if _OMP_WAIT.value != "default" and "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = _OMP_WAIT.value  # read once, when torch loads
  bench.use_all_cores()
  progress = lambda line: print(line, file=sys.stderr, flush=True)
  print(bench.run(s, workdir, progress=progress)["markdown"], flush=True)


if __name__ == "__main__":
  cli.run(main, settings)
