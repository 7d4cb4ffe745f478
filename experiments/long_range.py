r"""Long-range dependencies: adding problem and copy memory at T = 100 .. 1000, six models.

  python -m experiments.long_range --workdir=/tmp/long_range
  python -m experiments.long_range --workdir=/tmp/lr_quick --quick   # T 20, 40; lstm, transformer
  python -m experiments.long_range --workdir=/tmp/lr --tasks=copy_memory --lengths=100,200 \
      --models=transformer,lstm --seeds=3 --max_steps=5000 --max_train_s=0

For every (task, T, model, seed): train (hidden 64; lstm/gru 1 layer, mingru/lru 2 layers in
associative-scan mode, causal transformer 2 layers 4 heads, wavenet ceil(log2(T + 20))
dilated layers so its receptive field covers the sequence) with early stopping, and report
solved (held-out loss < 1/10 of the baseline), steps and training seconds to solve, final
loss. Writes ``long_range.md`` (also printed), ``results.json``, ``adding_problem.png``,
``copy_memory.png`` and ``cells/*.json``; rerunning the same command resumes (finished cells
are skipped).

Hardware: CPU, 2 cores. Default budget per cell: 3000 steps or 15 s of training, whichever
comes first (the stop reason says which), batch 16, an evaluation on 64 held-out sequences
every 100 steps, Adam 1e-3. A pure step budget that fits 35 min would be ~25 steps: at
T = 1000 one step costs 0.1-2.4 s. Measured ms/step at T = 1000, batch 16, 2 cores shared
with other jobs (load 2.5-5.8), copy memory / adding: lstm 559 / 155, gru 391 / 116,
mingru 715 / 302, lru 1134 / 623, wavenet (10 layers) 1522 / 980, transformer 2384 / 1766;
at T = 100 (load ~3): lstm 14-23, mingru 15-22, transformer 38-104. Compile (train + eval
step, once per (task, T, model), shared by the seeds): 3.5-11 s at T = 100, 4-36 s at
T = 1000 (mingru and lru slowest) under that load.
Estimated run time of the default (96 cells, 48 compilations) on 2 idle cores: about
30-35 min (at most 96 x 15 s training, ~48 x 7 s compiling, ~2 min evaluating and
generating data); on loaded cores (load ~5) about 40 min. Not yet run in full.
--quick (8 cells): measured 105 s with load 3.7-5 (55 s of it compiling); a rerun on the
same workdir resumes everything in 6 s.
Expected result (measured at T = 100, 1 seed, default budget, load ~3): adding solved by
lstm (1000 steps, 14 s), transformer (200 steps, 7.5 s) and mingru (600 steps, 9 s); copy
memory not solved in 15 s by any of them (loss / baseline ~1.0). Longer T: expect fewer
solved; an unsolved cell is reported as such with its stop reason (max_steps, max_train_s
or nan). For a study without the time cap: --max_train_s=0 --max_steps=N.
"""

from absl import flags

from experiments import cli
from seqscale.studies import long_range

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (table, results.json, PNGs).")
_TASKS = flags.DEFINE_list("tasks", None, "Tasks (default: adding_problem,copy_memory).")
_LENGTHS = cli.DEFINE_integer_list("lengths", None, "T values (default: 100,200,500,1000).",
                                   lower_bound=2)
_MODELS = flags.DEFINE_list("models", None,
                            "Models (default: lstm,gru,wavenet,transformer,mingru,lru).")
_SEEDS = flags.DEFINE_integer("seeds", None, "Seeds per (task, T, model) (default 2).",
                              lower_bound=1)
_MAX_STEPS = flags.DEFINE_integer("max_steps", None, "Training steps at most per cell "
                                  "(default 3000).", lower_bound=1)
_MAX_TRAIN_S = flags.DEFINE_float("max_train_s", None, "Training seconds at most per cell "
                                  "(default 15; 0: no limit).", lower_bound=0)
_EVAL_EVERY = flags.DEFINE_integer("eval_every", None, "Steps between held-out evaluations "
                                   "(default 100).", lower_bound=1)
_QUICK = flags.DEFINE_bool("quick", False, "Tiny run for tests: T 20, 40; lstm, transformer.")
cli.check_names(_TASKS, long_range.TASKS)
cli.check_names(_MODELS, long_range.MODELS)


def settings() -> long_range.Settings:
  """The study's settings from the flags."""
  return long_range.make_settings(
      _QUICK.value, tasks=_TASKS.value, lengths=_LENGTHS.value, models=_MODELS.value,
      seeds=_SEEDS.value, max_steps=_MAX_STEPS.value, max_train_s=_MAX_TRAIN_S.value,
      eval_every=_EVAL_EVERY.value)


def main(s: long_range.Settings, workdir: str) -> None:
  print(long_range.run(s, workdir)["markdown"], flush=True)


if __name__ == "__main__":
  cli.run(main, settings)
