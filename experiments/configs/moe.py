r"""moe: sparsely-gated mixture of experts (Shazeer et al. 2017) between stacked LSTMs, or
as the Transformer's feed-forward, on the running sum.

`lstm_moe`: LSTM -> h + MoE(h) -> LSTM, the MoE's E experts each a ReLU feed-forward of
width F, k of them per position chosen by noisy top-k gating, each expert taking at most
capacity_factor * k * N / E of a batch's N positions (the rest pass through the residual).
`transformer_moe`: a causal Transformer whose every second feed-forward is such a mixture.
Each MoE records Shazeer's load-balancing loss (`seqscale.models.moe.auxiliary_loss(model)`);
the trainer adds it to the objective only where it has the hook for it (see the README).
Experts can be sharded over a mesh axis: `seqscale.models.moe.shard_experts`.

Command:
  python -m experiments.train --config=experiments/configs/moe.py \
      --workdir=/tmp/moe
  python -m experiments.train --config=experiments/configs/moe.py:quick \
      --workdir=/tmp/moe_quick
  # the models: moe.py:<model> or :quick,<model>, <model> in MODELS (lstm_moe,
  # transformer_moe); any field: --config.<field>=<value>, e.g.
  # --config.model.hparams.num_experts=16
Hardware: CPU, 2 cores (a GPU or TPU is faster).
Model: lstm_moe unless the config argument names another.
Expected run time (2 shared CPU cores): full about 19 min; quick about 30 s (with data
  generation and compilation).
Expected result: full (lstm_moe): accuracy per position 1.000 at T = 64, 128 and 256.
  quick: lstm_moe 1.000 at T = 32, 64 and 128; transformer_moe (quick,transformer_moe) only
  about 0.50 at T = 32 (a 2-layer Transformer has to count and take the remainder).
  Chance is 0.1 (cross-entropy ln 10 = 2.30).
"""

import ml_collections

from experiments.configs import common
from experiments.configs import running_sum

MOE = dict(num_experts=8, k=2, capacity_factor=2.0, importance_weight=0.1, load_weight=0.1)
# Constructor keywords per model; the config argument picks one (default "lstm_moe").
MODELS = {
    "lstm_moe": dict(num_layers=2, **MOE),  # LSTM -> MoE -> LSTM
    "transformer_moe": dict(num_layers=2, num_heads=4, causal=True, moe_every=2, **MOE),
}
# Widths: token embeddings, D, and each expert's hidden width F.
WIDTHS = dict(in_features=64, hidden_features=128, ff_features=256)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment. ``arg``: ``quick`` (the CPU-minute variant) and/or a name in ``MODELS``,
  comma-separated, e.g. ``quick,transformer_moe``."""
  model, quick = common.parse_arg(arg, MODELS, default="lstm_moe")
  c = running_sum.experiment(model, {**MODELS[model], **WIDTHS}, quick)
  if quick:
    c.model.hparams.ff_features = 128
    c.num_steps = 1_500
  return c
