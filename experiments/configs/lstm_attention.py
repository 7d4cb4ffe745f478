r"""lstm_attention: an RNN encoder-decoder with attention (Bahdanau et al. 2014; Luong et al.
2015) on algorithmic reversal, against the same encoder-decoder without attention.

A bidirectional LSTM reads the source; an LSTM decoder writes the reversed source (teacher
forced), reading the encoder states through additive attention, multiplicative attention, or
not at all (then only the encoder's final state reaches the decoder, as in Sutskever et al.
2014). Evaluated at the training source length S and at 2S and 4S; `accuracy` is per target
token, `seq_accuracy` whole targets. Greedy and beam search decoding:
`seqscale.models.decoding.decode_greedy` / `decode_beam`.

Command:
  python -m experiments.train --config=experiments/configs/lstm_attention.py \
      --workdir=/tmp/lstm_attention
  python -m experiments.train --config=experiments/configs/lstm_attention.py:quick \
      --workdir=/tmp/lstm_attention_quick
  # the variants: lstm_attention.py:<variant> or :quick,<variant>, <variant> in MODELS
  # (additive, multiplicative, none); any field: --config.<field>=<value>
Hardware: CPU, 2 cores (a GPU or TPU is faster).
Model: lstm_attention with additive attention unless the config argument names a variant.
Expected run time (2 shared CPU cores): full about 10 min; quick about 1 min (with data
  generation and compilation).
Expected result: full (additive, S = 20): per-token and whole-sequence accuracy 1.000 at
  S; 0.85 / 0.64 on test_2x and 0.45 / 0.34 on test_4x (those splits mix in sources longer
  than any seen in training, which the decoder does not generalise to). quick (S = 8):
  additive and multiplicative 1.000 / 1.000 at S, none 0.986 / 0.930. Attention vs none as
  the training length grows (quick settings, 2,000 steps, accuracy per token / sequence at
  the train length): S = 8: 1.000 / 1.000 vs 0.993 / 0.968; S = 16: 1.000 / 1.000 vs
  0.875 / 0.566; S = 32: 1.000 / 1.000 vs 0.548 / 0.120. Attention costs about 2x the FLOPs
  of a training step (B = 32, D = 64) at every S here.
"""

import ml_collections

from experiments.configs import common

# Constructor keywords per variant; the config argument picks one (default "additive").
MODELS = {
    "additive": dict(attention="additive"),  # Bahdanau: h_{t-1} queries, context into the LSTM
    "multiplicative": dict(attention="multiplicative", score="general"),  # Luong, input feeding
    "none": dict(attention="none"),  # plain seq2seq: the source only through the final state
}
# The encoder-decoder's size: token embeddings (source and target), LSTM width D (the
# encoder's output is 2D), encoder and decoder layers.
SIZE = dict(in_features=64, hidden_features=128, num_layers=1)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment. ``arg``: ``quick`` (the CPU-minute variant) and/or a name in ``MODELS``,
  comma-separated, e.g. ``quick,none``."""
  variant, quick = common.parse_arg(arg, MODELS, default="additive")
  c = common.base_config("algorithmic", "lstm_attention", {**SIZE, **MODELS[variant]},
                         problem="reverse",  # copy | reverse | sort | addition
                         length=20,  # maximum train source length S; evaluated up to S, 2S, 4S
                         base=10)  # digits
  c.batch_size, c.num_steps, c.eval_every = 64, 5_000, 1_000
  c.optimizer.update(learning_rate=3e-3, warmup_steps=200)
  if quick:
    c.task.update(length=8, num_eval=500)
    c.model.hparams.update(in_features=32, hidden_features=64)
    c.update(batch_size=32, num_steps=1_500, eval_every=0)
  return c
