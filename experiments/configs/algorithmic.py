r"""algorithmic: sequence-to-sequence reversal (or copy, sort, addition), trained short
and evaluated long, after Tensor2Tensor's algorithmic problems.

The encoder-decoder Transformer reads the source and writes the target (teacher
forced): `accuracy` is per target token, `seq_accuracy` per whole target. Sequence
models (:transformer, :lstm) train on the decoder-only form `src SEP tgt` and must be
causal, since the answer is in their input. Other problems:
--config.task.problem=copy|sort|addition.

Command:
  python -m experiments.train --config=experiments/configs/algorithmic.py \
      --workdir=/tmp/algorithmic
  python -m experiments.train --config=experiments/configs/algorithmic.py:quick \
      --workdir=/tmp/algorithmic_quick
  # other models: algorithmic.py:<model> or :quick,<model> with <model> in MODELS
  # (e.g. :quick,lstm); any field: --config.<field>=<value>
Hardware: CPU, 2 cores (a GPU or TPU is faster).
Model: transformer_seq2seq unless the config argument names another.
Expected run time (2 CPU cores): full about 15 min (estimated); quick about 40 s.
Expected result: full (estimated, not yet measured): whole-target accuracy near 1.0 at S = 20,
  lower on the 2x and 4x splits. quick (measured): accuracy 1.00 at S = 8, about
  0.38 per token at 2x (sinusoidal positions do not carry the learned reversal to
  unseen lengths).
"""

import ml_collections

from experiments.configs import common

# Constructor keywords per model; the config argument picks one (default "transformer_seq2seq").
MODELS = {
    "transformer_seq2seq": dict(in_features=64, hidden_features=64, num_layers=2,
                                num_heads=4),  # encoder-decoder: src, tgt_in -> tgt_out
    **common.preset_models("transformer",  # decoder-only form: src SEP tgt
                           "lstm"),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment. ``arg``: ``quick`` (the CPU-minute variant) and/or a name in ``MODELS``,
  comma-separated, e.g. ``quick,lstm``."""
  model, quick = common.parse_arg(arg, MODELS, default="transformer_seq2seq")
  c = common.base_config("algorithmic", model, MODELS[model],
                         problem="reverse",  # copy | reverse | sort | addition
                         length=20,  # maximum train source length S; evaluated up to S, 2S, 4S
                         base=10)  # digits
  c.batch_size, c.num_steps, c.eval_every = 64, 10_000, 2_000
  c.optimizer.warmup_steps = 500
  if quick:
    c.task.update(length=8, num_eval=500)
    c.update(batch_size=32, num_steps=1_500, eval_every=0)
  return c
