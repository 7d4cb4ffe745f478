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
On a CPU with one device the sharding section forces 2 host devices in a subprocess.
Expected result: the seed's [2, 7, 10, 17] three ways; sequential depth 2n + 1 (scan),
~2 log2 n (associative scan), 14 (attention); attention FLOPs ~n^2 and depth O(1), LSTM
depth O(n); at a fixed number of tokens per step the CPU time of lstm, wavenet and mingru
stays flat from T = 64 to 1,024 while the transformer's grows 2.5x (its n^2 scores);
attention FLOPs per device x0.5 on 2 devices,
LSTM critical path x1.0; in 1,000 steps only the LSTM learns running_sum (measured: 0.98
at the training length, 0.87 at 4x; wavenet, transformer, mingru 0.13-0.31, chance 0.10).
Bad input ends with one ``error:`` line on stderr and exit code 1 (2 for usage errors).
"""

import sys

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (overview.md, results.json, "
                               "plots, train/).")
_QUICK = flags.DEFINE_bool("quick", False, "A smoke run in well under a minute (tiny sizes).")
_SECTIONS = flags.DEFINE_list("sections", None, "Sections to run (default all): running_sum, "
                              "table1, step_time, sharding, training.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", None, "Training steps per model "
                                    "(default 1,000; 20 with --quick).")
_TRAIN_MODELS = flags.DEFINE_list("train_models", ["lstm", "wavenet", "transformer", "mingru"],
                                  "Models trained on running_sum (names in "
                                  "experiments/configs/running_sum.py MODELS).")
_SHARDING_DEVICES = flags.DEFINE_integer("sharding_devices", 2, "Devices of the sharding "
                                         "check (forced host devices on a CPU).")

DEFAULT_TRAIN_STEPS = 1000
QUICK_TRAIN_STEPS = 20
# Peak learning rates (measured, 1,000 steps of running_sum:quick): the LSTM reaches 0.99
# at 1e-2 but only 0.32 at the config's 3e-3; the Transformer does better at 3e-3 (0.31)
# than at 1e-2 (0.13); wavenet and mingru stay near chance (0.13-0.18) at either.
LEARNING_RATES = {"lstm": 1e-2, "wavenet": 1e-2, "mingru": 1e-2, "transformer": 3e-3}


def _fail(message: str, code: int = 1) -> None:
  print("error: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
  sys.exit(code)


def train_configs(models: list[str], steps: int, quick: bool) -> dict:
  """running_sum ``:quick`` configs, one per model, trained for ``steps`` steps."""
  from experiments.configs import running_sum as config_lib  # pylint: disable=g-import-not-at-top
  configs = {}
  for name in models:
    config = config_lib.get_config(f"quick,{name}")
    config.num_steps = steps
    config.optimizer.learning_rate = LEARNING_RATES.get(name, config.optimizer.learning_rate)
    config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, max(steps // 10, 1))
    config.checkpoint_every = steps
    config.log_every = max(1, min(config.log_every, steps // 4))
    config.parallel.num_devices = 1
    if quick:
      config.task.num_train, config.task.num_eval = 256, 64
      config.task.length, config.batch_size, config.eval_batch_size = 8, 8, 16
    configs[name] = config
  return configs


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}", 2)
  if not _WORKDIR.value:
    _fail("--workdir is required (a directory, existing or new)", 2)
  import dataclasses  # pylint: disable=g-import-not-at-top
  from seqscale.studies import overview  # pylint: disable=g-import-not-at-top
  from seqscale.studies import overview_report  # pylint: disable=g-import-not-at-top
  from seqscale import outputs  # pylint: disable=g-import-not-at-top
  settings = overview.QUICK if _QUICK.value else overview.Settings()
  steps = _TRAIN_STEPS.value
  if steps is None:
    steps = QUICK_TRAIN_STEPS if _QUICK.value else DEFAULT_TRAIN_STEPS
  if steps < 1:
    _fail(f"--train_steps={steps}: must be an int >= 1")
  try:
    settings = dataclasses.replace(
        settings, sections=tuple(_SECTIONS.value or overview.SECTIONS),
        sharding_devices=_SHARDING_DEVICES.value)
    settings.check()
    configs = None
    if "training" in settings.sections:
      configs = train_configs(_TRAIN_MODELS.value, steps, _QUICK.value)
    from seqscale import train  # pylint: disable=g-import-not-at-top
    results = overview.run(settings, _WORKDIR.value, train_configs=configs,
                           train_fn=train.train_and_evaluate,
                           context=outputs.run_context(seed=0, quick=_QUICK.value),
                           progress=lambda line: print(line, flush=True))
  except ValueError as e:
    _fail(e)
  print("\n" + overview_report.summary_table(results["summary"]), flush=True)
  print(f"wrote {_WORKDIR.value}/overview.md, results.json and plots "
        f"({results['seconds']['total']:.0f} s)", flush=True)


if __name__ == "__main__":
  app.run(main)
