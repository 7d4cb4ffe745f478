r"""running_sum: the running sum of digits (mod 10) at every position.

The seed's sequential addition. An LSTM needs one base-10 counter in its state;
attention has to count and take a remainder within a few parallel layers.

Command:
  python -m experiments.train --config=experiments/configs/running_sum.py \
      --workdir=/tmp/running_sum
  python -m experiments.train --config=experiments/configs/running_sum.py:quick \
      --workdir=/tmp/running_sum_quick
  # other models: running_sum.py:<model> or :quick,<model> with <model> in MODELS
  # (e.g. :quick,transformer); any field: --config.<field>=<value>
Hardware: CPU, 2 cores (a GPU or TPU is faster).
Model: lstm unless the config argument names another.
Expected run time (2 CPU cores): full 16 min measured on busy shared cores (less
  when idle); quick about 30 s (data generation and compilation included; 65 s
  on the busy cores).
Expected result: (measured) full: per-position accuracy 1.000 at length 64, 128 and 256.
  quick: 1.000 at the train length 32, 0.999 at 2x (64), 0.996 at 4x; chance is
  0.1 (cross-entropy baseline ln 10 = 2.30).
"""

from typing import Any

import ml_collections

from experiments.configs import common

# Constructor keywords per model; the config argument picks one (default "lstm").
MODELS = {
    **common.preset_models("lstm", "transformer", "lru"),
    # 8 dilated layers (kernel 2): a receptive field of 256 positions covers 4x the length.
    "wavenet": dict(in_features=64, hidden_features=128, num_layers=8),
    **common.preset_models("mingru"),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment. ``arg``: ``quick`` (the CPU-minute variant) and/or a name in ``MODELS``,
  comma-separated, e.g. ``quick,transformer``."""
  model, quick = common.parse_arg(arg, MODELS, default="lstm")
  return experiment(model, MODELS[model], quick)


def experiment(model: str, hparams: dict[str, Any], quick: bool) -> ml_collections.ConfigDict:
  """The running sum with any model (``flstm.py`` and ``moe.py`` use it too); ``quick``
  halves the length and the widths ``in_features`` and ``hidden_features``."""
  c = common.base_config("running_sum", model, hparams,
                         length=64,  # train length T; evaluated at T, 2T and 4T
                         base=10)  # digits 0..base-1; target = running sum mod base
  c.batch_size, c.num_steps, c.eval_every = 64, 5_000, 1_000
  c.optimizer.update(learning_rate=3e-3, warmup_steps=200)
  if quick:
    c.task.update(length=32, num_eval=500)
    c.model.hparams.update(in_features=32, hidden_features=64)
    c.update(batch_size=32, num_steps=3_000, eval_every=0)
  return c
