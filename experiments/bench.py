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

from absl import app
from absl import flags

from seqscale.studies import bench

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (results.json, table, plots).")
_QUICK = flags.DEFINE_bool("quick", False, "Small shapes and lengths: about a minute.")
_LAYERS = flags.DEFINE_list("layers", None, "Only these layers (registry names, attention, "
                            "mha); default all.")
_LENGTHS = flags.DEFINE_list("lengths", None, "Lengths T (default 128,512,2048,8192).")
_DTYPES = flags.DEFINE_list("dtypes", None, "float32 and/or bfloat16 (default both).")
_REPEATS = flags.DEFINE_integer("repeats", None, "Timed runs per candidate (median).")
_TARGETS = flags.DEFINE_bool("targets", True, "Also measure the issue's targets.")
_OMP_WAIT = flags.DEFINE_string(
    "omp_wait_policy", "PASSIVE", "OMP_WAIT_POLICY for PyTorch when the environment does not "
    "set it: PASSIVE keeps its threads from spinning on a shared, oversubscribed machine "
    "(ACTIVE made torch several times slower there); '' leaves torch's default.")


def _fail(message: str, code: int) -> None:
  print("error: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
  sys.exit(code)


def _progress(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}", 2)
  if _OMP_WAIT.value and "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = _OMP_WAIT.value  # read once, when torch loads
  s = bench.QUICK if _QUICK.value else bench.Settings()
  changes = {"targets": _TARGETS.value}
  try:
    if _LAYERS.value:
      changes["layers"] = tuple(_LAYERS.value)
    if _LENGTHS.value:
      changes["lengths"] = tuple(int(t) for t in _LENGTHS.value)
    if _DTYPES.value:
      changes["dtypes"] = tuple(_DTYPES.value)
    if _REPEATS.value is not None:
      changes["repeats"] = _REPEATS.value
  except ValueError as e:
    _fail(f"--lengths={_LENGTHS.value}: {e}", 2)
  s = dataclasses.replace(s, **changes)
  try:
    md = bench.run(s, _WORKDIR.value, progress=_progress)["markdown"]
  except ValueError as e:
    _fail(e, 1)
  print(md, flush=True)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
