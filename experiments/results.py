r"""Regenerates RESULTS.md: runs every experiment into one workdir, then gathers their reports.

  python -m experiments.results --workdir=/tmp/seqscale_results          # everything
  python -m experiments.results --workdir=/tmp/seqscale_results --compose_only
  python -m experiments.results --workdir=/tmp/r --only=overview,pictures --out=/tmp/R.md
  python -m experiments.results --list

An experiment that finished in ``--workdir`` earlier is kept (so a stopped regeneration
resumes where it stopped); ``--rerun=NAME,...`` runs those again. Each run's output goes to
``WORKDIR/<name>.log``. Writes ``--out`` (default ``RESULTS.md`` in the repository) and
copies the plots it shows into ``docs/results/``.
Hardware: CPU, 2 cores, measured 2026-12-02: long_range 27.6 min, table1 6.7 (while a pip
install ran), running_sum 3.4, crossover 3.3, overview 3.2, neural_gpu quick 2.5, pictures
1.6, sharding 0.8, the other quick trainings 0.5-1 each: about 60 min without bench; bench
ran past 13 min without finishing (its last full run took 15 min), so over 75 min in all.
A failed experiment is reported and the others still run; the exit code is then 1.
"""

import os

from absl import flags

from experiments import cli
from experiments import launch
from seqscale.studies import results_md

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NAMES = [e.name for e in launch.EXPERIMENTS]
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the experiments write (one folder "
                               "each); kept between runs.")
_OUT = flags.DEFINE_string("out", os.path.join(_ROOT, "RESULTS.md"), "The file written.")
_DOCS = flags.DEFINE_string("docs_dir", os.path.join(_ROOT, "docs", "results"),
                            "Where the plots RESULTS.md shows are copied.")
_ONLY = flags.DEFINE_list("only", None, "Experiments to run and gather (default all; see "
                          "--list).")
_SKIP = flags.DEFINE_list("skip", [], "Experiments to leave out.")
_RERUN = flags.DEFINE_list("rerun", [], "Experiments to run again even if finished.")
_COMPOSE_ONLY = flags.DEFINE_bool("compose_only", False, "Run nothing; gather what "
                                  "--workdir holds.")
_LIST = flags.DEFINE_bool("list", False, "Print the experiments and their commands, exit.")
for _flag in (_ONLY, _SKIP, _RERUN):
  cli.check_names(_flag, _NAMES)


def settings() -> list[results_md.Experiment]:
  """The experiments chosen by --only and --skip."""
  return launch.select(_ONLY.value, _SKIP.value)


def main(experiments: list[results_md.Experiment], workdir: str | None) -> None:
  if _LIST.value:
    for e in launch.EXPERIMENTS:
      print(f"{e.name:28s} ~{e.minutes:4g} min  {e.command()}")
    return
  failed = []
  if not _COMPOSE_ONLY.value:
    failed = launch.run_missing(experiments, workdir, rerun=_RERUN.value,
                                progress=lambda line: print(line, flush=True))
  names = ",".join(e.name for e in experiments)
  regenerate = "python -m experiments.results --workdir=DIR" + (
      "" if len(experiments) == len(launch.EXPERIMENTS) else f" --only={names}")
  results_md.compose(experiments, workdir, _OUT.value, _DOCS.value, regenerate)
  done = sum(results_md.finished(workdir, e) for e in experiments)
  print(f"wrote {_OUT.value} ({done} of {len(experiments)} experiments; plots in "
        f"{_DOCS.value})", flush=True)
  if failed:
    raise RuntimeError(f"experiments {failed} failed; their output is in "
                       f"{workdir}/<name>.log")


if __name__ == "__main__":
  cli.run(main, settings, workdir=lambda: not _LIST.value)
