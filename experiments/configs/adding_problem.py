r"""adding_problem (Hochreiter & Schmidhuber 1997, in the form of Le et al. 2015):
add the two marked values.

Inputs are [value, marker] pairs (features, linearly mapped to in_features); the
target is the sum of the two values whose marker is 1. Always predicting the mean
gives MSE 1/6 = 0.167, the baseline. A recurrent model knows the answer at the last
position, so pooling takes that one.

Command:
  python -m experiments.train --config=experiments/configs/adding_problem.py \
      --workdir=/tmp/adding_problem
  python -m experiments.train --config=experiments/configs/adding_problem.py:quick \
      --workdir=/tmp/adding_problem_quick
  # other models: adding_problem.py:<model> or :quick,<model> with <model> in MODELS
  # (e.g. :quick,lru); any field: --config.<field>=<value>
Hardware: CPU, 2 cores (a GPU or TPU is faster).
Model: lstm unless the config argument names another.
Expected run time (2 CPU cores): full about 10 min (estimated); quick about 30 s.
Expected result: full (estimated, not yet measured): test MSE < 0.01 at T = 200, far below
  the 0.167 baseline. quick (measured): test MSE about 0.0001 at T = 50, about 0.02
  at 2x and 0.1 at 4x (the baseline is 0.167 at every length).
"""

import ml_collections

from experiments.configs import common

# Constructor keywords per model; the config argument picks one (default "lstm").
MODELS = common.preset_models("lstm", "gru", "lru", "transformer")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment. ``arg``: ``quick`` (the CPU-minute variant) and/or a name in ``MODELS``,
  comma-separated, e.g. ``quick,lru``."""
  model, quick = common.parse_arg(arg, MODELS, default="lstm")
  c = common.base_config("adding_problem", model, MODELS[model],
                         length=200)  # sequence length T; evaluated at T, 2T and 4T
  c.model.pooling = "last"  # the answer is known at the last valid position
  c.batch_size, c.num_steps, c.eval_every = 64, 10_000, 2_000
  c.optimizer.update(learning_rate=3e-3, warmup_steps=200)
  if quick:
    c.task.update(length=50, num_eval=500)
    c.model.hparams.hidden_features = 64
    c.update(batch_size=32, num_steps=3_000, eval_every=0)
  return c
