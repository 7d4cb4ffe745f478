r"""Real text: held-out bits per character against time and FLOPs, six model families.

  python -m experiments.text_lm --workdir=/tmp/text_lm             # 1M params, ~18 min CPU
  python -m experiments.text_lm --workdir=/tmp/text_lm_quick --quick   # ~0.15M, ~3.5 min
  python -m experiments.text_lm --workdir=/tmp/text_lm_gpu --preset=gpu  # 1M and 5M, GPU
  python -m experiments.text_lm --workdir=/tmp/tl --models=lstm,transformer_lm \
      --max_train_s=60 --flop_budget=1e13

Each (family, size) cell trains a byte-level model of the Python stdlib's source until it
has used both budgets, the same for every family: ``max_train_s`` seconds of training and
``flop_budget`` training FLOPs (at most ``cap_factor`` times the seconds). Writes
``text_lm.md`` (also printed: a table of bits per character at each budget, seconds and
FLOPs to reach fixed levels, tokens/s, final test bits per character), ``text_lm.png``
(bits per character against seconds, FLOPs and steps), ``results.json`` and ``cells/``;
rerunning the same command resumes (finished cells are skipped).

Hardware: CPU, 2 cores (full: 6 cells of ~1M parameters, 100 s of training and 3e12 FLOPs
each, at most 200 s; ``--quick``: 6 cells of ~0.15M, 12 s and 1.5e11 FLOPs each). The
``gpu`` preset (both sizes, 600 s and 5e15 FLOPs per cell) is for a GPU; not run yet.
Measured run time (2 cores shared with other jobs): full 17.8 min (load average 5.8-10.8;
an earlier run at load 9-19: 20.5 min); --quick 3.5 min (load 6.5-10.8).
Measured result (full, load 5.8-10.8, so the seconds columns are noisy): held-out test bits
per character after both budgets: lru 2.61, wavenet 2.71, lstm 3.18, gru 3.25,
transformer_lm 3.31, mingru 3.44; validation bpc at the same 100 s: wavenet 2.90 ahead of
lru 3.26 and lstm 3.51; at the same 3e12 FLOPs: lru 2.75, wavenet 2.93, transformer_lm 3.43.
Every model is far from converged at these budgets (97-194 steps).
"""

from absl import flags

from experiments import cli
from seqscale.studies import text_lm

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (table, results.json, PNG).")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny run: 6 families at ~0.15M, 12 s each.")
_PRESET = flags.DEFINE_enum("preset", None, list(text_lm.PRESETS),
                            "Settings to start from (default full; --quick: quick).")
_MODELS = flags.DEFINE_list("models", None, f"Families (default: {','.join(text_lm.FAMILIES)}).")
_SIZES = flags.DEFINE_list("sizes", None, f"Sizes among {','.join(text_lm.SIZES)} "
                           "(default: the preset's).")
_MAX_TRAIN_S = flags.DEFINE_float("max_train_s", None, "Training seconds per cell (the "
                                  "wall-clock budget).", lower_bound=1e-3)
_FLOP_BUDGET = flags.DEFINE_float("flop_budget", None, "Training FLOPs per cell (the FLOP "
                                  "budget).", lower_bound=1.0)
_EVAL_EVERY_S = flags.DEFINE_float("eval_every_s", None, "Training seconds between held-out "
                                   "evaluations.", lower_bound=1e-3)
cli.check_names(_MODELS, text_lm.FAMILIES)
cli.check_names(_SIZES, tuple(text_lm.SIZES))


def settings() -> text_lm.Settings:
  """The study's settings from the flags."""
  if _QUICK.value and _PRESET.value not in (None, "quick"):
    raise ValueError(f"--quick and --preset={_PRESET.value} contradict; give one")
  return text_lm.make_settings(
      "quick" if _QUICK.value else (_PRESET.value or "full"), models=_MODELS.value,
      sizes=_SIZES.value, max_train_s=_MAX_TRAIN_S.value, flop_budget=_FLOP_BUDGET.value,
      eval_every_s=_EVAL_EVERY_S.value)


def main(s: text_lm.Settings, workdir: str) -> None:
  print(text_lm.run(s, workdir)["markdown"], flush=True)


if __name__ == "__main__":
  cli.run(main, settings)
