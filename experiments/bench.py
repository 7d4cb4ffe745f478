r"""seqscale's layers next to the best peers: time, tokens/s, memory; ratios in one run.

  python -m experiments.bench --workdir=/tmp/bench                # T = 128 .. 8192, ~15 min
  python -m experiments.bench --workdir=/tmp/bench_quick --quick  # T = 128, float32, ~1 min

For every registered model (one layer of each family), causal attention and multi-head
attention: forward and forward+backward time per step (median of repetitions, compile
time apart), tokens/s and compiled peak memory, float32 and bfloat16, with the peers in
the same group, timed round-robin (torch.nn.LSTM/GRU/RNN, flax.nnx.RNN, torch sdpa,
jax.nn.dot_product_attention, flax.nnx.MultiHeadAttention, a large matmul). Then the
targets of issue 8 (ratios in the same run). Writes results.json, results.md and PNG plots
to --workdir. Default: bfloat16 at T = 512 and 2048 only (``--lengths``/``--dtypes`` widen
it); models too slow or too large to measure get a row saying so. Hardware: any; measured
on a shared 2-core AMD EPYC CPU: 15 min default, 1 min --quick.
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
  progress = lambda line: print(line, file=sys.stderr, flush=True)
  print(bench.run(s, workdir, progress=progress)["markdown"], flush=True)


if __name__ == "__main__":
  cli.run(main, settings)
