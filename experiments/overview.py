r"""The overview: seqscale's argument measured, in one report. The README's main job.

  python -m experiments.overview --workdir=/tmp/seqscale_overview
  python -m experiments.overview --workdir=/tmp/ov_quick --quick        # a smoke run
  python -m experiments.overview --workdir=/tmp/ov --sections=running_sum,sharding
  python -m experiments.overview --workdir=/tmp/ov --train_steps=3000 --sharding_devices=8

Writes ``overview.md`` (the summary table, one part per section, the plots), ``results.json``
(every number and the run's context), ``running_sum.png``, ``table1/`` (the compact Table 1
in full), ``step_time.png``, ``sharding.png``, ``training.png`` and ``train/<model>/`` (the
four training runs, with checkpoints: rerunning resumes them at their end), and prints a
progress line per step and the summary table at the end. See
``seqscale.studies.overview`` for what each section measures.

Hardware: CPU, 2 cores: 3.2 min measured in a fresh virtual environment with no generated
data (3.6 min in another run; see README / RESULTS.md); a GPU or TPU is faster,
and longer runs are flags away (``--train_steps``, ``--sharding_devices``; the full
experiments are ``experiments.running_sum``, ``table1``, ``bench``, ``sharding``).
Where there are fewer devices than ``--sharding_devices`` (a CPU, a one-chip Colab TPU, a
single GPU), the sharding section measures them as forced CPU host devices in a subprocess.
Expected result: the seed's [2, 7, 10, 17] three ways; sequential depth 2n + 1 (scan),
~2 log2 n (associative scan), 14 (attention); attention FLOPs ~n^2 and depth O(1), LSTM
depth O(n); at a fixed number of tokens per step the CPU time of lstm, wavenet and mingru
stays flat from T = 64 to 1,024 while the transformer's grows 2.5x (its n^2 scores);
attention FLOPs per device x0.5 on 2 devices,
LSTM critical path x1.0; in 1,000 steps only the LSTM learns running_sum (measured: 0.98
at the training length, 0.87 at 4x; wavenet, transformer, mingru 0.13-0.31, chance 0.10).
Bad input (flags, settings, --workdir) ends with one ``error:`` line on stderr and exit code
2, before any work; a failure while running, exit code 1 (``experiments.cli``). A section
that fails is reported in overview.md and results.json, the others run and are kept (each
written as soon as it finishes), and the run then ends with exit code 1 and one line naming
the failed sections.
"""

import dataclasses

from absl import flags

from experiments import cli
from experiments.configs import running_sum as running_sum_config
from seqscale.studies import overview
from seqscale.studies import overview_report

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (overview.md, results.json, "
                               "plots, train/).")
_QUICK = flags.DEFINE_bool("quick", False, "A smoke run in well under a minute (tiny sizes).")
_SECTIONS = flags.DEFINE_list("sections", None, "Sections to run (default all): "
                              + ", ".join(overview.SECTIONS) + ".")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", None, "Training steps per model "
                                    "(default 1,000; 20 with --quick).", lower_bound=1)
_TRAIN_MODELS = flags.DEFINE_list("train_models", ["lstm", "wavenet", "transformer", "mingru"],
                                  "Models trained on running_sum (names in "
                                  "experiments/configs/running_sum.py MODELS).")
_SHARDING_DEVICES = flags.DEFINE_integer("sharding_devices", 2, "Devices of the sharding "
                                         "check (forced CPU host devices where fewer exist).",
                                         lower_bound=2)
cli.check_names(_SECTIONS, overview.SECTIONS)
cli.check_names(_TRAIN_MODELS, running_sum_config.MODELS)


def settings() -> overview.Settings:
  """The study's settings from the flags; the trainer configs from running_sum.py :quick."""
  changes = dict(sections=tuple(_SECTIONS.value or overview.SECTIONS),
                 sharding_devices=_SHARDING_DEVICES.value)
  if _TRAIN_STEPS.value is not None:
    changes["train_steps"] = _TRAIN_STEPS.value
  if "training" in changes["sections"]:
    changes["train_configs"] = {name: running_sum_config.get_config(f"quick,{name}")
                                for name in _TRAIN_MODELS.value}
  return dataclasses.replace(overview.QUICK if _QUICK.value else overview.Settings(),
                             **changes)


def main(s: overview.Settings, workdir: str) -> None:
  results = overview.run(s, workdir, progress=lambda line: print(line, flush=True))
  print("\n" + overview_report.summary_table(results["summary"]), flush=True)
  print(f"wrote {workdir}/overview.md, results.json and plots "
        f"({results['seconds']['total']:.0f} s)", flush=True)
  failed = overview_report.failure_line(results)
  if failed:
    raise RuntimeError(failed)


if __name__ == "__main__":
  cli.run(main, settings)
