r"""The seed's running sum: three ways on [2, 5, 3, 7], then n = 4 .. 100,000, then training.

  python -m experiments.running_sum --workdir=/tmp/running_sum
  python -m experiments.running_sum --workdir=/tmp/rs_quick --quick   # n to 4,096
  python -m experiments.running_sum --workdir=/tmp/rs --max_n=1024 --notrain

Writes ``results.json`` (one row per measurement: method, n, sequential_depth, flops, run_s,
compile_s), ``results.md``, ``running_sum.png`` and, with training, ``train/<model>/``.
Training runs ``lstm``, ``mingru`` (associative mode) and a causal ``transformer`` through
``seqscale.train.train_and_evaluate`` with ``experiments/configs/running_sum.py:quick``
(``--train_config=full`` for the full variant), only the model changed; a workdir holding a
finished run resumes at its end.
Hardware: CPU, 2 cores. Measured run time, 2 cores shared with other jobs (load ~14): about
8 min: the sweep 4 min (attention at n = 16,384 the slowest point: 10 s a run, 2 GiB of
scores), training 70 s (lstm), 45 s (mingru), 120 s (transformer). --quick --train_steps=20
about 1 min. Expected result: depth 2n + 1 (rnn_scan), 2 log2 n - 1 (associative_scan),
14 at every n (attention); integer sums exact; quick training: lstm ~1.00 at T=32 and
4x, mingru ~0.13 (a real, positive decay cannot count mod 10), transformer ~0.56 / 0.22.
"""

import dataclasses

from absl import flags
from absl import logging

from experiments import cli
from experiments.configs import running_sum as running_sum_config
from seqscale.studies import running_sum

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (results.json, table, plot).")
_QUICK = flags.DEFINE_bool("quick", False, "Small sweep: n up to 4,096.")
_MAX_N = flags.DEFINE_integer("max_n", None, "Longest n (default 100,000; 4,096 with --quick).",
                              lower_bound=4)
_ATTENTION_MAX_N = flags.DEFINE_integer(
    "attention_max_n", running_sum.DEFAULT_ATTENTION_MAX_N,
    "Attention is not run above this n (its [n, n] scores are O(n^2) memory).", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per measurement (median reported).",
                                lower_bound=1)
_TRAIN = flags.DEFINE_bool("train", True, "Train " + ", ".join(running_sum.TRAIN_MODELS)
                           + " on running_sum.")
_TRAIN_CONFIG = flags.DEFINE_enum("train_config", "quick", ["quick", "full"],
                                  "Variant of experiments/configs/running_sum.py to train.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", None, "Training steps per model (default: "
                                    "the config's).", lower_bound=1)


def settings() -> running_sum.Settings:
  """The study's settings from the flags; the trainer configs from running_sum.py."""
  changes = dict(attention_max_n=_ATTENTION_MAX_N.value, repeats=_REPEATS.value,
                 train_steps=_TRAIN_STEPS.value)
  if _MAX_N.value is not None:
    changes["max_n"] = _MAX_N.value
  if _TRAIN.value:
    variant = "quick," if _TRAIN_CONFIG.value == "quick" else ""
    changes["train_configs"] = {name: running_sum_config.get_config(variant + name)
                                for name in running_sum.TRAIN_MODELS}
  return dataclasses.replace(running_sum.QUICK if _QUICK.value else running_sum.Settings(),
                             **changes)


def main(s: running_sum.Settings, workdir: str) -> None:
  print(running_sum.run(s, workdir, progress=logging.info)["markdown"], flush=True)


if __name__ == "__main__":
  cli.run(main, settings)
