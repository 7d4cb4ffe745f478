r"""listops (Nangia & Bowman 2018, as in Long Range Arena): evaluate nested MAX / MIN /
MED / SM expressions over digits; 10-way classification.

A Transformer encoder (non-causal) reads the whole expression; its outputs are
averaged over valid positions and classified. LRA reports about 37% test accuracy
for Transformers at length 2,000; chance is 10%.

Command:
  python -m experiments.train --config=experiments/configs/listops.py \
      --workdir=/tmp/listops
  python -m experiments.train --config=experiments/configs/listops.py:quick \
      --workdir=/tmp/listops_quick
  # other models: listops.py:<model> or :quick,<model> with <model> in MODELS
  # (e.g. :quick,lstm); any field: --config.<field>=<value>
Hardware: CPU, 2 cores (a GPU or TPU is faster).
Model: transformer unless the config argument names another.
Expected run time (2 CPU cores): full about 20 min (estimated); quick about 40 s.
Expected result: full (estimated, not yet measured): test accuracy around 0.4 at T = 256.
  quick (measured): test accuracy about 0.35 at T = 64, clearly above the 0.10
  chance.
"""

import ml_collections

from experiments.configs import common

# Constructor keywords per model; the config argument picks one (default "transformer").
MODELS = common.preset_models("transformer", "lstm")
MODELS["transformer"]["causal"] = False  # an encoder: sees the whole sequence


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment. ``arg``: ``quick`` (the CPU-minute variant) and/or a name in ``MODELS``,
  comma-separated, e.g. ``quick,lstm``."""
  model, quick = common.parse_arg(arg, MODELS, default="transformer")
  c = common.base_config("listops", model, MODELS[model],
                         length=256,  # maximum expression length T; evaluated at T, 2T and 4T
                         max_depth=10,  # nesting depth limit
                         max_args=10)  # arguments per operator
  c.num_steps, c.eval_every = 5_000, 1_000
  c.optimizer.warmup_steps = 500
  if quick:
    c.task.update(length=64, num_eval=500)
    c.update(num_steps=800, eval_every=0)
  return c
