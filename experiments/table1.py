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
Bad input (flags, settings, --workdir) ends with one ``error:`` line on stderr and exit code
2, before any work; a failure while running, exit code 1 (``experiments.cli``).
"""

import os

# LLVM's optimisation level only: compiles take about half the time, and the HLO that
# FLOPs and memory are read from is unchanged (tests/test_table1.py checks equal numbers).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=0").strip()

from absl import flags  # noqa: E402

from experiments import cli  # noqa: E402
from seqscale.studies import table1  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for table1.md, results.json, plots.")
_QUICK = flags.DEFINE_bool("quick", False, "A CPU-minute smoke run (small n and d).")
_N_VALUES = cli.DEFINE_integer_list("n_values", None, "Sequence lengths n (at the fixed d).",
                                    lower_bound=2)
_D_VALUES = cli.DEFINE_integer_list("d_values", None, "Widths d (at the fixed n).",
                                    lower_bound=2)
_LAYERS = flags.DEFINE_list("layers", None, f"Layer types; default all: {','.join(table1.LAYERS)}")
cli.check_names(_LAYERS, table1.LAYERS)


def settings() -> table1.Settings:
  """The study's settings from the flags; the d sweep runs at the largest n."""
  return table1.make_settings(_QUICK.value, _N_VALUES.value, _D_VALUES.value, _LAYERS.value)


def main(s: table1.Settings, workdir: str) -> None:
  table1.run(s, workdir)


if __name__ == "__main__":
  cli.run(main, settings)
