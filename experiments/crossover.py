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

import sys

from absl import app
from absl import flags
from absl import logging

from seqscale.studies import crossover

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (results.json, table, plot).")
_QUICK = flags.DEFINE_bool("quick", False, "T up to 4,096 instead of 65,536.")
_MAX_T = flags.DEFINE_integer("max_t", None, "Longest T (default 65,536; 4,096 with --quick).")
_BATCH = flags.DEFINE_integer("batch", 4, "B, the batch size.")
_WIDTH = flags.DEFINE_integer("width", 64, "D, the number of channels.")
_CHUNK = flags.DEFINE_integer("chunk_size", 64, "Steps per chunk in mode chunked.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per measurement (median reported).")


def _fail(message: str, code: int) -> None:
  print("error: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
  sys.exit(code)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}", 2)
  max_t = _MAX_T.value or (4096 if _QUICK.value else 65_536)
  from seqscale import outputs  # pylint: disable=g-import-not-at-top
  try:
    ts = crossover.crossover_lengths(max_t)
    settings = {"ts": ts, "B": _BATCH.value, "D": _WIDTH.value, "chunk_size": _CHUNK.value,
                "repeats": _REPEATS.value, "dtype": "float32", "quick": _QUICK.value,
                "inputs": "a uniform in [0.9, 1), b standard normal"}
    rows = crossover.crossover(ts, B=_BATCH.value, D=_WIDTH.value, chunk_size=_CHUNK.value,
                                 repeats=_REPEATS.value, progress=logging.info)
    md = crossover.save_crossover(_WORKDIR.value, rows, settings=settings,
                                    context=outputs.run_context(seed=0, dtype="float32"))
  except ValueError as e:
    _fail(e, 1)
  print(md, flush=True)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
