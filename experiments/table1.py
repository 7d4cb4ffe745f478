r"""Table 1 of "Attention Is All You Need", measured from the compiled program.

  python -m experiments.table1 --workdir=/tmp/table1                # ~4.5 min, 2 CPU cores
  python -m experiments.table1 --workdir=/tmp/table1_quick --quick   # ~50 s
  python -m experiments.table1 --workdir=/tmp/t1 --layers=self_attention,lstm \
      --n_values=64,256,1024 --d_values=32,64

Writes ``table1.md`` (also printed), ``results.json`` and PNG plots to ``--workdir``; see
``seqscale.studies.table1``. Hardware: any; the numbers are counts, not timings, so a CPU
gives the same table as a GPU up to the backend's own fusion choices.
Expected result: FLOPs ~ n^2 (n >> d) and ~ d^1 for self-attention, ~ n and ~ d^2 for the
recurrent and convolutional layers; depth flat for attention and convolutions, linear for
the recurrent cells, logarithmic for the associative scan; path length constant for
attention, linear for recurrences, ~ n/k contiguous, ~ log_k n dilated, ~ n/r restricted.
Bad input ends with one line on stderr and exit code 1.
"""

import os
import sys

# LLVM's optimisation level only: compiles take about half the time, and the HLO that
# FLOPs and memory are read from is unchanged (tests/test_table1.py checks equal numbers).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=0").strip()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from seqscale.studies import table1  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for table1.md, results.json, plots.")
_QUICK = flags.DEFINE_bool("quick", False, "A CPU-minute smoke run (small n and d).")
_N_VALUES = flags.DEFINE_list("n_values", None, "Sequence lengths n (at the fixed d).")
_D_VALUES = flags.DEFINE_list("d_values", None, "Widths d (at the fixed n).")
_LAYERS = flags.DEFINE_list("layers", None, f"Layer types; default all: {','.join(table1.LAYERS)}")


def _ints(flag: str, values: list[str] | None) -> tuple[int, ...] | None:
  try:
    return None if values is None else tuple(int(v) for v in values)
  except ValueError:
    raise ValueError(f"--{flag}={','.join(values)}: must be a comma-separated list of "
                     "ints >= 2") from None


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  try:
    config = table1.make_config(_QUICK.value, _ints("n_values", _N_VALUES.value),
                                _ints("d_values", _D_VALUES.value), _LAYERS.value)
    table1.run(config, _WORKDIR.value)
  except ValueError as e:
    print("error: " + " ".join(str(e).split()), file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
