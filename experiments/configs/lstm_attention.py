r"""lstm_attention: an RNN encoder-decoder with attention (Bahdanau et al. 2014; Luong et al.
2015) on algorithmic reversal, against the same encoder-decoder without attention.

A bidirectional LSTM reads the source; an LSTM decoder writes the reversed source (teacher
forced), reading the encoder states through additive attention, multiplicative attention, or
not at all (then only the encoder's final state reaches the decoder, as in Sutskever et al.
2014). Evaluated at the training source length S and at 2S and 4S; `accuracy` is per target
token, `seq_accuracy` whole targets. Greedy and beam search decoding:
`seqscale.models.lstm_attention.decode_greedy` / `decode_beam`.

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

# Constructor keywords per variant; the config argument picks one (default "additive").
MODELS = {
    "additive": dict(attention="additive"),  # Bahdanau: h_{t-1} queries, context into the LSTM
    "multiplicative": dict(attention="multiplicative", score="general"),  # Luong, input feeding
    "none": dict(attention="none"),  # plain seq2seq: the source only through the final state
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment. ``arg``: ``quick`` (the CPU-minute variant) and/or a name in ``MODELS``,
  comma-separated, e.g. ``quick,none``."""
  options = [a for a in (arg or "").split(",") if a]
  unknown = [a for a in options if a != "quick" and a not in MODELS]
  if unknown:
    raise ValueError(f"config argument {arg!r}: unknown {unknown}; allowed: quick, "
                     + ", ".join(MODELS))
  variant = next((a for a in options if a in MODELS), "additive")

  c = ml_collections.ConfigDict()
  c.seed = 0  # parameter init, dropout and data order

  c.task = ml_collections.ConfigDict()
  c.task.name = "algorithmic"  # seqscale.data task
  c.task.problem = "reverse"  # copy | reverse | sort | addition
  c.task.length = 20  # maximum train source length S; evaluated up to S, 2S and 4S
  c.task.base = 10  # digits
  c.task.num_train = 10_000  # generated training sequences
  c.task.num_eval = 1_000  # generated sequences per evaluation split
  c.task.data_dir = ""  # generated data; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets

  c.model = ml_collections.ConfigDict()
  c.model.name = "lstm_attention"  # any seqscale.models name, or 'package.module:Class'
  c.model.hparams = ml_collections.ConfigDict()  # the model's constructor keywords
  c.model.hparams.in_features = 64  # token embedding width (source and target)
  c.model.hparams.hidden_features = 128  # LSTM width D (the encoder's output is 2D)
  c.model.hparams.num_layers = 1  # encoder and decoder layers
  c.model.hparams.update(MODELS[variant])
  c.model.pooling = "mean"  # unused: algorithmic is per position

  c.batch_size = 64  # global batch, split over devices and hosts
  c.eval_batch_size = 100  # evaluation batch
  c.num_steps = 5_000  # training steps
  c.log_every = 100  # steps between metrics lines
  c.eval_every = 1_000  # steps between evaluations (0: only at the end)
  c.checkpoint_every = 1_000  # steps between checkpoints (and always the last step)
  c.keep_checkpoints = 3  # checkpoints kept

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"  # adamw | adam | sgd
  c.optimizer.learning_rate = 3e-3  # peak learning rate
  c.optimizer.schedule = "cosine"  # cosine | rsqrt | constant (all with linear warmup)
  c.optimizer.warmup_steps = 200  # linear warmup steps
  c.optimizer.weight_decay = 0.0  # AdamW decay on matrices
  c.optimizer.clip_norm = 1.0  # global gradient-norm clip (0: off)

  c.parallel = ml_collections.ConfigDict()
  c.parallel.strategy = "jit"  # jit (mesh + NamedSharding) | pmap
  c.parallel.num_devices = 0  # devices used by jit in one process; 0: all
  c.parallel.coordinator_address = ""  # multi-host: 'host:port' of process 0 ('' = one host)
  c.parallel.num_processes = 0  # multi-host: number of processes
  c.parallel.process_id = -1  # multi-host: this process's index

  if "quick" in options:
    c.task.length = 8
    c.task.num_eval = 500
    c.model.hparams.in_features = 32
    c.model.hparams.hidden_features = 64
    c.batch_size = 32
    c.num_steps = 1_500
    c.eval_every = 0
  return c
