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

import os
import sys

from absl import app
from absl import flags
from absl import logging

from seqscale.studies import running_sum

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (results.json, table, plot).")
_QUICK = flags.DEFINE_bool("quick", False, "Small sweep: n up to 4,096.")
_MAX_N = flags.DEFINE_integer("max_n", None, "Longest n (default 100,000; 4,096 with --quick).")
_ATTENTION_MAX_N = flags.DEFINE_integer(
    "attention_max_n", running_sum.DEFAULT_ATTENTION_MAX_N,
    "Attention is not run above this n (its [n, n] scores are O(n^2) memory).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per measurement (median reported).")
_TRAIN = flags.DEFINE_bool("train", True, "Train lstm, mingru and transformer on running_sum.")
_TRAIN_CONFIG = flags.DEFINE_enum("train_config", "quick", ["quick", "full"],
                                  "Variant of experiments/configs/running_sum.py to train.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 0, "Training steps; 0: the config's.")

# The models trained, each with the config's hparams plus these.
TRAIN_MODELS = {
    "lstm": {},
    "mingru": {"mode": "associative"},
    "transformer": {"causal": True, "num_layers": 2},
}


def _fail(message: str, code: int) -> None:
  print("error: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
  sys.exit(code)


def _train(workdir: str, variant: str, steps: int) -> list[dict]:
  from experiments.configs import running_sum as config_lib  # pylint: disable=g-import-not-at-top
  from seqscale import train  # pylint: disable=g-import-not-at-top
  rows = []
  for name, overrides in TRAIN_MODELS.items():
    config = config_lib.get_config("quick" if variant == "quick" else None)
    config.model.name = name
    config.model.hparams.update(overrides)
    if steps:
      config.num_steps = steps
      config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, steps // 10)
      config.checkpoint_every = steps
    results = train.train_and_evaluate(config, os.path.join(workdir, "train", name))
    rows.append(running_sum.training_row(name, config.model.hparams.to_dict(), results))
  return rows


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}", 2)
  if not _WORKDIR.value:
    _fail("--workdir is required (a directory, existing or new)", 2)
  max_n = _MAX_N.value or (4096 if _QUICK.value else 100_000)
  if _TRAIN_STEPS.value < 0:
    _fail(f"--train_steps={_TRAIN_STEPS.value}; must be >= 0 (0: the config's)", 2)
  from seqscale import outputs  # pylint: disable=g-import-not-at-top
  try:
    ns = running_sum.sweep_lengths(max_n)
    demo = running_sum.seed_demo()
    print(running_sum.seed_table(demo), flush=True)
    rows, skipped = running_sum.sweep(ns, attention_max_n=_ATTENTION_MAX_N.value,
                                      repeats=_REPEATS.value, progress=logging.info)
    exact = running_sum.exactness(max_n)
    settings = {"max_n": max_n, "ns": ns, "attention_max_n": _ATTENTION_MAX_N.value,
                "repeats": _REPEATS.value, "quick": _QUICK.value, "inputs": "digits 0..9",
                "seed": 0, "train": _TRAIN.value, "train_config": _TRAIN_CONFIG.value,
                "train_steps": _TRAIN_STEPS.value, "train_models": TRAIN_MODELS}
    save = lambda training: running_sum.save_running_sum(
        _WORKDIR.value, demo=demo, rows=rows, skipped=skipped, exact=exact, training=training,
        settings=settings, context=outputs.run_context(seed=0))
    md = save([])
    if _TRAIN.value:
      md = save(_train(_WORKDIR.value, _TRAIN_CONFIG.value, _TRAIN_STEPS.value))
  except ValueError as e:
    _fail(e, 1)
  print(md[md.index("Sequential depth ("):], flush=True)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
