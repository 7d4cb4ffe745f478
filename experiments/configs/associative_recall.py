r"""associative_recall: key-value pairs, then a query key; answer its value.

Each sequence draws its own dictionary; the query comes last, so a causal model
answers at the last valid position (pooling 'last'). Chance accuracy is
1 / num_values.

Command:
  python -m experiments.train --config=experiments/configs/associative_recall.py \
      --workdir=/tmp/associative_recall
  python -m experiments.train --config=experiments/configs/associative_recall.py:quick \
      --workdir=/tmp/associative_recall_quick
  # other models: associative_recall.py:<model> or :quick,<model> with <model> in MODELS
  # (e.g. :quick,transformer); any field: --config.<field>=<value>
Hardware: CPU, 2 cores (a GPU or TPU is faster).
Model: lstm unless the config argument names another.
Expected run time (2 CPU cores): full about 15 min (estimated); quick about 30 s.
Expected result: full (estimated, not yet measured): test accuracy well above chance (1/16)
  at T = 64. quick (measured): test accuracy about 0.45 at T = 16 with 8 keys and
  values (chance 0.125).
"""

import ml_collections

from experiments.configs import common

# Constructor keywords per model; the config argument picks one (default "lstm").
MODELS = common.preset_models("lstm", "transformer", "lru")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment. ``arg``: ``quick`` (the CPU-minute variant) and/or a name in ``MODELS``,
  comma-separated, e.g. ``quick,transformer``."""
  model, quick = common.parse_arg(arg, MODELS, default="lstm")
  c = common.base_config("associative_recall", model, MODELS[model],
                         length=64,  # sequence length T; evaluated at T, 2T and 4T
                         num_keys=16,  # distinct keys
                         num_values=16)  # distinct values (the classes)
  c.model.pooling = "last"  # the query is the last valid position
  c.batch_size, c.num_steps, c.eval_every = 64, 10_000, 2_000
  c.optimizer.update(learning_rate=3e-3, warmup_steps=200)
  if quick:
    c.task.update(length=16, num_keys=8, num_values=8, num_eval=500)
    c.update(batch_size=32, num_steps=2_000, eval_every=0)
  return c
