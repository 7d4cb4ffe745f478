r"""When does the associative scan beat the sequential one? ``linear_recurrence`` over T.

  python -m experiments.crossover --workdir=/tmp/crossover            # T = 128 .. 65,536
  python -m experiments.crossover --workdir=/tmp/crossover_quick --quick  # T to 4,096

Times modes sequential, associative and chunked, forward and forward+backward, compile time
apart, at fixed B and D (flags), and writes ``results.json`` (rows and the crossover),
``results.md`` and ``crossover.png``. Hardware: CPU, 2 cores (run it on a GPU too: the
answer may differ). Measured run time on 2 cores shared with other jobs (load ~13): full
11 min (the associative mode's compiles alone take 5-18 s each at the long end), --quick
about 2 min. Expected result on CPU: sequential fastest at every T, associative 1.4-2.9x
its time, chunked mostly 1.2-2.4x (two noisy points outside).
"""

import dataclasses

from absl import flags
from absl import logging

from experiments import cli
from seqscale.studies import crossover

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (results.json, table, plot).")
_QUICK = flags.DEFINE_bool("quick", False, "T up to 4,096 instead of 65,536.")
_MAX_T = flags.DEFINE_integer("max_t", None, "Longest T (default 65,536; 4,096 with --quick).",
                              lower_bound=128)
_BATCH = flags.DEFINE_integer("batch", 4, "B, the batch size.", lower_bound=1)
_WIDTH = flags.DEFINE_integer("width", 64, "D, the number of channels.", lower_bound=1)
_CHUNK = flags.DEFINE_integer("chunk_size", 64, "Steps per chunk in mode chunked.",
                              lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per measurement (median reported).",
                                lower_bound=1)


def settings() -> crossover.Settings:
  """The study's settings from the flags."""
  changes = dict(batch=_BATCH.value, width=_WIDTH.value, chunk_size=_CHUNK.value,
                 repeats=_REPEATS.value)
  if _MAX_T.value is not None:
    changes["max_t"] = _MAX_T.value
  return dataclasses.replace(crossover.QUICK if _QUICK.value else crossover.Settings(),
                             **changes)


def main(s: crossover.Settings, workdir: str) -> None:
  print(crossover.run(s, workdir, progress=logging.info)["markdown"], flush=True)


if __name__ == "__main__":
  cli.run(main, settings)
