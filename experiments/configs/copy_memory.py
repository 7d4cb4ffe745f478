r"""copy_memory (Arjovsky, Shah & Bengio 2016): recall 10 symbols after a delay of T blanks.

Sequences of T + 20 tokens; every position counts. The memoryless baseline (blanks,
then a uniform guess over the 8 symbols) has cross-entropy 10 ln(8) / (T + 20).
A causal Transformer looks straight back T + 10 positions; an LSTM (:lstm) stays
near the baseline for a long while, as in the paper.

Command:
  python -m experiments.train --config=experiments/configs/copy_memory.py \
      --workdir=/tmp/copy_memory
  python -m experiments.train --config=experiments/configs/copy_memory.py:quick \
      --workdir=/tmp/copy_memory_quick
  # other models: copy_memory.py:<model> or :quick,<model> with <model> in MODELS
  # (e.g. :quick,lstm); any field: --config.<field>=<value>
Hardware: CPU, 2 cores (a GPU or TPU is faster).
Model: transformer unless the config argument names another.
Expected run time (2 CPU cores): full about 10 min (estimated); quick about 40 s.
Expected result: full (estimated, not yet measured): cross-entropy far below the baseline
  0.058 at T = 100. quick (measured): test accuracy 1.00 at T = 10 (baseline
  cross-entropy 0.69); the 2x split is not solved (about 0.54: the attention
  offset is learned for one T).
"""

import ml_collections

from experiments.configs import common

# Constructor keywords per model; the config argument picks one (default "transformer").
MODELS = common.preset_models("transformer", "lstm", "lru")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment. ``arg``: ``quick`` (the CPU-minute variant) and/or a name in ``MODELS``,
  comma-separated, e.g. ``quick,lstm``."""
  model, quick = common.parse_arg(arg, MODELS, default="transformer")
  c = common.base_config("copy_memory", model, MODELS[model],
                         length=100)  # the delay T (sequences of T + 20); evaluated at T, 2T, 4T
  c.batch_size, c.num_steps, c.eval_every = 64, 5_000, 1_000
  c.optimizer.warmup_steps = 200
  if quick:
    c.task.update(length=10, num_eval=500)
    c.update(batch_size=32, num_steps=2_000, eval_every=0)
  return c
