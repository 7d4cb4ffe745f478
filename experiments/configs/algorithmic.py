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

# Constructor keywords per model; the config argument picks one (default "transformer_seq2seq").
MODELS = {
    "transformer_seq2seq": dict(in_features=64, hidden_features=64, num_layers=2,
                                num_heads=4),  # encoder-decoder: src, tgt_in -> tgt_out
    "transformer": dict(in_features=64, hidden_features=64, num_layers=2, num_heads=4,
                        causal=True),  # decoder-only form: src SEP tgt
    "lstm": dict(in_features=64, hidden_features=128, num_layers=1),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment. ``arg``: ``quick`` (the CPU-minute variant) and/or a name in ``MODELS``,
  comma-separated, e.g. ``quick,lstm``."""
  options = [a for a in (arg or "").split(",") if a]
  unknown = [a for a in options if a != "quick" and a not in MODELS]
  if unknown:
    raise ValueError(f"config argument {arg!r}: unknown {unknown}; allowed: quick, "
                     + ", ".join(MODELS))
  model = next((a for a in options if a in MODELS), "transformer_seq2seq")

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
  c.model.name = model  # any seqscale.models name, or 'package.module:Class'
  c.model.hparams = ml_collections.ConfigDict(MODELS[model])  # constructor keywords
  c.model.pooling = "mean"  # unused: algorithmic is per position

  c.batch_size = 64  # global batch, split over devices and hosts
  c.eval_batch_size = 100  # evaluation batch
  c.num_steps = 10_000  # training steps
  c.log_every = 100  # steps between metrics lines
  c.eval_every = 2_000  # steps between evaluations (0: only at the end)
  c.checkpoint_every = 1_000  # steps between checkpoints (and always the last step)
  c.keep_checkpoints = 3  # checkpoints kept

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"  # adamw | adam | sgd
  c.optimizer.learning_rate = 1e-3  # peak learning rate
  c.optimizer.schedule = "cosine"  # cosine | rsqrt | constant (all with linear warmup)
  c.optimizer.warmup_steps = 500  # linear warmup steps
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
    c.batch_size = 32
    c.num_steps = 1_500
    c.eval_every = 0
  return c
