r"""flstm / glstm: factorized and group LSTMs (Kuchaiev & Ginsburg 2017) on the running sum,
against the LSTM at the same width.

F-LSTM writes the gate matrix [(I + D), 4D] as a product of rank r (default D/4); G-LSTM
splits the layer into G independent LSTMs of width D/G. Both cut the parameters and FLOPs
of every step; neither shortens the recurrence (step t still waits for step t-1): see
`python -m experiments.flstm_timing` for FLOPs, time and sequential depth. The running
sum (mod 10) needs one counter in the state, which fits easily in either.

Command:
  python -m experiments.train --config=experiments/configs/flstm.py \
      --workdir=/tmp/flstm
  python -m experiments.train --config=experiments/configs/flstm.py:quick \
      --workdir=/tmp/flstm_quick
  # the models: flstm.py:<model> or :quick,<model>, <model> in MODELS (flstm, glstm,
  # lstm); any field: --config.<field>=<value>, e.g. --config.model.hparams.rank=4
Hardware: CPU, 2 cores (a GPU or TPU is faster).
Model: flstm unless the config argument names another.
Expected run time (2 shared CPU cores): full about 6 min; quick about 1 min (with data
  generation and compilation).
Expected result: full (flstm, r = 32): accuracy per position 1.000 at T = 64 and 256.
  quick: flstm (r = 16) 0.998 at T = 32, 0.999 at 64, 0.996 at 128; glstm (G = 4) 0.998,
  0.983, 0.918; lstm 1.000, 0.999, 0.997. Chance is 0.1 (cross-entropy ln 10 = 2.30).
"""

import ml_collections

from experiments.configs import common
from experiments.configs import running_sum

# Constructor keywords per model (the registry names); the config argument picks one
# (default "flstm"): flstm's rank r is None = hidden_features // 4, glstm has G = 4 groups
# (widths must divide by G), lstm is the baseline at the same width.
MODELS = common.preset_models("flstm", "glstm", "lstm")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment. ``arg``: ``quick`` (the CPU-minute variant) and/or a name in ``MODELS``,
  comma-separated, e.g. ``quick,glstm``."""
  model, quick = common.parse_arg(arg, MODELS, default="flstm")
  return running_sum.experiment(model, MODELS[model], quick)
